"""Billing's Celery tasks. All of them are Stripe's and live in
billing/stripe/tasks.py; Celery's autodiscovery (config/celery.py) looks for
`<app>.tasks` only, so this import is what registers them in every worker."""

from billing.stripe.tasks import apply_pending_stripe_events, process_stripe_webhook, requeue_stripe_webhooks

__all__ = ["apply_pending_stripe_events", "process_stripe_webhook", "requeue_stripe_webhooks"]
