"""The Stripe client: the one place that talks to Stripe's API.

The `stripe` client is configured here from settings (API version, another host
such as stripe-mock or the test suite's fake), when this module is imported (every
module that uses Stripe imports it) and again whenever a test overrides a STRIPE_
setting. dj-stripe passes STRIPE_API_VERSION on each of its own calls, so the whole
process speaks one API version.

Every call here that writes at Stripe refuses to run inside a database transaction:
the caller commits first and passes an idempotency key taken from the committed row.

No secret key at rest: dj-stripe keeps every key it is called with in its APIKey table
(plaintext, so in every backup) to find the Stripe account that owns the objects it
syncs. Here that lookup asks Stripe for the account (once per process and key) and
stores nothing, and an APIKey row holding a secret or restricted key is refused;
STRIPE_SECRET_KEY lives in the environment only. (Migration billing 0002 deleted the
rows stored before.)
"""

import hashlib
import logging
from typing import Any

import stripe
from django.conf import settings
from django.core.signals import setting_changed
from django.db import transaction
from django.db.models.signals import pre_save
from django.dispatch import receiver
from djstripe.models import Account, APIKey, Customer
from djstripe.settings import djstripe_settings

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


# --- keys stay out of the database --------------------------------------------------

# sha256(key) -> the id of the Stripe account it belongs to, for this process.
_owner_account_ids: dict[str, str] = {}


def _owner_account_for_key(cls: type[Account], api_key: str) -> Account:
    """In place of dj-stripe's Account.get_or_retrieve_for_api_key (dj-stripe 2.11),
    which stores `api_key` in an APIKey row to remember its account: the account is
    asked of Stripe once per process and key, and remembered in memory only."""
    digest = hashlib.sha256(api_key.encode()).hexdigest()
    account_id = _owner_account_ids.get(digest)
    account = Account.objects.filter(id=account_id).first() if account_id else None
    if account is None:
        data = Account.stripe_class.retrieve(api_key=api_key, stripe_version=djstripe_settings.STRIPE_API_VERSION)
        # The row first (as dj-stripe does): syncing it looks up its own owner account,
        # which is this one.
        account, created = Account.objects.get_or_create(id=data["id"])
        _owner_account_ids[digest] = account.id
        if created:
            account = Account.sync_from_stripe_data(data, api_key=api_key)
    return account


Account.get_or_retrieve_for_api_key = classmethod(_owner_account_for_key)


@receiver(pre_save, sender=APIKey)
def _refuse_stored_secret(*, instance: APIKey, **kwargs: Any) -> None:
    # Publishable keys are public; anything else would put a secret at rest.
    if not str(instance.secret).startswith("pk_"):
        raise ValueError(
            "Stripe secret and restricted keys are not stored in the database; set STRIPE_SECRET_KEY instead."
        )


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


def payment_intent_create_off_session(
    *,
    customer_id: str,
    payment_method_id: str,
    amount_cents: int,
    metadata: dict[str, str],
    idempotency_key: str,
    description: str,
) -> stripe.PaymentIntent:
    """Charges a saved card with the customer not present (auto top-up): confirmed in
    this call. A declined card raises stripe.CardError (HTTP 402)."""
    _outside_transaction("Creating a PaymentIntent")
    return stripe.PaymentIntent.create(
        amount=amount_cents,
        currency="usd",
        customer=customer_id,
        payment_method=payment_method_id,
        off_session=True,
        confirm=True,
        metadata=metadata,
        description=description,
        idempotency_key=idempotency_key,
        **_api_options(),
    )


def checkout_session_create(*, idempotency_key: str, **params: Any) -> stripe.checkout.Session:
    """A Stripe-hosted Checkout Session (payment or setup mode, from `params`)."""
    _outside_transaction("Creating a Checkout Session")
    return stripe.checkout.Session.create(idempotency_key=idempotency_key, **params, **_api_options())


def checkout_session_retrieve(*, session_id: str) -> stripe.checkout.Session:
    """A read (its url for a replayed top-up); safe anywhere."""
    return stripe.checkout.Session.retrieve(session_id, **_api_options())


def setup_intent_retrieve(*, setup_intent_id: str) -> stripe.SetupIntent:
    """A read, with its payment method expanded (the card saved in setup mode)."""
    return stripe.SetupIntent.retrieve(setup_intent_id, expand=["payment_method"], **_api_options())


def payment_intent_retrieve(*, payment_intent_id: str) -> stripe.PaymentIntent:
    """A read (its client secret for a replayed top-up); safe anywhere."""
    return stripe.PaymentIntent.retrieve(payment_intent_id, **_api_options())


def payment_intent_find(*, customer_id: str, metadata: dict[str, str], created_gte: int) -> stripe.PaymentIntent | None:
    """The customer's PaymentIntent made at or after `created_gte` (Unix seconds, by
    Stripe's clock) whose metadata holds all of `metadata`, or None; a read, safe
    anywhere. Stripe's list, newest first, 100 at a time: unlike Stripe's search
    (`PaymentIntent.search`, eventually consistent: "don't use search in read-after-
    write flows", up to an hour behind in an outage) it shows a PaymentIntent made a
    moment ago, which is what looking up a lost answer needs."""
    params: dict[str, Any] = {"customer": customer_id, "created": {"gte": created_gte}, "limit": 100}
    while True:
        page = stripe.PaymentIntent.list(**params, **_api_options())
        for intent in page.data:
            if all((intent.metadata or {}).get(key) == value for key, value in metadata.items()):
                return intent
        if not page.has_more or not page.data:
            return None
        params["starting_after"] = page.data[-1].id


def webhook_endpoint_create(*, url: str, enabled_events: list[str], metadata: dict[str, str]) -> stripe.WebhookEndpoint:
    _outside_transaction("Creating a webhook endpoint")
    return stripe.WebhookEndpoint.create(
        url=url,
        enabled_events=enabled_events,
        api_version=settings.STRIPE_API_VERSION,
        metadata=metadata,
        **_api_options(),
    )
