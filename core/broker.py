"""Celery's Redis transport, with one client per channel.

kombu's Redis channel builds a new redis.Redis for every send, every message it
takes (QoS.append) and every ack (Channel.conn_or_acquire). Building one is not
free (redis-py fills its table of response callbacks: ~115 us here), and a turn
costs the web one send and the worker a take and an ack. A redis.Redis is safe to
share between threads (each command borrows a connection from the pool), so each
channel keeps one over its pool, and makes a new one only when kombu replaced the
pool (after a fork or a reconnect). Selected by CELERY_BROKER_TRANSPORT when the
broker is Redis; everything else is kombu's own.
"""

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _shared_client = None

    def _create_client(self, asynchronous: bool = False):
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self._shared_client
        if client is None or client.connection_pool is not self.pool:
            client = self._shared_client = super()._create_client()
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel
