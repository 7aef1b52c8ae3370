"""An upstream's health as every process sees it: its cooldown, its last error and its
call slots, kept in Django's cache (Redis: shared by every process; the embedded
default's local memory: per process).

An upstream that fails UPSTREAM_COOLDOWN_FAILURES times within
UPSTREAM_COOLDOWN_WINDOW_SECONDS (failures that are the upstream's: a refused
connection, a timeout, 408, 409, 429, 5xx, its key refused) cools down for
UPSTREAM_COOLDOWN_SECONDS: the routing tries it after every other deployment, and
again first once the cooldown ends. Nothing is written on a call that succeeds, so
the happy path costs one read (routing.selectors reads the cooldowns with the
routing version, in one round trip).

Redis away: the cache fails open (core.cache), so no upstream cools down and no
slot limits a call; calls go on as without the cooldown.
"""

import logging
import os
import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache

logger = logging.getLogger(__name__)

# Last errors are kept this long (shown in the console), cooldowns their own length.
LAST_ERROR_SECONDS = 7 * 24 * 3600


def cooldown_key(name: str) -> str:
    return f"routing:cooldown:{name}"


def _failures_key(name: str) -> str:
    return f"routing:failures:{name}"


def _last_error_key(name: str) -> str:
    return f"routing:last-error:{name}"


def _slots_key(name: str) -> str:
    return f"routing:slots:{name}"


@dataclass(frozen=True)
class UpstreamState:
    """What the console and the metrics show of an upstream."""

    name: str
    cooling_until: float | None = None  # a Unix time
    cooling_reason: str = ""
    last_error: str = ""
    last_error_at: float | None = None

    @property
    def cooling(self) -> bool:
        return self.cooling_until is not None and self.cooling_until > time.time()


def failure_record(name: str, *, reason: str, message: str) -> None:
    """An attempt on `name` failed for a reason of its own: kept as its last error,
    counted in the window, and once there are enough, the upstream cools down."""
    now = time.time()
    cache.set(_last_error_key(name), {"at": now, "message": message[:500], "reason": reason}, LAST_ERROR_SECONDS)
    window = settings.UPSTREAM_COOLDOWN_WINDOW_SECONDS
    cache.add(_failures_key(name), 0, window)  # the window starts with its first failure
    try:
        failures = cache.incr(_failures_key(name))
    except ValueError:  # the window ended between add and incr
        cache.set(_failures_key(name), 1, window)
        failures = 1
    if failures is None or failures < settings.UPSTREAM_COOLDOWN_FAILURES:
        return
    seconds = settings.UPSTREAM_COOLDOWN_SECONDS
    cache.set(cooldown_key(name), {"until": now + seconds, "reason": reason, "failures": failures}, seconds)
    cache.delete(_failures_key(name))
    logger.warning("upstream %s cools down for %gs after %s failures (%s)", name, seconds, failures, reason)


def cooling_from(found: dict, name: str) -> bool:
    """Whether `name` cools down, by a get_many answer that asked for its cooldown_key."""
    entry = found.get(cooldown_key(name))
    return bool(entry) and entry["until"] > time.time()


def states(names: list[str]) -> dict[str, UpstreamState]:
    """Each named upstream's cooldown and last error, in one cache round trip."""
    keys = [key for name in names for key in (cooldown_key(name), _last_error_key(name))]
    found = cache.get_many(keys)
    result = {}
    for name in names:
        cooldown = found.get(cooldown_key(name)) or {}
        error = found.get(_last_error_key(name)) or {}
        result[name] = UpstreamState(
            name=name, cooling_until=cooldown.get("until"), cooling_reason=cooldown.get("reason", ""),
            last_error=error.get("message", ""), last_error_at=error.get("at"),
        )  # fmt: skip
    return result


def cooldown_clear(name: str) -> None:
    """Ends a cooldown now (the console's "try it again")."""
    cache.delete(cooldown_key(name))
    cache.delete(_failures_key(name))


# --- call slots: an upstream's limit of concurrent calls ------------------------------

_local_slots: dict[str, set[str]] = {}
_local_lock = threading.Lock()


def slot_take(name: str, *, limit: int, lease: float) -> str | None:
    """A slot for one call on `name`, held at most `lease` seconds (a process that dies
    mid-call frees it then): its token, or None when `limit` calls are running."""
    token = os.urandom(8).hex()
    take = getattr(cache, "slot_take", None)
    if take is not None:
        return token if take(_slots_key(name), token=token, now=time.time(), lease=lease, limit=limit) else None
    with _local_lock:  # the embedded default: one process
        held = _local_slots.setdefault(name, set())
        if len(held) >= limit:
            return None
        held.add(token)
    return token


def slot_release(name: str, token: str) -> None:
    release = getattr(cache, "slot_release", None)
    if release is not None:
        release(_slots_key(name), token=token)
        return
    with _local_lock:
        _local_slots.get(name, set()).discard(token)
