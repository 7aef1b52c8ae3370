"""Stripe's Celery tasks: thin adapters over billing/stripe/services.py. They take
ids, are sent on commit, and are safe to run twice (a processed trigger is skipped;
the handlers are idempotent by ledger reference).

The task names are the ones they had in billing/tasks.py, kept explicitly: they are
stored in broker messages and in beat's schedule. Celery's autodiscovery imports
`billing.tasks`, which imports this module."""

from datetime import timedelta

import stripe
from celery import shared_task
from django.conf import settings
from django.db import IntegrityError, InterfaceError, OperationalError, transaction

from billing.stripe.selectors import webhook_triggers_to_retry
from billing.stripe.services import topup_events_pending_apply, webhook_trigger_process
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


# Beat runs the sweepers every five minutes (celery -A config beat, see Procfile).
app.add_periodic_task(300.0, requeue_stripe_webhooks.s(), name="billing: requeue lost Stripe webhooks", expires=290)
app.add_periodic_task(300.0, apply_pending_stripe_events.s(), name="billing: apply pending Stripe events", expires=290)
