"""Sends chat's Celery tasks by name. The services enqueue `run_turn` after a commit,
and chat.tasks imports the services: sending by name keeps that one-way (tasks
import services, never the reverse). The name is looked up in this process's
registry (chat.apps registers the tasks), so an eager configuration still runs the
task here, which a plain `send_task` would not."""

from celery import current_app

# Task names are strings in broker messages: they never change (chat.tasks).
RUN_TURN = "chat.run_turn"


def run_turn_send(*, turn_id: str) -> None:
    current_app.tasks[RUN_TURN].apply_async(args=[turn_id])
