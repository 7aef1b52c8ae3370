"""No Stripe secret key at rest: dj-stripe would keep the key it is called with in
its APIKey table (and so in every backup); Parley keeps it in the environment only."""

import pytest
from django.apps import apps
from django.db import models
from djstripe.models import Account, APIKey, PaymentIntent

from billing.stripe.services import webhook_endpoint_create_at_stripe
from tests.billing.stripe.test_webhooks import deliver, start_topup

pytestmark = pytest.mark.django_db


def rows_holding(secret: str) -> list[str]:
    """Every text or JSON column of every table, searched for `secret`."""
    found = []
    for model in apps.get_models():
        fields = [
            f.name
            for f in model._meta.concrete_fields
            if isinstance(f, models.CharField | models.TextField | models.JSONField)
        ]
        for row in model.objects.values(*fields):
            for name, value in row.items():
                if value is not None and secret in str(value):
                    found.append(f"{model._meta.label}.{name}")
    return found


def test_the_secret_key_never_lands_in_the_database(stripe_on, webhooks, owner, buyer_client):
    topup = start_topup(buyer_client)
    deliver(webhooks, stripe_on.pay(topup.payment_intent_id))
    deliver(webhooks, stripe_on.dispute(topup.payment_intent_id))
    webhook_endpoint_create_at_stripe(base_url="https://parley.example.com")

    assert not APIKey.objects.exists()
    assert rows_holding(stripe_on.api_key) == []
    # dj-stripe still knows whose objects they are.
    assert Account.objects.get().id == stripe_on.account_id
    assert PaymentIntent.objects.get(id=topup.payment_intent_id).djstripe_owner_account_id == stripe_on.account_id


def test_storing_a_secret_key_through_dj_stripe_is_refused(stripe_on):
    with pytest.raises(ValueError, match="not stored"):
        APIKey.objects.get_or_create_by_api_key(stripe_on.api_key)
    assert not APIKey.objects.exists()
