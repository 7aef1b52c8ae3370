"""The Redis cache is one client per process: Django makes a cache backend per
context (under ASGI, per request) and its client a redis.Redis per call; with those
a loaded web process spent a fifth of its CPU connecting to Redis."""

import threading
import time

from redis import Redis

from core.cache import FailOpenRedisCache

LOCATION = "redis://127.0.0.1:6379/14"
PARAMS = {"OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 1}}


def test_every_backend_of_a_location_shares_one_client_and_pool():
    clients, ready = [], threading.Barrier(8)

    def backend_client() -> None:  # a backend made in another thread, as per request
        cache = FailOpenRedisCache(LOCATION, PARAMS)
        ready.wait()  # every thread asks at once, the first time
        clients.append(cache._cache.get_client(write=True))

    threads = [threading.Thread(target=backend_client) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    here = FailOpenRedisCache(LOCATION, PARAMS)._cache
    assert all(client is here.get_client() for client in clients)
    assert here.get_client(write=True).connection_pool is here.get_client().connection_pool


def test_threads_that_ask_first_at_once_share_one_client(monkeypatch):
    """The first calls of many threads at once (every web thread at the first burst)
    make one pool and one client, however slowly a client is made."""
    fresh = {"OPTIONS": {**PARAMS["OPTIONS"], "client_name": "first-at-once"}}  # options no other test uses
    shared = FailOpenRedisCache(LOCATION, fresh)._cache
    made, ready = [], threading.Barrier(8)

    def slow_client(**kwargs):  # noqa: ANN003, ANN202
        time.sleep(0.01)  # long enough for every other thread to ask meanwhile
        made.append(Redis(**kwargs))
        return made[-1]

    monkeypatch.setattr(shared, "_client", slow_client)
    clients = []

    def ask() -> None:
        ready.wait()
        clients.append(shared.get_client(write=True))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == 1 and all(client is made[0] for client in clients)


def test_another_location_or_other_options_get_their_own_client():
    one = FailOpenRedisCache(LOCATION, PARAMS)._cache.get_client()
    assert FailOpenRedisCache("redis://127.0.0.1:6379/13", PARAMS)._cache.get_client() is not one
    assert FailOpenRedisCache(LOCATION, {"OPTIONS": {"socket_timeout": 2}})._cache.get_client() is not one
