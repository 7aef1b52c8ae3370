"""Turn leases in a worker process, and the Stop button's way in.

A worker that claims a turn holds a lease on it (Turn.lease_token, lease_expires_at,
set by the claim in chat._sql.turn_start). While the turn runs, ONE keeper thread
per process renews the leases of every turn the process holds, in one UPDATE every
TURN_LEASE_SECONDS / 3, and gives its connection back in between. A worker that
died stops renewing: once its leases run out the beat sweep hands those turns to
another worker, which takes them over (chat.services.turns). A live turn's lease
never runs out, so however often the broker delivers its message, no second worker
runs it.

The keeper also tells a running turn to stop (`stop_requested`, asked by the engine
at every streamed piece):
- the owner cancelled it: the cancel endpoint sets Turn.cancel_requested_at (the
  truth, read with every renewal) and publishes the turn's id on CANCEL_CHANNEL
  (the wake-up, so the stream stops at its next piece rather than at the next
  renewal);
- the lease was lost (this process stalled past it and another worker took the
  turn over): this run's outcome would not be written anyway.

Turns run in the web process (TURNS_IN_PROCESS, the embedded default: chat.dispatch)
hold their leases the same way, with the same keeper; the Stop reaches them without
Redis, as `cancel_wake` sets the lease's flag in this process directly. Eager
configurations without it (the test suite's default) run a turn inside the request
that accepted it: nothing can cancel or take it over meanwhile, so no keeper runs.
"""

import contextlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from uuid import UUID

from django.conf import settings
from django.utils import timezone

from chat import streaming
from chat.models import Turn
from core.db import db_release

logger = logging.getLogger(__name__)

CANCEL_CHANNEL = "parley:turn-cancel"


@dataclass
class Lease:
    """This process's claim on one running turn."""

    turn_id: str
    token: UUID = field(default_factory=uuid.uuid4)
    cancelled: threading.Event = field(default_factory=threading.Event)
    lost: threading.Event = field(default_factory=threading.Event)


_held: dict[str, Lease] = {}
_lock = threading.Lock()
_keeper: threading.Thread | None = None


def lease_expiry() -> datetime:
    return timezone.now() + timedelta(seconds=settings.TURN_LEASE_SECONDS)


def lease_hold(lease: Lease) -> None:
    """Registers a lease this process just claimed, for renewal and cancellation."""
    with _lock:
        _held[lease.turn_id] = lease
    if not settings.CELERY_TASK_ALWAYS_EAGER or settings.TURNS_IN_PROCESS:
        _keeper_start()


def lease_drop(lease: Lease) -> None:
    with _lock:
        if _held.get(lease.turn_id) is lease:
            del _held[lease.turn_id]


def stop_requested(turn_id: UUID | str) -> bool:
    """Asked at every streamed piece: has the owner cancelled, or the lease gone?"""
    lease = _held.get(str(turn_id))
    return lease is not None and (lease.cancelled.is_set() or lease.lost.is_set())


def lease_lost(turn_id: UUID | str) -> bool:
    lease = _held.get(str(turn_id))
    return lease is not None and lease.lost.is_set()


def leases_renew() -> None:
    """One renewal of every lease this process holds: extends them, and reads which
    turns their owners asked to stop and which leases another worker took."""
    with _lock:
        leases = {lease.token: lease for lease in _held.values()}
    if not leases:
        return
    try:
        Turn.objects.filter(lease_token__in=leases, status=Turn.Status.RUNNING).update(lease_expires_at=lease_expiry())
        still = dict(
            Turn.objects.filter(lease_token__in=leases, status=Turn.Status.RUNNING).values_list(
                "lease_token", "cancel_requested_at"
            )
        )
    finally:
        db_release()
    for token, lease in leases.items():
        if token not in still:
            lease.lost.set()
        elif still[token] is not None:
            lease.cancelled.set()


def cancel_received(turn_id: str) -> None:
    lease = _held.get(turn_id)
    if lease is not None:
        lease.cancelled.set()


def _keeper_start() -> None:
    global _keeper
    with _lock:
        if _keeper is not None and _keeper.is_alive():
            return
        _keeper = threading.Thread(target=_keep, name="parley-lease-keeper", daemon=True)
        _keeper.start()


def _keep() -> None:
    """The keeper: renews every TURN_LEASE_SECONDS / 3 and, meanwhile, listens for
    cancellations. Any failure (database or Redis down) is logged and retried: a
    lease that runs out meanwhile is taken over, which is what it is for."""
    interval = settings.TURN_LEASE_SECONDS / 3
    pubsub = None
    next_renewal = time.monotonic() + interval
    while True:
        try:
            if pubsub is None and streaming.enabled():
                pubsub = streaming.client().pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(CANCEL_CHANNEL)
            wait = max(0.0, next_renewal - time.monotonic())
            if pubsub is not None:
                message = pubsub.get_message(timeout=min(wait, 1.0))
                if message and message.get("type") == "message":
                    cancel_received(message["data"].decode() if isinstance(message["data"], bytes) else message["data"])
            else:
                time.sleep(min(wait, 1.0))
            if time.monotonic() >= next_renewal:
                next_renewal = time.monotonic() + interval
                leases_renew()
        except Exception:
            logger.warning("lease keeper: renewal or cancel listening failed; retrying", exc_info=True)
            if pubsub is not None:
                with contextlib.suppress(Exception):  # closing a broken connection
                    pubsub.close()
                pubsub = None
            time.sleep(1.0)


def cancel_wake(turn_id: UUID | str) -> None:
    """Tells the worker holding `turn_id` to stop now (best effort: the renewal reads
    Turn.cancel_requested_at anyway): this process's own run at once (turns run in
    the web process, where the Stop and the client that leaves a stream arrive), any
    other process's through Redis."""
    cancel_received(str(turn_id))
    if not streaming.enabled():
        return
    try:
        streaming.client().publish(CANCEL_CHANNEL, str(turn_id))
    except Exception:
        logger.warning("could not publish the cancellation of turn %s; the next lease renewal sees it", turn_id)
