"""Sends billing's after-commit tasks by name (billing.services runs inside the
ledger's transaction and must not import the Stripe package, whose tasks import
billing.services). The name is looked up in this process's registry, so an eager
configuration runs the task here."""

import logging
from decimal import Decimal

from celery import current_app
from kombu.exceptions import OperationalError

from billing.models import AutoTopUp

logger = logging.getLogger(__name__)

# Task names are strings in broker messages: they never change (billing/stripe/tasks.py).
AUTO_TOP_UP = "billing.tasks.auto_top_up"


def auto_top_up_send(*, user_id: int, after: Decimal) -> bool:
    """After a debit committed: sends the auto top-up task when auto top-up is on, has
    nothing in flight and the balance the debit left is under its threshold (one
    indexed read, so a wallet without auto top-up costs no message). True when sent.
    A lost message (broker down) is re-sent by beat's sweep_auto_top_ups."""
    wanted = AutoTopUp.objects.filter(user_id=user_id, enabled=True, in_flight__isnull=True, threshold__gt=after)
    if not wanted.exists():
        return False
    try:
        current_app.tasks[AUTO_TOP_UP].apply_async(args=[user_id], retry=False)
    except OperationalError as exc:
        logger.warning("broker unavailable, auto top-up of user %s left to the sweep: %s", user_id, exc)
        return False
    return True
