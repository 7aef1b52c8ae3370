"""The Stripe client: the one place that talks to Stripe's API.

The `stripe` client is configured here from settings (API version, another host
such as stripe-mock or the test suite's fake), when this module is imported (every
module that uses Stripe imports it) and again whenever a test overrides a STRIPE_
setting. dj-stripe passes STRIPE_API_VERSION on each of its own calls, so the whole
process speaks one API version.

Every call here writes at Stripe, so none may run inside a database transaction:
the caller commits first and passes an idempotency key taken from the committed row.
"""

import logging
from typing import Any

import stripe
from django.conf import settings
from django.core.signals import setting_changed
from django.db import transaction
from django.dispatch import receiver
from djstripe.models import Customer

from accounts.models import User
from core.exceptions import ServiceUnavailable

logger = logging.getLogger(__name__)

STRIPE_DISABLED_MESSAGE = (
    "Top-ups are not available: Stripe is not configured on this server (STRIPE_SECRET_KEY is unset)."
)


def stripe_configure() -> None:
    stripe.api_version = settings.STRIPE_API_VERSION
    stripe.api_base = settings.STRIPE_API_BASE.rstrip("/") or stripe.DEFAULT_API_BASE


@receiver(setting_changed)
def _reconfigure(*, setting: str, **kwargs: Any) -> None:
    if setting.startswith("STRIPE_"):
        stripe_configure()


stripe_configure()


def stripe_enabled() -> bool:
    return bool(settings.STRIPE_SECRET_KEY)


def stripe_require() -> None:
    if not stripe_enabled():
        raise ServiceUnavailable(STRIPE_DISABLED_MESSAGE)


def _api_options() -> dict[str, Any]:
    return {"api_key": settings.STRIPE_SECRET_KEY, "stripe_version": settings.STRIPE_API_VERSION}


def _outside_transaction(what: str) -> None:
    """A Stripe write inside an open transaction could succeed at Stripe and then be
    rolled back here (or hold row locks for a network round trip). The transaction a
    Django test case wraps around each test is not ours, so it is let through, as
    Django does for `atomic(durable=True)`."""
    connection = transaction.get_connection()
    if any(not getattr(block, "_from_testcase", False) for block in connection.atomic_blocks):
        raise RuntimeError(f"{what} must not run inside a database transaction.")


def customer_for_user(*, user: User) -> Customer:
    """The user's one Stripe customer, created at Stripe the first time (dj-stripe
    keys that create by the user's pk, so a concurrent first top-up makes one)."""
    _outside_transaction("Creating a Stripe customer")
    customer, _ = Customer.get_or_create(
        subscriber=user, livemode=settings.STRIPE_LIVE_MODE, api_key=settings.STRIPE_SECRET_KEY
    )
    return customer


def payment_intent_create(
    *, customer_id: str, amount_cents: int, metadata: dict[str, str], idempotency_key: str, description: str
) -> stripe.PaymentIntent:
    _outside_transaction("Creating a PaymentIntent")
    return stripe.PaymentIntent.create(
        amount=amount_cents,
        currency="usd",
        customer=customer_id,
        metadata=metadata,
        description=description,
        automatic_payment_methods={"enabled": True},
        idempotency_key=idempotency_key,
        **_api_options(),
    )


def webhook_endpoint_create(*, url: str, enabled_events: list[str], metadata: dict[str, str]) -> stripe.WebhookEndpoint:
    _outside_transaction("Creating a webhook endpoint")
    return stripe.WebhookEndpoint.create(
        url=url,
        enabled_events=enabled_events,
        api_version=settings.STRIPE_API_VERSION,
        metadata=metadata,
        **_api_options(),
    )
