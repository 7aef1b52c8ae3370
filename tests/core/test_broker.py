"""The broker transport keeps one Redis client per channel: kombu's own builds a
redis.Redis for every send, every message taken and every ack."""

import pytest
from django.conf import settings
from kombu import Connection

from core.broker import Transport

pytestmark = pytest.mark.redis


def test_settings_select_it_for_a_redis_broker():
    assert settings.CELERY_BROKER_TRANSPORT == "core.broker:Transport"


def test_sends_takes_and_acks_share_one_client():
    with Connection(settings.REDIS_URL, transport=Transport) as connection:
        channel = connection.default_channel
        made = []
        client_class = channel.Client

        def counted(**kwargs):  # noqa: ANN003, ANN202
            made.append(client_class(**kwargs))
            return made[-1]

        channel.Client = counted
        queue = connection.SimpleQueue("parley-test-broker")
        queue.clear()
        for number in range(5):
            queue.put({"n": number})
        received = []
        for _ in range(5):
            message = queue.get(timeout=5)
            received.append(message.payload["n"])
            message.ack()
        queue.close()
        assert sorted(received) == [0, 1, 2, 3, 4]
        assert len(made) == 1  # kombu's own transport: one per put, per take and per ack

        # A pool kombu replaced (after a fork, a reconnect) gets a client of its own.
        channel._disconnect_pools()
        assert channel._create_client() is not made[0]
        assert channel._create_client().connection_pool is channel.pool
