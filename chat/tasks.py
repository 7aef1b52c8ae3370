"""Celery adapters for chat. `run_turn` receives a turn id and calls the service;
everything that makes a second run harmless lives in chat.services.turns (compare-and-set
state moves, one completion transaction, debit reference = turn id).

The task names are strings in broker messages and in the beat schedule: never
change them (chat.dispatch sends `chat.run_turn` by name)."""

import logging

import redis
from celery import Task, shared_task
from django.db import InterfaceError, OperationalError

from chat.services.turns import turn_fail, turn_run, turns_requeue_lost
from config.celery import app

logger = logging.getLogger(__name__)

# Infrastructure hiccups worth another try; a provider failure is not one of them
# (the SDK already retried it, and the turn fails with a readable error instead).
RETRIED = (OperationalError, InterfaceError, redis.ConnectionError)


class TurnTask(Task):
    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:  # noqa: ANN001
        # Out of retries, or a bug: the turn must not stay "running" with its hold.
        turn_id = kwargs.get("turn_id") or (args[0] if args else None)
        if turn_id:
            logger.error("run_turn %s failed for good: %s", turn_id, exc.__class__.__name__)
            try:
                turn_fail(turn_id=turn_id, error="The turn could not be run; nothing was charged for it.")
            except Exception:  # the database may be what is down; the task is logged anyway
                logger.exception("could not mark turn %s failed", turn_id)


@shared_task(
    bind=True,
    base=TurnTask,
    name="chat.run_turn",
    autoretry_for=RETRIED,
    retry_backoff=2,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=5,
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=900,
    time_limit=960,
)
def run_turn(self, turn_id: str) -> None:  # noqa: ANN001
    turn_run(turn_id=turn_id)


@shared_task(ignore_result=True, name="chat.requeue_lost_turns")
def requeue_lost_turns() -> int:
    return turns_requeue_lost()


# Beat runs the sweeper every five minutes (celery -A config beat, see Procfile).
app.add_periodic_task(300.0, requeue_lost_turns.s(), name="chat: requeue turns whose task was lost", expires=290)
