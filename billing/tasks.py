"""Billing's Celery tasks. The Stripe ones live in billing/stripe/tasks.py; Celery's
autodiscovery (config/celery.py) looks for `<app>.tasks` only, so the import below is
what registers them in every worker."""

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError

from billing.services import grants_expire_due
from billing.stripe.tasks import apply_pending_stripe_events, process_stripe_webhook, requeue_stripe_webhooks
from config.celery import app


# Safe to run twice or at once: each grant's expiry is re-read under its wallet lock
# and keyed by the grant's id. A database hiccup is retried; the next beat would do it too.
@shared_task(
    name="billing.expire_grants",
    ignore_result=True,
    autoretry_for=(OperationalError, InterfaceError),
    max_retries=3,
    retry_backoff=5,
    acks_late=False,
    soft_time_limit=240,
    time_limit=300,
)
def expire_grants() -> int:
    return grants_expire_due()


# Beat (celery -A config beat, see Procfile) runs the expiry sweep every minute by default.
app.add_periodic_task(
    settings.GRANT_EXPIRY_SWEEP_SECONDS, expire_grants.s(), name="billing: expire credit grants",
    expires=settings.GRANT_EXPIRY_SWEEP_SECONDS,
)  # fmt: skip

__all__ = ["apply_pending_stripe_events", "expire_grants", "process_stripe_webhook", "requeue_stripe_webhooks"]
