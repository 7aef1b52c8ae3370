"""Stripe's Celery tasks: thin adapters over billing/stripe/services.py. They take
ids, are sent on commit, and are safe to run twice (a processed trigger is skipped;
the handlers are idempotent by ledger reference).

The task names are the ones they had in billing/tasks.py, kept explicitly: they are
stored in broker messages and in beat's schedule. Celery's autodiscovery imports
`billing.tasks`, which imports this module."""

import contextlib
from datetime import timedelta

import stripe
from celery import shared_task
from django.conf import settings
from django.db import IntegrityError, InterfaceError, OperationalError, transaction
from kombu.exceptions import OperationalError as BrokerError

from billing.dispatch import AUTO_TOP_UP
from billing.stripe.selectors import auto_top_ups_stalled, auto_top_ups_under_threshold, webhook_triggers_to_retry
from billing.stripe.services import (
    AUTO_TOP_UP_TRANSIENT,
    auto_top_up_charge,
    auto_top_up_claim,
    auto_top_up_give_up,
    topup_events_pending_apply,
    webhook_trigger_process,
)
from config.celery import app

# Worth retrying: Stripe unreachable, rate limited or failing on its side, and
# database hiccups (a dropped connection, a deadlock, or two deliveries of one event
# racing on the same dj-stripe row). Anything else (Stripe refusing dj-stripe's sync,
# bad data) stays on the trigger, visible in the admin; the sweeper re-sends it every
# five minutes within Stripe's own retry window (FAILED_RETRY_WINDOW), then staff
# re-run it. Parley's credits never wait on it: they move before dj-stripe's sync.
RETRIED = (
    stripe.APIConnectionError,
    stripe.RateLimitError,
    stripe.APIError,
    OperationalError,
    InterfaceError,
    IntegrityError,
)


@shared_task(
    name="billing.tasks.process_stripe_webhook",
    autoretry_for=RETRIED,
    max_retries=settings.STRIPE_WEBHOOK_MAX_RETRIES,
    retry_backoff=2,
    retry_backoff_max=600,
    retry_jitter=True,
    soft_time_limit=120,
    time_limit=180,
)
def process_stripe_webhook(trigger_id: int) -> str:
    return webhook_trigger_process(trigger_id=trigger_id)


def webhook_trigger_enqueue(*, trigger_id: int) -> None:
    """Sends the processing task once the trigger is committed (the view after
    intake, the admin's re-run action, the sweeper)."""
    # robust: the trigger is already stored; if the broker is down the sweeper
    # (requeue_stripe_webhooks) picks it up later, and the webhook still gets its 2xx.
    transaction.on_commit(lambda: process_stripe_webhook.delay(trigger_id), robust=True)


# Stripe itself retries a webhook for up to three days in live mode.
FAILED_RETRY_WINDOW = timedelta(days=3)


@shared_task(name="billing.tasks.requeue_stripe_webhooks", ignore_result=True)
def requeue_stripe_webhooks() -> int:
    """Sends the task again for triggers whose task was lost or failed; how many."""
    ids = webhook_triggers_to_retry(older_than=timedelta(minutes=5), failed_within=FAILED_RETRY_WINDOW)
    for trigger_id in ids:
        webhook_trigger_enqueue(trigger_id=trigger_id)
    return len(ids)


@shared_task(name="billing.tasks.apply_pending_stripe_events", ignore_result=True)
def apply_pending_stripe_events() -> int:
    """Applies Stripe events that were kept pending and whose top-up is known now; how many."""
    return topup_events_pending_apply()


# --- auto top-up ---------------------------------------------------------------------


@shared_task(name=AUTO_TOP_UP, ignore_result=True, soft_time_limit=60, time_limit=90)
def auto_top_up(user_id: int) -> str:
    """Sent after a debit's commit (billing.dispatch): claims the wallet's auto top-up
    and hands the charge to its own task (which retries). A redelivered or duplicated
    message finds the claim taken and does nothing."""
    topup = auto_top_up_claim(user_id=user_id)
    if topup is None:
        return "nothing to do"
    auto_top_up_charge_send(topup_id=topup.pk)
    return f"claimed auto top-up {topup.pk}"


def auto_top_up_charge_send(*, topup_id: int) -> None:
    # The claim is committed: if the broker is down, sweep_auto_top_ups sends it again.
    with contextlib.suppress(BrokerError):
        charge_auto_top_up.apply_async(args=[topup_id], retry=False)


AUTO_TOP_UP_MAX_RETRIES = 6


@shared_task(
    name="billing.tasks.charge_auto_top_up",
    bind=True,
    max_retries=AUTO_TOP_UP_MAX_RETRIES,
    soft_time_limit=60,
    time_limit=90,
    ignore_result=True,
)
def charge_auto_top_up(self, topup_id: int) -> str:  # noqa: ANN001
    try:
        return auto_top_up_charge(topup_id=topup_id)
    except AUTO_TOP_UP_TRANSIENT as exc:  # a decline or a refusal is no error here: the service handles it
        if self.request.retries >= AUTO_TOP_UP_MAX_RETRIES or self.request.is_eager:
            # Given up: unless Stripe made the PaymentIntent, the claim is freed so that a
            # later debit (or the sweep) tries again.
            # It looks the PaymentIntent up first: the answer may be what was lost.
            return auto_top_up_give_up(topup_id=topup_id, error=f"Stripe unreachable: {exc.__class__.__name__}")
        raise self.retry(exc=exc, countdown=min(600, 5 * 2**self.request.retries))


@shared_task(name="billing.tasks.sweep_auto_top_ups", ignore_result=True)
def sweep_auto_top_ups() -> int:
    """Re-sends what a lost message left undone: a claimed auto top-up still waiting
    for its charge, and a wallet under its threshold with nothing in flight (the
    debit's message was lost: broker down). How many were sent."""
    stalled = auto_top_ups_stalled(older_than=timedelta(minutes=5))
    for topup_id in stalled:
        auto_top_up_charge_send(topup_id=topup_id)
    users = auto_top_ups_under_threshold()
    for user_id in users:
        auto_top_up.delay(user_id)
    return len(stalled) + len(users)


# Beat runs the sweepers every five minutes (celery -A config beat, see Procfile).
app.add_periodic_task(300.0, requeue_stripe_webhooks.s(), name="billing: requeue lost Stripe webhooks", expires=290)
app.add_periodic_task(300.0, apply_pending_stripe_events.s(), name="billing: apply pending Stripe events", expires=290)
app.add_periodic_task(300.0, sweep_auto_top_ups.s(), name="billing: re-send lost auto top-ups", expires=290)
