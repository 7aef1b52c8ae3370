"""Sends chat's Celery tasks by name. The services enqueue `run_turn` after a commit,
and chat.tasks imports the services: sending by name keeps that one-way (tasks
import services, never the reverse). The name is looked up in this process's
registry (chat.apps registers the tasks), so an eager configuration still runs the
task here, which a plain `send_task` would not."""

import logging

from celery import current_app
from kombu.exceptions import OperationalError

logger = logging.getLogger(__name__)

# Task names are strings in broker messages: they never change (chat.tasks).
RUN_TURN = "chat.run_turn"


def run_turn_send(*, turn_id: str) -> bool:
    """Hands `run_turn` to the broker: True once it took the message. One attempt,
    failing fast when the broker is down: the turn waits in the database (the
    outbox, chat.services.turns.turns_sweep), not in a request that retries."""
    try:
        current_app.tasks[RUN_TURN].apply_async(args=[turn_id], retry=False)
    except OperationalError as exc:
        logger.warning("broker unavailable, turn %s stays in the outbox: %s", turn_id, exc.__class__.__name__)
        return False
    return True
