"""Celery adapters for chat. `run_turn` receives a turn id and calls the service;
everything that makes a second run harmless lives in chat.services.turns (a claim
under a lease, one completion transaction, debit reference = turn id).

`run_turn` is acknowledged when a worker takes it, not when it ends: a turn that
streams for minutes is never redelivered while it runs, and a turn whose worker
died is found by its lapsed lease (the beat sweep hands it over again), not by the
broker's visibility timeout.

The task names are strings in broker messages and in the beat schedule: never
change them (chat.dispatch sends `chat.run_turn` by name)."""

import logging

import redis
from celery import Task, shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError

from chat.services.turns import turn_fail, turn_run, turns_sweep
from config.celery import app

logger = logging.getLogger(__name__)

# Infrastructure hiccups at the claim worth another try; a provider failure is not
# one of them (the SDK already retried it, and the turn fails with a readable error
# instead), and the completion retries by itself with the outcome in hand.
RETRIED = (OperationalError, InterfaceError, redis.ConnectionError)
FAILED_FOR_GOOD = "The turn could not be run; nothing was charged for it."


def _turn_failed_for_good(turn_id: str | None, exc: BaseException, *, traceback: bool = False) -> None:
    """A run that raised something no retry mends (a bug): the turn fails, its hold
    released and nothing charged, instead of staying "running" with its hold."""
    if not turn_id:
        return
    logger.error(
        "run_turn %s failed for good: %s", turn_id, exc.__class__.__name__, exc_info=exc if traceback else None
    )
    try:
        turn_fail(turn_id=turn_id, error=FAILED_FOR_GOOD)
    except Exception:  # the database may be what is down; the task is logged anyway
        logger.exception("could not mark turn %s failed", turn_id)


class TurnTask(Task):
    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:  # noqa: ANN001
        # Out of retries, or a bug: the turn must not stay "running" with its hold.
        turn_id = kwargs.get("turn_id") or (args[0] if args else None)
        if isinstance(exc, RETRIED):
            # The database or Redis is still away: the turn is safe in the outbox, and
            # the sweep hands it over again once they are back.
            logger.error("run_turn %s gave up for now: %s", turn_id, exc.__class__.__name__)
            return
        _turn_failed_for_good(turn_id, exc)


@shared_task(
    bind=True,
    base=TurnTask,
    name="chat.run_turn",
    autoretry_for=RETRIED,
    retry_backoff=2,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=5,
    acks_late=False,
    soft_time_limit=900,
    time_limit=960,
)
def run_turn(self, turn_id: str) -> None:  # noqa: ANN001
    try:
        turn_run(turn_id=turn_id)
    except RETRIED:
        raise
    except Exception as exc:
        if not self.request.is_eager:
            raise  # a worker's run: on_failure fails the turn
        # An eager run (the embedded default) has no on_failure (Celery skips it when
        # eager runs propagate: CELERY_TASK_EAGER_PROPAGATES) and no sweep to take the
        # turn over once its lease runs out: it fails its turn here, with the
        # traceback in the log, and the request answers with that failed turn (as
        # billing's charge_auto_top_up gives up by itself when eager).
        _turn_failed_for_good(turn_id, exc, traceback=True)


@shared_task(ignore_result=True, name="chat.sweep_turns", acks_late=False)
def sweep_turns() -> int:
    return turns_sweep()


# Beat runs the sweep every few seconds (celery -A config beat, see Procfile).
app.add_periodic_task(
    settings.TURN_SWEEP_SECONDS, sweep_turns.s(), name="chat: hand over turns that must run",
    expires=settings.TURN_SWEEP_SECONDS,
)  # fmt: skip
