"""The fake Stripe speaks the pinned API version's shapes (checked against Stripe's
published fixtures, github.com/stripe/openapi), read here through the real client:
the handlers must be tested against what production sends, not what is convenient."""

import stripe
from django.conf import settings

from tests.fakes.stripe_server import API_VERSION, FakeStripe


def _options(server: FakeStripe) -> dict:
    return {"api_key": server.api_key, "stripe_version": API_VERSION}


def _paid(server: FakeStripe) -> str:
    intent = server.create_payment_intent(amount=1000)
    server.pay(intent["id"])
    return intent["id"]


def test_the_fake_speaks_the_pinned_api_version(stripe_on):
    assert API_VERSION == settings.STRIPE_API_VERSION
    event = stripe_on.pay(stripe_on.create_payment_intent(amount=500)["id"])
    assert event["api_version"] == settings.STRIPE_API_VERSION


def test_a_charge_lists_its_refunds_only_when_expanded(stripe_on):
    pi_id = _paid(stripe_on)
    event = stripe_on.refund(pi_id, amount=300)
    charge = event["data"]["object"]

    assert "refunds" not in charge
    assert (charge["amount_refunded"], charge["refunded"]) == (300, False)
    assert event["data"]["previous_attributes"] == {"amount_refunded": 0, "refunded": False}
    assert "refunds" not in stripe.Charge.retrieve(charge["id"], **_options(stripe_on))
    expanded = stripe.Charge.retrieve(charge["id"], expand=["refunds"], **_options(stripe_on))
    assert [refund.amount for refund in expanded.refunds.data] == [300]


def test_a_failed_refund_is_a_refund_update_and_no_longer_counts_on_the_charge(stripe_on):
    pi_id = _paid(stripe_on)
    stripe_on.refund(pi_id, amount=300)
    refund_id = stripe_on.refunds_of(pi_id)[0]["id"]

    event = stripe_on.fail_refund(refund_id)

    assert event["type"] == "charge.refund.updated"
    refund = event["data"]["object"]
    assert (refund["object"], refund["status"], refund["failure_reason"]) == (
        "refund",
        "failed",
        "expired_or_canceled_card",
    )
    assert refund["failure_balance_transaction"].startswith("txn_")
    assert stripe.Charge.retrieve(refund["charge"], **_options(stripe_on)).amount_refunded == 0


def test_disputes_embed_their_balance_transactions(stripe_on):
    pi_id = _paid(stripe_on)

    chargeback = stripe_on.dispute(pi_id)["data"]["object"]
    inquiry = stripe_on.dispute(pi_id, status="warning_needs_response", payment_intent=False)["data"]["object"]

    assert chargeback["status"] == "needs_response"
    [withdrawal] = chargeback["balance_transactions"]
    assert (withdrawal["object"], withdrawal["amount"], withdrawal["reporting_category"]) == (
        "balance_transaction",
        -1000,
        "dispute",
    )
    assert (inquiry["status"], inquiry["balance_transactions"], inquiry["is_charge_refundable"]) == (
        "warning_needs_response",
        [],
        True,
    )
    assert inquiry["payment_intent"] is None  # as in Stripe's own fixture
    assert inquiry["payment_method_details"]["card"]["case_type"] == "inquiry"
    won = stripe_on.close_dispute(chargeback["id"], "won")["data"]["object"]
    assert [txn["amount"] for txn in won["balance_transactions"]] == [-1000, 1000]
    fetched = stripe.Dispute.retrieve(chargeback["id"], **_options(stripe_on))
    assert fetched.status == "won"


def test_a_webhook_endpoints_secret_is_shown_only_when_it_is_created(stripe_on):
    created = stripe.WebhookEndpoint.create(
        url="https://parley.example.com/hook", enabled_events=["*"], **_options(stripe_on)
    )

    assert created.secret.startswith("whsec_")
    assert "secret" not in stripe.WebhookEndpoint.retrieve(created.id, **_options(stripe_on))
