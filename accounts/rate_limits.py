"""An API key's `rpm` (turns per minute) and `tpm` (tokens per minute).

Counted in Django's cache (Redis in production, core.cache.FailOpenRedisCache;
locmem on the embedded default), per key and per UTC calendar minute: a rate limit
is a fair-use guard, not money, so "close enough" is fine and keeping it out of the
database keeps the turn's transaction as short as before. The count is an atomic
INCRBY, so concurrent requests cannot pass it together; with Redis down it fails
open, as DRF's throttles do. (With several web processes on the embedded default,
locmem counts per process.)

- rpm counts requests that are accepted as a turn (chat) or a completion (/v1): the
  slot is reserved before the turn's transaction and given back if it is refused
  (402, 400, 429 of another limit), so a refusal writes nothing, here either.
- tpm counts each accepted request's token estimate at acceptance: the worst case
  prompt (the request's messages, or the session history within the alias's input
  budget) plus the most output the model may write. Actual usage is not added back
  at completion, so a turn that used fewer tokens still counts its estimate.

Both answer 429 with Retry-After: the seconds until the next minute starts.
"""

import contextlib
import math
import time
from dataclasses import dataclass, field

from django.core.cache import cache

from accounts.models import ApiKey
from core.exceptions import TooManyRequests

# A minute's counter outlives its minute a little, then the cache drops it.
COUNTER_TIMEOUT = 120


@dataclass
class RateReservation:
    """What a request took from its key's minute: given back when it is refused."""

    taken: list[tuple[str, int]] = field(default_factory=list)

    def release(self) -> None:
        for key, amount in self.taken:
            with contextlib.suppress(ValueError):  # the minute's counter is gone already
                cache.decr(key, amount)
        self.taken.clear()


def _take(key: str, amount: int) -> int:
    """Adds `amount` to the minute's counter; its new value (0 when the cache is away)."""
    cache.add(key, 0, timeout=COUNTER_TIMEOUT)
    try:
        return cache.incr(key, amount) or 0
    except ValueError:  # expired between add and incr
        cache.add(key, amount, timeout=COUNTER_TIMEOUT)
        return amount


def api_key_rate_reserve(*, api_key: ApiKey | None, tokens: int, now: float | None = None) -> RateReservation:
    """Takes one request and `tokens` from the key's current minute, or raises
    TooManyRequests (429, Retry-After) naming the limit; nothing stays taken then."""
    reservation = RateReservation()
    if api_key is None or not api_key.has_rate_limits:
        return reservation
    now = time.time() if now is None else now
    minute = int(now // 60)
    retry_after = max(1, math.ceil(60 - now % 60))
    name = f"API key '{api_key.name}'"
    try:
        if api_key.rpm is not None:
            key = f"ratelimit:rpm:{api_key.pk}:{minute}"
            count = _take(key, 1)
            reservation.taken.append((key, 1))
            if count > api_key.rpm:
                raise TooManyRequests(
                    f"{name} allows {api_key.rpm} requests per minute (rpm); this minute's are used. "
                    f"Try again in {retry_after} s.",
                    retry_after=retry_after,
                )
        if api_key.tpm is not None:
            key = f"ratelimit:tpm:{api_key.pk}:{minute}"
            count = _take(key, tokens)
            reservation.taken.append((key, tokens))
            if count > api_key.tpm:
                used = count - tokens
                raise TooManyRequests(
                    f"{name} allows {api_key.tpm} tokens per minute (tpm): {used} used this minute and this "
                    f"request is estimated at {tokens} (prompt and the most output). Try again in {retry_after} s.",
                    retry_after=retry_after,
                )
    except TooManyRequests:
        reservation.release()
        raise
    return reservation
