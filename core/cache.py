"""The cache while Redis is away.

Only DRF's throttles and the API keys' rpm/tpm limits (accounts.rate_limits) use
Django's cache. Django's Redis backend raises when Redis
does not answer, which made every throttled request a 500 during a broker outage;
this one answers "nothing cached" instead and drops writes, so throttling fails open
for the outage (and says so in the log, once a minute) while the API keeps working.
"""

import logging
import time
from typing import Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.redis import RedisCache
from redis import RedisError

logger = logging.getLogger(__name__)

WARN_EVERY_SECONDS = 60.0


class FailOpenRedisCache(RedisCache):
    _warned_at = 0.0

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

    def delete(self, key: Any, version: int | None = None) -> bool:  # noqa: ANN401
        try:
            return super().delete(key, version)
        except RedisError as exc:
            self._unavailable(exc)
            return False

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> int | None:  # noqa: ANN401
        """None when Redis does not answer: the caller lets the request through."""
        try:
            return super().incr(key, delta, version)
        except RedisError as exc:
            self._unavailable(exc)
            return None
