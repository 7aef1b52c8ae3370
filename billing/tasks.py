"""Billing's Celery tasks: thin adapters over billing/stripe_webhooks.py. They take
ids, are sent on commit, and are safe to run twice (a processed trigger is skipped;
the handlers are idempotent by ledger reference)."""

from datetime import timedelta

import stripe
from celery import shared_task
from django.conf import settings
from django.db import IntegrityError, InterfaceError, OperationalError

from billing.stripe_webhooks import webhook_trigger_process, webhook_triggers_requeue
from config.celery import app

# Worth retrying: Stripe unreachable, rate limited or failing on its side, and
# database hiccups (a dropped connection, a deadlock, or two deliveries of one event
# racing on the same dj-stripe row). Anything else is a bug or bad data: it stays on
# the trigger, visible in the admin, until staff re-run it.
RETRIED = (
    stripe.APIConnectionError,
    stripe.RateLimitError,
    stripe.APIError,
    OperationalError,
    InterfaceError,
    IntegrityError,
)


@shared_task(
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


@shared_task(ignore_result=True)
def requeue_stripe_webhooks() -> int:
    return webhook_triggers_requeue(older_than=timedelta(minutes=5))


# Beat runs the sweeper every five minutes (celery -A config beat, see Procfile).
app.add_periodic_task(300.0, requeue_stripe_webhooks.s(), name="billing: requeue lost Stripe webhooks", expires=290)
