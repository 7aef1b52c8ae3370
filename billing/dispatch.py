"""Sends billing's after-commit tasks by name (billing.services runs inside the
ledger's transaction and must not import the Stripe package, whose tasks import
billing.services). The name is looked up in this process's registry, so an eager
configuration runs the task here."""

import logging
import time
from decimal import Decimal

from celery import current_app
from django.db.models import Max
from kombu.exceptions import OperationalError

from billing.models import AutoTopUp

logger = logging.getLogger(__name__)

# Task names are strings in broker messages: they never change (billing/stripe/tasks.py).
AUTO_TOP_UP = "billing.tasks.auto_top_up"


# The highest threshold of any auto top-up that is on, kept by each process for a few
# seconds: a debit that leaves a balance at or above it (nearly all of them) costs no
# query. A threshold raised in another process is seen here within the TTL (a debit
# in between is caught by beat's sweep); auto_top_up_settings_changed() resets it
# in the process that changed it.
HIGHEST_THRESHOLD_TTL_SECONDS = 10.0
_highest: tuple[float, Decimal | None] = (0.0, None)  # (monotonic expiry, value)


def auto_top_up_settings_changed() -> None:
    global _highest
    _highest = (0.0, None)


def _highest_threshold() -> Decimal | None:
    global _highest
    expires, value = _highest
    now = time.monotonic()
    if now >= expires:
        value = AutoTopUp.objects.filter(enabled=True).aggregate(highest=Max("threshold"))["highest"]
        _highest = (now + HIGHEST_THRESHOLD_TTL_SECONDS, value)
    return value


def auto_top_up_send(*, user_id: int, after: Decimal) -> bool:
    """After a debit committed: sends the auto top-up task when auto top-up is on, has
    nothing in flight and the balance the debit left is under its threshold (one
    indexed read, and none when the balance is above every threshold, so a wallet
    without auto top-up costs no message). True when sent. A lost message (broker
    down) is re-sent by beat's sweep_auto_top_ups."""
    highest = _highest_threshold()
    if highest is None or after >= highest:
        return False
    wanted = AutoTopUp.objects.filter(user_id=user_id, enabled=True, in_flight__isnull=True, threshold__gt=after)
    if not wanted.exists():
        return False
    try:
        current_app.tasks[AUTO_TOP_UP].apply_async(args=[user_id], retry=False)
    except OperationalError as exc:
        logger.warning("broker unavailable, auto top-up of user %s left to the sweep: %s", user_id, exc)
        return False
    return True
