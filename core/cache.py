"""The cache while Redis is away.

Only DRF's throttles, the API keys' rpm/tpm limits (accounts.rate_limits) and the
upstreams' cooldowns and call slots (routing.cooldown) use Django's cache. Django's Redis backend raises when Redis
does not answer, which made every throttled request a 500 during a broker outage;
this one answers "nothing cached" instead and drops writes, so throttling fails open
for the outage (and says so in the log, once a minute) while the API keeps working.

DRF's throttles keep their window in one Redis sorted set per client, taken in one
atomic round trip (FailOpenRedisCache.window_take, core.throttling): DRF's own read
the pickled history and wrote it back, two round trips that also let concurrent
requests of one client both pass and overwrite each other's entry.

It is also shared: Django keeps cache backends in a context-local store, which under
ASGI means a new backend, connection pool and Redis connection for every request
(measured: a fifth of the web's CPU under load went to connecting), and its client
makes a new redis.Redis for every call (about 0.2 ms each with redis-py 8). Here
each process keeps one client per cache location and reuses it from every thread
(redis-py's clients and pools are thread-safe).
"""

import logging
import os
import threading
import time
from typing import Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from redis import Redis, RedisError

logger = logging.getLogger(__name__)

WARN_EVERY_SECONDS = 60.0


class SharedRedisCacheClient(RedisCacheClient):
    """Django's client, with one redis.Redis per connection pool instead of one per call.
    The first calls of several threads at once make one pool and one client between
    them (Django makes its pools unlocked: two threads could each make one)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401
        super().__init__(*args, **kwargs)
        self._clients: dict[int, Redis] = {}  # by Django's pool index (one per server)
        self._lock = threading.Lock()

    def get_client(self, key: Any = None, *, write: bool = False) -> Redis:  # noqa: ANN401
        index = self._get_connection_pool_index(write)
        client = self._clients.get(index)
        if client is None:
            with self._lock:
                if index not in self._clients:
                    # Django's _get_connection_pool, for this index (it draws a read index anew).
                    if index not in self._pools:
                        self._pools[index] = self._pool_class.from_url(self._servers[index], **self._pool_options)
                    self._clients[index] = self._client(connection_pool=self._pools[index])
                client = self._clients[index]
        return client


# A sliding window in a sorted set of request times: drop what fell out of it, then
# add this request if the window has room. Returns {1} when taken, else {0, the
# oldest time still in the window} (when a place frees up).
_WINDOW_TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[2]))
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
    redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])))
    return {1}
end
return {0, redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]}
"""

# A bounded set of call slots: drop the slots whose lease ran out (a process that
# died mid-call), then take one if fewer than the limit are held. Returns 1 when taken.
_SLOT_TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]))
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
    redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), ARGV[4])
    redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])))
    return 1
end
return 0
"""

_clients: dict[tuple, SharedRedisCacheClient] = {}
_clients_lock = threading.Lock()


class FailOpenRedisCache(RedisCache):
    _warned_at = 0.0
    _window_script = None  # _WINDOW_TAKE, registered once per process
    _slot_script = None  # _SLOT_TAKE

    def __init__(self, server: str, params: dict) -> None:
        super().__init__(server, params)
        self._class = SharedRedisCacheClient

    @property
    def _cache(self) -> SharedRedisCacheClient:
        """The process's one client for this location and these options."""
        key = (tuple(self._servers), repr(sorted(self._options.items())))
        client = _clients.get(key)
        if client is None:
            with _clients_lock:
                client = _clients.get(key) or _clients.setdefault(key, self._class(self._servers, **self._options))
        return client

    def _unavailable(self, exc: RedisError) -> None:
        now = time.monotonic()
        if now - FailOpenRedisCache._warned_at > WARN_EVERY_SECONDS:
            FailOpenRedisCache._warned_at = now
            logger.warning("cache unavailable (%s): throttling is off until Redis answers", exc.__class__.__name__)

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:  # noqa: ANN401
        try:
            return super().get(key, default, version)
        except RedisError as exc:
            self._unavailable(exc)
            return default

    def set(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> None:  # noqa: ANN401
        try:
            super().set(key, value, timeout, version)
        except RedisError as exc:
            self._unavailable(exc)

    def add(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:  # noqa: ANN401
        try:
            return super().add(key, value, timeout, version)
        except RedisError as exc:
            self._unavailable(exc)
            return False

    def get_many(self, keys: Any, version: int | None = None) -> dict:  # noqa: ANN401
        try:
            return super().get_many(keys, version)
        except RedisError as exc:
            self._unavailable(exc)
            return {}

    def delete(self, key: Any, version: int | None = None) -> bool:  # noqa: ANN401
        try:
            return super().delete(key, version)
        except RedisError as exc:
            self._unavailable(exc)
            return False

    def window_take(self, key: str, *, now: float, seconds: float, limit: int) -> float | None:
        """Takes a place for a request at `now` in the sliding window `key` (at most
        `limit` requests in any `seconds`), atomically: None when taken (or when
        Redis does not answer: the request goes through), else the oldest request
        time in the full window (`now` for a limit of 0)."""
        client = self._cache.get_client(write=True)
        script = FailOpenRedisCache._window_script
        if script is None:
            script = FailOpenRedisCache._window_script = client.register_script(_WINDOW_TAKE)
        try:
            answer = script(
                keys=[self.make_and_validate_key(key)],
                args=[now, seconds, limit, f"{now}:{os.urandom(4).hex()}"],
                client=client,
            )
        except RedisError as exc:
            self._unavailable(exc)
            return None
        if answer[0]:
            return None
        return float(answer[1]) if len(answer) > 1 else now  # a rate of 0: the window is always full

    def slot_take(self, key: str, *, token: str, now: float, lease: float, limit: int) -> bool:
        """Takes one of `limit` slots in `key` for `token`, held for at most `lease`
        seconds (routing.cooldown: an upstream's concurrent calls). True when taken,
        and when Redis does not answer (the call goes through)."""
        client = self._cache.get_client(write=True)
        script = FailOpenRedisCache._slot_script
        if script is None:
            script = FailOpenRedisCache._slot_script = client.register_script(_SLOT_TAKE)
        try:
            return bool(script(keys=[self.make_and_validate_key(key)], args=[now, lease, limit, token], client=client))
        except RedisError as exc:
            self._unavailable(exc)
            return True

    def slot_release(self, key: str, *, token: str) -> None:
        try:
            self._cache.get_client(write=True).zrem(self.make_and_validate_key(key), token)
        except RedisError as exc:
            self._unavailable(exc)

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> int | None:  # noqa: ANN401
        """None when Redis does not answer: the caller lets the request through."""
        try:
            return super().incr(key, delta, version)
        except RedisError as exc:
            self._unavailable(exc)
            return None
