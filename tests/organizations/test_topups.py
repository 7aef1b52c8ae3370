"""Stripe top-ups of an organization's wallet, against the fake Stripe: a PaymentIntent,
a Checkout Session and an auto top-up (the card saved through the organization's
endpoint, the charge set off by a turn through an organization's key). Each credits
the organization's wallet exactly once, and never the wallet of the member who paid.
The organization's account is its Stripe customer, apart from the member's own."""

from decimal import Decimal

import openai
import pytest
from djstripe.models import Customer

from accounts.models import ApiKeyScope, all_scopes
from billing.models import AutoTopUp, CreditTransaction, TopUp
from billing.services import wallet_debit
from organizations.models import Role
from organizations.services import organization_api_key_create
from tests.billing.stripe.conftest import (  # noqa: F401  (fixtures)
    _wallets_match_their_ledger,
    balance_of,
    endpoint,
    ledger_of,
    stripe_on,
    stripe_server,
    webhooks,
)
from tests.billing.stripe.test_webhooks import deliver
from tests.conftest import client_for
from tests.organizations.conftest import member_add

pytestmark = pytest.mark.django_db
URLS = {"success_url": "https://app.example/paid", "cancel_url": "https://app.example/"}
HELLO = [{"role": "user", "content": "Hello"}]


def url(org, suffix: str) -> str:  # noqa: ANN001
    return f"/api/v1/orgs/{org.pk}/{suffix}"


@pytest.fixture
def admin(org):  # noqa: ANN001, ANN201
    """An admin of the organization, with a personal key of every scope."""
    return member_add(org, "admin@example.com", Role.ADMIN)


@pytest.fixture
def admin_client(admin):  # noqa: ANN001, ANN201
    return client_for(admin.user, scopes=all_scopes())


def test_a_payment_intent_top_up_of_an_org_credits_its_wallet_once(stripe_on, webhooks, org, admin, admin_client):  # noqa: F811
    response = admin_client.post(url(org, "wallet/top-up"), {"amount_usd": "10.00"}, format="json")
    assert response.status_code == 201, response.json()
    topup = TopUp.objects.get(pk=response.json()["id"])
    assert topup.user_id == org.account_id and response.json()["client_secret"]

    # The organization's account is the Stripe customer, not the admin who paid.
    [created] = stripe_on.calls("POST", "/v1/customers")
    assert created.params["email"] == "acme@organizations.parley.invalid"
    assert created.params["metadata"] == {"djstripe_subscriber": str(org.account_id)}
    customer = Customer.objects.get(subscriber=org.account)
    assert not Customer.objects.filter(subscriber=admin.user).exists()
    [intent] = stripe_on.calls("POST", "/v1/payment_intents")
    assert intent.params["customer"] == customer.id
    assert intent.params["metadata"]["parley_user_id"] == str(org.account_id)

    event = stripe_on.pay(topup.payment_intent_id)
    deliver(webhooks, event)
    deliver(webhooks, event)  # Stripe delivers at least once

    assert balance_of(org.account) == Decimal("1100")
    assert ledger_of(org.account)[-1] == ("topup", Decimal("1000.00000000"), topup.payment_intent_id)
    assert CreditTransaction.objects.filter(kind="topup").count() == 1
    assert balance_of(admin.user) == Decimal("0") and ledger_of(admin.user) == []
    listed = admin_client.get(url(org, "top-ups")).json()["results"]
    assert [(row["id"], row["status"]) for row in listed] == [(topup.pk, "succeeded")]
    assert admin_client.get("/api/v1/users/me/top-ups").json()["results"] == []


def test_an_idempotency_key_answers_the_same_org_top_up_apart_from_the_members_own(
    stripe_on,  # noqa: F811
    org,
    admin,
    admin_client,
):
    first = admin_client.post(url(org, "wallet/top-up"), {"amount_usd": "5.00"}, HTTP_IDEMPOTENCY_KEY="order-1")
    again = admin_client.post(url(org, "wallet/top-up"), {"amount_usd": "5.00"}, HTTP_IDEMPOTENCY_KEY="order-1")
    other = admin_client.post(url(org, "wallet/top-up"), {"amount_usd": "6.00"}, HTTP_IDEMPOTENCY_KEY="order-1")
    own = admin_client.post("/api/v1/users/me/wallet/top-up", {"amount_usd": "5.00"}, HTTP_IDEMPOTENCY_KEY="order-1")

    assert first.status_code == again.status_code == own.status_code == 201
    assert again.json() == first.json()
    assert other.status_code == 422
    assert own.json()["id"] != first.json()["id"]
    assert sorted(TopUp.objects.values_list("user_id", flat=True)) == sorted([org.account_id, admin.user_id])
    assert Customer.objects.filter(subscriber__in=[org.account, admin.user]).count() == 2


def test_a_checkout_top_up_of_an_org_credits_its_wallet_once(stripe_on, webhooks, org, owner):  # noqa: F811
    client = client_for(owner)
    response = client.post(url(org, "wallet/top-up"), {"amount_usd": "7.77", "mode": "checkout", **URLS})
    assert response.status_code == 201, response.json()
    assert response.json()["url"].startswith("https://checkout.stripe.com/")
    topup = TopUp.objects.get(pk=response.json()["id"])
    [session] = stripe_on.calls("POST", "/v1/checkout/sessions")
    assert session.params["customer"] == Customer.objects.get(subscriber=org.account).id

    completed, paid = stripe_on.complete_checkout(topup.checkout_session_id)
    deliver(webhooks, paid)
    deliver(webhooks, completed)
    deliver(webhooks, completed)

    assert balance_of(org.account) == Decimal("877")
    assert CreditTransaction.objects.filter(kind="topup", wallet__user=org.account).count() == 1
    assert not CreditTransaction.objects.filter(wallet__user=owner).exists()
    topup.refresh_from_db()
    assert topup.status == TopUp.Status.SUCCEEDED


def test_a_member_cannot_top_up_and_stripe_is_not_called(stripe_on, org):  # noqa: F811
    ada = member_add(org, "ada@example.com")
    response = client_for(ada.user).post(url(org, "wallet/top-up"), {"amount_usd": "10.00"})
    assert response.status_code == 403 and "owner or admin" in response.json()["error"]["message"]
    assert stripe_on.requests == [] and not TopUp.objects.exists()


def test_the_org_top_up_is_503_when_stripe_is_off_but_only_for_a_manager(settings, org, owner, other_user):
    settings.STRIPE_SECRET_KEY = ""
    assert client_for(other_user).post(url(org, "wallet/top-up"), {"amount_usd": "10.00"}).status_code == 404
    response = client_for(owner).post(url(org, "wallet/top-up"), {"amount_usd": "10.00"})
    assert response.status_code == 503 and "Stripe is not configured" in response.json()["error"]["message"]


def save_card(client, stripe_on, webhooks, org) -> str:  # noqa: ANN001, F811
    response = client.post(url(org, "auto-top-up/card"), URLS, format="json")
    assert response.status_code == 201, response.json()
    completed, _ = stripe_on.complete_checkout(response.json()["url"].rsplit("/", 1)[1], last4="1881")
    deliver(webhooks, completed)
    return stripe_on.get("setup_intents", completed["data"]["object"]["setup_intent"])["payment_method"]


def test_auto_top_up_settings_need_the_keys_scope_and_a_manager(stripe_on, webhooks, org, admin, admin_client):  # noqa: F811
    narrow = client_for(admin.user, scopes=[ApiKeyScope.CHAT])
    refused = narrow.post(url(org, "auto-top-up/card"), URLS, format="json")
    assert refused.status_code == 403 and "'keys' scope" in refused.json()["error"]["message"]
    assert narrow.put(url(org, "auto-top-up"), {"threshold": "50", "amount_usd": "20.00"}).status_code == 403

    no_card = admin_client.put(url(org, "auto-top-up"), {"threshold": "50", "amount_usd": "20.00"})
    assert no_card.status_code == 400 and list(no_card.json()["error"]["fields"]) == ["card"]
    save_card(admin_client, stripe_on, webhooks, org)
    on = admin_client.put(url(org, "auto-top-up"), {"threshold": "50", "amount_usd": "20.00"})
    assert on.status_code == 200 and on.json()["enabled"] is True
    assert narrow.get(url(org, "auto-top-up")).json() == on.json()  # reading needs no scope
    member = member_add(org, "ada@example.com")
    assert client_for(member.user).get(url(org, "wallet")).json()["auto_top_up"] == on.json()

    off = narrow.delete(url(org, "auto-top-up"))  # turning it off lowers what can be spent
    assert off.status_code == 200
    assert (off.json()["enabled"], off.json()["disabled_reason"]) == (False, "Turned off by admin@example.com.")
    assert AutoTopUp.objects.filter(user=org.account).count() == 1
    assert not AutoTopUp.objects.filter(user=admin.user).exists()


@pytest.mark.django_db(transaction=True)
def test_an_org_keys_turn_under_the_threshold_auto_tops_up_the_org_once(
    stripe_on,  # noqa: F811
    webhooks,  # noqa: F811
    org,
    owner,
    fast,
    base_url,
):
    client = client_for(owner, scopes=all_scopes())
    method_id = save_card(client, stripe_on, webhooks, org)
    assert client.put(url(org, "auto-top-up"), {"threshold": "100", "amount_usd": "20.00"}).status_code == 200
    ada = member_add(org, "ada@example.com")
    _, raw = organization_api_key_create(member=ada, name="ci")

    # The turn's debit leaves 100 - its cost, under 100: the saved card is charged.
    with openai.OpenAI(base_url=base_url, api_key=raw, max_retries=0, timeout=30) as sdk:
        sdk.chat.completions.create(model="fast", messages=HELLO)
    [charge] = [call for call in stripe_on.calls("POST", "/v1/payment_intents") if call.params.get("off_session")]
    topup = TopUp.objects.get(mode="auto")
    assert topup.user_id == org.account_id
    row = AutoTopUp.objects.get(user=org.account)
    assert (charge.params["customer"], charge.params["payment_method"]) == (row.customer_id, method_id)
    assert row.customer_id == Customer.objects.get(subscriber=org.account).id
    # A second debit while the charge is in flight charges nothing more.
    wallet_debit(user=org.account, amount=Decimal("1"), reference="turn-2")
    event = stripe_on.intent_event(topup.payment_intent_id, "payment_intent.succeeded")
    deliver(webhooks, event)
    deliver(webhooks, event)

    debited = -sum(amount for kind, amount, _ in ledger_of(org.account) if kind == "debit")
    assert balance_of(org.account) == Decimal("100") + Decimal("2000") - debited
    assert [kind for kind, _, _ in ledger_of(org.account)].count("topup") == 1
    assert len([c for c in stripe_on.calls("POST", "/v1/payment_intents") if c.params.get("off_session")]) == 1
    assert ledger_of(owner) == [] and ledger_of(ada.user) == []
    assert AutoTopUp.objects.get(user=org.account).in_flight is None
