"""Top-ups through Stripe Checkout (mode "checkout") against the fake Stripe: the
session's url, the grant on checkout.session.completed (once, whatever else Stripe
sends about the same PaymentIntent), refunds and disputes as for any top-up, and a
session that expires unpaid."""

from decimal import Decimal

import pytest
from djstripe.models import Customer, WebhookEventTrigger

from billing.models import CreditTransaction, TopUp, TopUpEvent
from tests.billing.stripe.conftest import balance_of, ledger_of
from tests.billing.stripe.test_webhooks import deliver

TOP_UP = "/api/v1/users/me/wallet/top-up"
URLS = {"success_url": "https://app.example/paid?session={CHECKOUT_SESSION_ID}", "cancel_url": "https://app.example/"}

pytestmark = pytest.mark.django_db


def start_checkout(client, amount: str = "10.00", **headers) -> TopUp:  # noqa: ANN001, ANN003
    response = client.post(TOP_UP, {"amount_usd": amount, "mode": "checkout", **URLS}, format="json", **headers)
    assert response.status_code == 201, response.json()
    return TopUp.objects.get(pk=response.json()["id"])


def test_a_checkout_top_up_answers_the_sessions_url(stripe_on, owner, buyer_client):
    response = buyer_client.post(TOP_UP, {"amount_usd": "12.50", "mode": "checkout", **URLS}, format="json")

    assert response.status_code == 201, response.json()
    topup = TopUp.objects.get()
    session = stripe_on.get("checkout_sessions", topup.checkout_session_id)
    assert response.json() == {
        "id": topup.pk,
        "mode": "checkout",
        "payment_intent_id": None,
        "client_secret": None,
        "checkout_session_id": session["id"],
        "url": session["url"],
        "amount_usd": "12.50",
        "credits": "1250.00000000",
        "status": "pending",
    }
    assert response.json()["url"].startswith("https://checkout.stripe.com/")
    [call] = stripe_on.calls("POST", "/v1/checkout/sessions")
    params = call.params
    assert params["mode"] == "payment"
    assert params["customer"] == session["customer"] == Customer.objects.get(subscriber=owner).id
    assert params["line_items"] == [
        {"quantity": "1", "price_data": {"currency": "usd", "unit_amount": "1250",
                                         "product_data": {"name": "Parley credits: 1250.00"}}}
    ]  # fmt: skip
    assert (params["success_url"], params["cancel_url"]) == (URLS["success_url"], URLS["cancel_url"])
    # The PaymentIntent Checkout makes carries our metadata: its events find this top-up.
    assert params["payment_intent_data"]["metadata"] == {
        "parley_topup_id": str(topup.pk),
        "parley_user_id": str(owner.pk),
        "credits": "1250.00",
    }
    assert call.idempotency_key == f"parley-topup-{topup.idempotency_key}"
    assert not stripe_on.calls("POST", "/v1/payment_intents")
    assert not CreditTransaction.objects.exists()


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"mode": "checkout", "cancel_url": URLS["cancel_url"]}, "success_url", "required in checkout mode"),
        ({"mode": "checkout", "success_url": URLS["success_url"]}, "cancel_url", "required in checkout mode"),
        ({"mode": "checkout", **URLS, "success_url": "ftp://app.example/"}, "success_url", "http or https"),
        ({"mode": "checkout", **URLS, "cancel_url": "javascript:alert(1)"}, "cancel_url", "http or https"),
        ({"mode": "checkout", **URLS, "success_url": "/relative/path"}, "success_url", "absolute http"),
        ({"mode": "invoice"}, "mode", "is not a valid choice"),
    ],
)
def test_bad_checkout_input_is_a_400_naming_the_field(stripe_on, buyer_client, body, field, message):
    response = buyer_client.post(TOP_UP, {"amount_usd": "10.00", **body}, format="json")

    assert response.status_code == 400, response.json()
    assert list(response.json()["error"]["fields"]) == [field]
    assert message in response.json()["error"]["fields"][field][0]
    assert not TopUp.objects.exists()
    assert stripe_on.requests == []


def test_a_completed_session_grants_once_whatever_else_stripe_sends(stripe_on, webhooks, owner, buyer_client):
    topup = start_checkout(buyer_client, "10.00")
    completed, paid = stripe_on.complete_checkout(topup.checkout_session_id)
    payment_intent_id = completed["data"]["object"]["payment_intent"]

    deliver(webhooks, completed)
    assert balance_of(owner) == Decimal("1000.00000000")
    deliver(webhooks, completed)  # redelivered
    deliver(webhooks, paid)  # payment_intent.succeeded of the same PaymentIntent

    assert balance_of(owner) == Decimal("1000.00000000")
    assert ledger_of(owner) == [("topup", Decimal("1000.00000000"), payment_intent_id)]
    topup.refresh_from_db()
    assert (topup.status, topup.payment_intent_id) == (TopUp.Status.SUCCEEDED, payment_intent_id)
    assert topup.charge_id.startswith("ch_")  # learned from payment_intent.succeeded
    # dj-stripe synced the session (and what it names) through the fake.
    assert WebhookEventTrigger.objects.filter(processed=True).count() == 3
    assert stripe_on.calls("GET", f"/v1/checkout/sessions/{topup.checkout_session_id}")


def test_a_payment_intent_succeeded_before_the_session_completed_grants_once(stripe_on, webhooks, owner, buyer_client):
    topup = start_checkout(buyer_client, "7.77")
    completed, paid = stripe_on.complete_checkout(topup.checkout_session_id)

    deliver(webhooks, paid)  # found by its metadata: the top-up has no PaymentIntent yet
    deliver(webhooks, completed)

    assert balance_of(owner) == Decimal("777.00000000")
    assert CreditTransaction.objects.filter(kind="topup").count() == 1
    topup.refresh_from_db()
    assert topup.status == TopUp.Status.SUCCEEDED


def test_the_same_idempotency_key_answers_the_same_session(stripe_on, owner, buyer_client):
    first = buyer_client.post(
        TOP_UP, {"amount_usd": "10.00", "mode": "checkout", **URLS}, format="json", HTTP_IDEMPOTENCY_KEY="order-7"
    )
    retried = buyer_client.post(
        TOP_UP, {"amount_usd": "10.00", "mode": "checkout", **URLS}, format="json", HTTP_IDEMPOTENCY_KEY="order-7"
    )
    other_mode = buyer_client.post(TOP_UP, {"amount_usd": "10.00"}, format="json", HTTP_IDEMPOTENCY_KEY="order-7")

    assert first.status_code == retried.status_code == 201
    assert retried.json() == first.json()
    assert len({obj["id"] for obj in stripe_on.objects["checkout_sessions"].values()}) == 1
    assert other_mode.status_code == 422
    assert TopUp.objects.count() == 1


def test_a_refund_and_a_dispute_of_a_checkout_top_up_take_back_as_for_any_top_up(
    stripe_on, webhooks, owner, buyer_client
):
    topup = start_checkout(buyer_client, "10.00")
    completed, paid = stripe_on.complete_checkout(topup.checkout_session_id)
    payment_intent_id = completed["data"]["object"]["payment_intent"]
    deliver(webhooks, completed)

    deliver(webhooks, stripe_on.refund(payment_intent_id, amount=300))
    assert balance_of(owner) == Decimal("700.00000000")
    # A chargeback naming only its charge waits for the top-up to learn the charge
    # (payment_intent.succeeded names it), then takes back what the refund had not.
    deliver(webhooks, stripe_on.dispute(payment_intent_id, payment_intent=False))
    deliver(webhooks, paid)

    assert balance_of(owner) == Decimal("0E-8")
    assert not TopUpEvent.objects.filter(state="pending").exists()
    topup.refresh_from_db()
    assert (topup.status, topup.refunded_credits, topup.disputed_credits) == (
        TopUp.Status.DISPUTED,
        Decimal("300"),
        Decimal("700"),
    )


def test_an_expired_session_fails_the_top_up_and_grants_nothing(stripe_on, webhooks, owner, buyer_client):
    topup = start_checkout(buyer_client)

    deliver(webhooks, stripe_on.expire_checkout(topup.checkout_session_id))

    topup.refresh_from_db()
    assert (topup.status, topup.error) == (TopUp.Status.FAILED, "The Checkout Session expired unpaid.")
    assert balance_of(owner) == Decimal("0")
    assert buyer_client.get("/api/v1/users/me/top-ups").json()["results"][0]["status"] == "failed"


def test_a_failed_card_attempt_inside_checkout_leaves_the_top_up_open(stripe_on, webhooks, owner, buyer_client):
    topup = start_checkout(buyer_client)
    completed, paid = stripe_on.complete_checkout(topup.checkout_session_id)
    payment_intent_id = completed["data"]["object"]["payment_intent"]
    failed = stripe_on.event(
        "payment_intent.payment_failed",
        {**paid["data"]["object"], "status": "requires_payment_method",
         "last_payment_error": {"type": "card_error", "code": "card_declined", "message": "Declined."}},
    )  # fmt: skip

    deliver(webhooks, completed)
    deliver(webhooks, failed)  # an earlier attempt's failure, delivered late

    topup.refresh_from_db()
    assert (topup.status, topup.payment_intent_id) == (TopUp.Status.SUCCEEDED, payment_intent_id)
    assert balance_of(owner) == Decimal("1000.00000000")


def test_a_session_made_elsewhere_is_recorded_and_ignored(stripe_on, webhooks, owner, buyer_client):
    topup = start_checkout(buyer_client)
    completed, _ = stripe_on.complete_checkout(topup.checkout_session_id)
    stranger = {**completed, "id": "evt_stranger", "data": {"object": {
        **completed["data"]["object"], "id": "cs_test_elsewhere", "metadata": {}}}}  # fmt: skip

    deliver(webhooks, stranger)

    assert balance_of(owner) == Decimal("0")
    assert TopUpEvent.objects.get(event_id="evt_stranger").state == "ignored"
