"""Sends chat's Celery tasks by name. The services enqueue `run_turn` after a commit,
and chat.tasks imports the services: sending by name keeps that one-way (tasks
import services, never the reverse). The name is looked up in this process's
registry (chat.apps registers the tasks), so an eager configuration still runs the
task here, which a plain `send_task` would not.

Without a broker (TURNS_IN_PROCESS, the embedded default) a turn is not run inside
the request that accepted it: `run_turn` goes to this process's pool of TURN_THREADS
threads, and the request (or its stream, on the event loop) answers at once. The
task runs there as an eager task does (so a crash fails its turn, chat.tasks); the
rules of chat.services.turns stay whole: a claim under a lease that chat.leases
renews, one completion transaction, and the database as the record of what must
run. A sweep thread does what beat does on the Procfile stack (`chat.sweep_turns`
every TURN_SWEEP_SECONDS), so a turn this process was running when it stopped is
taken over once its lease runs out, and one the pool never took is handed over
again. docs/embedded-default.md tells the whole story."""

import logging
import threading
import time

from celery import current_app
from django.conf import settings
from kombu.exceptions import OperationalError

from core.db import db_release
from core.lanes import LanedPool

logger = logging.getLogger(__name__)

# Task names are strings in broker messages: they never change (chat.tasks).
RUN_TURN = "chat.run_turn"
SWEEP_TURNS = "chat.sweep_turns"


def run_turn_send(*, turn_id: str) -> bool:
    """Hands `run_turn` to the broker: True once it took the message. One attempt,
    failing fast when the broker is down: the turn waits in the database (the
    outbox, chat.services.turns.turns_sweep), not in a request that retries. In
    process (TURNS_IN_PROCESS): to this process's turn pool, which always takes it."""
    if settings.TURNS_IN_PROCESS:
        in_process_submit(turn_id=turn_id)
        return True
    try:
        current_app.tasks[RUN_TURN].apply_async(args=[turn_id], retry=False)
    except OperationalError as exc:
        logger.warning("broker unavailable, turn %s stays in the outbox: %s", turn_id, exc.__class__.__name__)
        return False
    return True


# --- turns in the web process (TURNS_IN_PROCESS) ----------------------------------------

_pool: LanedPool | None = None
_sweeper: threading.Thread | None = None
_lock = threading.Lock()


def in_process_submit(*, turn_id: str) -> None:
    """Queues the turn on this process's pool (made at the first turn, in the process
    that serves it: never before a fork). Daemon threads: stopping the server does not
    wait for a model; a turn cut so is taken over by the sweep at the next start."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = LanedPool(settings.TURN_THREADS, name="turn")
    in_process_sweep_start()
    _pool.submit(_run_in_process, turn_id)


def _run_in_process(turn_id: str) -> None:
    """One turn on a pool thread: the task as an eager run (a failure that is a bug
    fails the turn, nothing charged; chat.tasks). What still escapes (the database
    away through every retry) leaves the turn to the sweep once its lease runs out."""
    try:
        current_app.tasks[RUN_TURN].apply(args=[turn_id])
    except Exception:
        logger.exception("turn %s: the in-process run failed; the sweep takes it over once its lease runs out", turn_id)
    finally:
        db_release()


def in_process_sweep_start() -> None:
    """Starts this process's sweep thread, once (config.asgi starts it with the server,
    so turns cut by a restart are taken over without waiting for a new one)."""
    global _sweeper
    with _lock:
        if _sweeper is not None and _sweeper.is_alive():
            return
        _sweeper = threading.Thread(target=_sweep_forever, name="parley-turn-sweep", daemon=True)
        _sweeper.start()


def _sweep_forever() -> None:
    while True:
        time.sleep(settings.TURN_SWEEP_SECONDS)
        if settings.TURNS_IN_PROCESS:  # else turned off since (a test's settings): beat sweeps
            in_process_sweep()


def in_process_sweep() -> None:
    """One sweep: the turns that must run and have no live run go to this process's
    pool (chat.services.turns.turns_sweep, through the task's name)."""
    try:
        # The task's function itself: no trace line in the log every few seconds.
        current_app.tasks[SWEEP_TURNS]()
    except Exception:
        logger.warning("the in-process turn sweep failed; retrying", exc_info=True)
    finally:
        db_release()
