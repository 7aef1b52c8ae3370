"""Billing rows for tests. Balances and ledger rows are never built here: tests move
credits through billing.services, as the product does."""

from decimal import Decimal

import factory

from billing.models import ModelPrice, TopUp
from tests.accounts.factories import UserFactory


class ModelPriceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ModelPrice

    alias = factory.Sequence(lambda n: f"alias{n}")
    provider = ModelPrice.Provider.LOCAL
    provider_model = factory.LazyAttribute(lambda price: f"local-{price.alias}")
    input_credits_per_mtok = Decimal("150")
    output_credits_per_mtok = Decimal("600")


class TopUpFactory(factory.django.DjangoModelFactory):
    """A top-up whose PaymentIntent exists (pending), at CREDITS_PER_USD = 100."""

    class Meta:
        model = TopUp

    user = factory.SubFactory(UserFactory)
    amount_usd = Decimal("10.00")
    credits = factory.LazyAttribute(lambda topup: topup.amount_usd * 100)
    payment_intent_id = factory.Sequence(lambda n: f"pi_test_{n}")
    status = TopUp.Status.PENDING
