"""POST users/me/wallet/top-up and GET users/me/top-ups against the fake Stripe.

A top-up must call Stripe outside any database transaction of ours; the service
checks that (the transaction the test framework wraps a test in is not ours)."""

from decimal import Decimal

import pytest
from django.conf import settings
from django.db import close_old_connections, transaction
from djstripe.models import Customer

from billing.models import CreditTransaction, TopUp
from billing.stripe.services import topup_create
from tests.conftest import client_for, make_user

TOP_UP = "/api/v1/users/me/wallet/top-up"
TOP_UPS = "/api/v1/users/me/top-ups"

pytestmark = pytest.mark.django_db


def test_top_up_answers_503_with_a_clear_message_when_stripe_is_off(settings, owner, buyer_client, stripe_server):
    settings.STRIPE_SECRET_KEY = ""
    stripe_server.reset()

    response = buyer_client.post(TOP_UP, {"amount_usd": "10.00"}, format="json")

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "service_unavailable"
    assert "Stripe is not configured" in response.json()["error"]["message"]
    assert not TopUp.objects.exists()
    assert stripe_server.requests == []


def test_the_rest_of_the_api_works_with_stripe_off(settings, owner, buyer_client):
    settings.STRIPE_SECRET_KEY = ""
    assert buyer_client.get("/api/v1/users/me").status_code == 200
    listing = buyer_client.get(TOP_UPS)
    assert listing.status_code == 200
    assert listing.json()["results"] == []


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        ("0.99", "Must be between 1.00 and 500.00 USD."),
        ("500.01", "Must be between 1.00 and 500.00 USD."),
        ("-10.00", "Must be between 1.00 and 500.00 USD."),
        ("0", "Must be between 1.00 and 500.00 USD."),
        ("1e3", "Must be between 1.00 and 500.00 USD."),
        ("10.001", "Ensure that there are no more than 2 decimal places."),
        ("ten", "A valid number is required."),
        ("NaN", "A valid number is required."),
        ("Infinity", "A valid number is required."),
        ("", "A valid number is required."),
        (None, "This field may not be null."),
        ([10], "A valid number is required."),
    ],
)
def test_top_up_refuses_bad_amounts_naming_amount_usd(stripe_on, owner, buyer_client, amount, message):
    response = buyer_client.post(TOP_UP, {"amount_usd": amount}, format="json")

    assert response.status_code == 400
    assert response.json()["error"]["fields"]["amount_usd"] == [message]
    assert not TopUp.objects.exists()
    assert stripe_on.requests == []


def test_top_up_without_amount_names_amount_usd(stripe_on, buyer_client):
    response = buyer_client.post(TOP_UP, {}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["fields"]["amount_usd"] == ["This field is required."]


@pytest.mark.parametrize(("amount", "credits"), [("1.00", "100.00000000"), ("500.00", "50000.00000000")])
def test_top_up_accepts_the_bounds(stripe_on, buyer_client, amount, credits):
    response = buyer_client.post(TOP_UP, {"amount_usd": amount}, format="json")
    assert response.status_code == 201
    assert response.json()["credits"] == credits


def test_top_up_creates_one_customer_and_a_payment_intent_per_top_up(stripe_on, owner, buyer_client):
    first = buyer_client.post(TOP_UP, {"amount_usd": "10.50"}, format="json")
    second = buyer_client.post(TOP_UP, {"amount_usd": 25}, format="json")

    assert first.status_code == 201, first.json()
    assert second.status_code == 201
    body = first.json()
    topup = TopUp.objects.get(pk=body["id"])
    assert body == {
        "id": topup.pk,
        "mode": "payment_intent",
        "payment_intent_id": topup.payment_intent_id,
        "client_secret": stripe_on.get("payment_intents", topup.payment_intent_id)["client_secret"],
        "checkout_session_id": None,
        "url": None,
        "amount_usd": "10.50",
        "credits": "1050.00000000",
        "status": "pending",
    }
    assert second.json()["amount_usd"] == "25.00"
    assert second.json()["credits"] == "2500.00000000"

    # One Stripe customer for the user, kept by dj-stripe.
    assert len(stripe_on.calls("POST", "/v1/customers")) == 1
    customer = Customer.objects.get(subscriber=owner)
    assert customer.id.startswith("cus_")
    customer_params = stripe_on.calls("POST", "/v1/customers")[0].params
    assert customer_params["email"] == owner.email
    assert customer_params["metadata"] == {"djstripe_subscriber": str(owner.pk)}
    created = stripe_on.calls("POST", "/v1/payment_intents")
    assert len(created) == 2
    params = created[0].params
    assert params["amount"] == "1050"
    assert params["currency"] == "usd"
    assert params["customer"] == customer.id
    assert params["metadata"] == {
        "parley_topup_id": str(topup.pk),
        "parley_user_id": str(owner.pk),
        "credits": "1050.00",
    }
    # The idempotency key comes from the committed TopUp row.
    assert created[0].idempotency_key == f"parley-topup-{topup.idempotency_key}"
    # One API version for every call, the pinned one.
    assert {call.stripe_version for call in stripe_on.requests} == {settings.STRIPE_API_VERSION}
    # Nothing is credited before Stripe says the payment succeeded.
    assert not CreditTransaction.objects.exists()


def test_credits_follow_credits_per_usd(settings, stripe_on, buyer_client):
    settings.CREDITS_PER_USD = Decimal("33.333")
    response = buyer_client.post(TOP_UP, {"amount_usd": "10.01"}, format="json")
    # round(10.01 * 33.333, 2) = round(333.66333, 2)
    assert response.json()["credits"] == "333.66000000"


@pytest.mark.django_db(transaction=True)
def test_stripe_is_called_only_after_the_top_up_is_committed(stripe_on, owner, buyer_client):
    seen: list[bool] = []

    def top_up_visible_to_another_connection(method: str, path: str, params: dict) -> None:
        # Runs in the fake server's thread, i.e. on its own database connection,
        # which sees committed rows only.
        if method == "POST" and path == "/v1/payment_intents":
            seen.append(TopUp.objects.filter(pk=int(params["metadata"]["parley_topup_id"])).exists())
            close_old_connections()

    stripe_on.hooks.append(top_up_visible_to_another_connection)

    assert buyer_client.post(TOP_UP, {"amount_usd": "5.00"}, format="json").status_code == 201
    assert seen == [True]


def test_a_top_up_refuses_to_call_stripe_inside_a_transaction(stripe_on, owner):
    with pytest.raises(RuntimeError, match="must not run inside a database transaction"), transaction.atomic():
        topup_create(user=owner, amount_usd=Decimal("5.00"))
    assert stripe_on.calls("POST") == []


def test_a_stripe_failure_answers_503_and_marks_the_top_up_failed(stripe_on, buyer_client):
    stripe_on.fail_next(1, status=500, path_prefix="/v1/payment_intents")

    response = buyer_client.post(TOP_UP, {"amount_usd": "10.00"}, format="json")

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "service_unavailable"
    topup = TopUp.objects.get()
    assert topup.status == TopUp.Status.FAILED
    assert topup.payment_intent_id is None
    assert topup.error == "Stripe error: APIError"


def test_top_ups_list_shows_own_top_ups_newest_first_with_their_state(stripe_on, owner, buyer_client):
    other = make_user("buyer2@example.com")
    other_client = client_for(other)
    assert other_client.post(TOP_UP, {"amount_usd": "7.00"}, format="json").status_code == 201
    ids = [buyer_client.post(TOP_UP, {"amount_usd": f"{n}.00"}, format="json").json()["id"] for n in (2, 3, 4)]

    listing = buyer_client.get(TOP_UPS, {"page_size": 2})

    assert listing.status_code == 200
    page = listing.json()
    assert page["count"] == 3
    assert [row["id"] for row in page["results"]] == [ids[2], ids[1]]
    assert page["next"] is not None
    row = page["results"][0]
    assert row["amount_usd"] == "4.00"
    assert row["credits"] == "400.00000000"
    assert row["status"] == "pending"
    assert row["refunded_credits"] == "0.00000000"
    assert row["dispute_status"] == ""
    assert row["payment_intent_id"].startswith("pi_")
    assert "client_secret" not in row
    assert [r["id"] for r in buyer_client.get(TOP_UPS, {"page": 2, "page_size": 2}).json()["results"]] == [ids[0]]


def test_top_up_endpoints_need_an_api_key(anon_client):
    assert anon_client.post(TOP_UP, {"amount_usd": "10.00"}, format="json").status_code == 401
    assert anon_client.get(TOP_UPS).status_code == 401


# --- Idempotency-Key ------------------------------------------------------------------------


def test_the_same_idempotency_key_answers_the_same_payment_intent(stripe_on, owner, buyer_client):
    first = buyer_client.post(TOP_UP, {"amount_usd": "10.00"}, format="json", HTTP_IDEMPOTENCY_KEY="order-42")
    retried = buyer_client.post(TOP_UP, {"amount_usd": "10.00"}, format="json", HTTP_IDEMPOTENCY_KEY="order-42")

    assert first.status_code == 201, first.json()
    assert retried.status_code == 201
    assert retried.json() == first.json()
    assert TopUp.objects.count() == 1
    assert len(stripe_on.calls("POST", "/v1/payment_intents")) == 1
    # The PaymentIntent's own idempotency key comes from the row the client's key names.
    topup = TopUp.objects.get()
    assert stripe_on.calls("POST", "/v1/payment_intents")[0].idempotency_key == f"parley-topup-{topup.idempotency_key}"


def test_a_top_up_whose_first_stripe_call_failed_is_retried_under_the_same_key(stripe_on, owner, buyer_client):
    stripe_on.fail_next(1, status=500, path_prefix="/v1/payment_intents")
    failed = buyer_client.post(TOP_UP, {"amount_usd": "10.00"}, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert failed.status_code == 503

    retried = buyer_client.post(TOP_UP, {"amount_usd": "10.00"}, format="json", HTTP_IDEMPOTENCY_KEY="k-1")

    assert retried.status_code == 201, retried.json()
    topup = TopUp.objects.get()
    assert (topup.status, topup.payment_intent_id, topup.error) == ("pending", retried.json()["payment_intent_id"], "")
    keys = {call.idempotency_key for call in stripe_on.calls("POST", "/v1/payment_intents")}
    assert keys == {f"parley-topup-{topup.idempotency_key}"}


def test_an_idempotency_key_reused_for_another_amount_is_refused(stripe_on, owner, buyer_client):
    assert (
        buyer_client.post(TOP_UP, {"amount_usd": "10.00"}, format="json", HTTP_IDEMPOTENCY_KEY="k-2").status_code == 201
    )

    response = buyer_client.post(TOP_UP, {"amount_usd": "20.00"}, format="json", HTTP_IDEMPOTENCY_KEY="k-2")

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_state"
    assert "10.00 USD" in response.json()["error"]["message"]
    assert TopUp.objects.count() == 1


def test_idempotency_keys_belong_to_their_user_and_different_keys_make_different_top_ups(
    stripe_on, owner, buyer_client
):
    other_client = client_for(make_user("buyer2@example.com"))
    mine = buyer_client.post(TOP_UP, {"amount_usd": "10.00"}, format="json", HTTP_IDEMPOTENCY_KEY="same")
    theirs = other_client.post(TOP_UP, {"amount_usd": "10.00"}, format="json", HTTP_IDEMPOTENCY_KEY="same")
    another = buyer_client.post(TOP_UP, {"amount_usd": "10.00"}, format="json", HTTP_IDEMPOTENCY_KEY="other")

    assert (
        len({mine.json()["payment_intent_id"], theirs.json()["payment_intent_id"], another.json()["payment_intent_id"]})
        == 3
    )
    assert TopUp.objects.count() == 3


def test_an_overlong_idempotency_key_is_refused(stripe_on, buyer_client):
    response = buyer_client.post(TOP_UP, {"amount_usd": "10.00"}, format="json", HTTP_IDEMPOTENCY_KEY="k" * 256)

    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["error"]["message"]
    assert not TopUp.objects.exists()
