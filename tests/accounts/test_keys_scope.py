"""The `keys` scope (issue 29): making keys, changing any key's limits or scopes, the
account's cap, saving a card and turning on auto top-up need it. A key without it
gets a 403 naming the scope and changes nothing, so a budgeted key cannot lift its
own budget. New keys get chat and openai; the operator's and the registration's key
get all three."""

import io
from decimal import Decimal

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from accounts.models import ApiKey, User
from accounts.services import api_key_create, hash_api_key
from billing.models import AutoTopUp
from tests.billing.stripe.conftest import endpoint, stripe_on, stripe_server, webhooks  # noqa: F401  (fixtures)
from tests.billing.stripe.test_auto_top_up import CARD, URLS, save_card

pytestmark = pytest.mark.django_db

AUTO = "/api/v1/users/me/auto-top-up"
LIMITS = "/api/v1/users/me/limits"
KEYS = "/api/v1/auth/keys"


def client_with(raw_key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client


def key_client(user, **limits) -> tuple[ApiKey, APIClient]:  # noqa: ANN001
    api_key, raw_key = api_key_create(user=user, name=limits.pop("name", "app"), **limits)
    return api_key, client_with(raw_key)


@pytest.fixture
def manager(owner) -> APIClient:  # noqa: ANN001
    """The owner's own key: every scope, as issue_api_key prints it."""
    return key_client(owner, name="owner", scopes=["chat", "openai", "keys"])[1]


@pytest.fixture
def stripe(request) -> tuple:  # noqa: ANN001
    """Stripe on against the fake Stripe server, and a poster of its webhooks
    (the fixtures of tests/billing/stripe/conftest.py)."""
    return request.getfixturevalue("stripe_on"), request.getfixturevalue("webhooks")


@pytest.fixture
def chat_key(owner) -> tuple[ApiKey, APIClient]:  # noqa: ANN001
    """The key an app gets: chat and openai (the default), no `keys`."""
    return key_client(owner)


def assert_lacks_keys_scope(response) -> None:  # noqa: ANN001
    assert response.status_code == 403, response.content
    error = response.json()["error"]
    assert error["code"] == "permission_denied"
    assert "lacks the 'keys' scope" in error["message"]
    assert "its scopes: chat, openai" in error["message"]


def key_row(api_key: ApiKey) -> tuple:
    api_key.refresh_from_db()
    return (api_key.budget_credits, api_key.budget_window, api_key.rpm, api_key.tpm, api_key.expires_at,
            api_key.scopes, api_key.revoked_at)  # fmt: skip


# --- each guarded endpoint ---------------------------------------------------------


def test_making_a_key_needs_the_keys_scope(owner, manager, chat_key):
    _, chat = chat_key
    before = ApiKey.objects.count()

    assert_lacks_keys_scope(chat.post(KEYS, {"name": "more"}, format="json"))
    assert ApiKey.objects.count() == before

    made = manager.post(KEYS, {"name": "more"}, format="json")
    assert made.status_code == 201, made.content
    assert ApiKey.objects.get(pk=made.json()["id"]).user == owner


def test_changing_a_keys_limits_or_scopes_needs_the_keys_scope(owner, manager, chat_key):
    api_key, chat = chat_key
    other, _ = key_client(owner, name="other", budget_credits=Decimal("3"), budget_window="week")
    before, other_before = key_row(api_key), key_row(other)

    for target in (api_key, other):
        for change in ({"rpm": 5}, {"scopes": ["chat"]}, {"budget_credits": None}):
            assert_lacks_keys_scope(chat.patch(f"/api/v1/users/me/keys/{target.pk}", change, format="json"))
    assert (key_row(api_key), key_row(other)) == (before, other_before)

    changed = manager.patch(f"/api/v1/users/me/keys/{other.pk}", {"rpm": 5, "scopes": ["chat"]}, format="json")
    assert changed.status_code == 200, changed.content
    assert (changed.json()["rpm"], changed.json()["scopes"]) == (5, ["chat"])
    other.refresh_from_db()
    assert (other.rpm, other.scopes, other.budget_credits) == (5, ["chat"], Decimal("3"))


def test_changing_the_account_cap_needs_the_keys_scope(owner, manager, chat_key):
    _, chat = chat_key

    assert_lacks_keys_scope(chat.patch(LIMITS, {"spend_cap_credits": "50", "spend_cap_window": "day"}, format="json"))
    owner.refresh_from_db()
    assert (owner.spend_cap_credits, owner.spend_cap_window) == (None, None)

    changed = manager.patch(LIMITS, {"spend_cap_credits": "50", "spend_cap_window": "day"}, format="json")
    assert changed.status_code == 200, changed.content
    owner.refresh_from_db()
    assert (owner.spend_cap_credits, owner.spend_cap_window) == (Decimal("50"), "day")


def test_saving_a_card_needs_the_keys_scope(stripe, owner, manager, chat_key):
    _, chat = chat_key

    assert_lacks_keys_scope(chat.post(CARD, URLS, format="json"))
    assert stripe[0].requests == []  # nothing reached Stripe
    assert not AutoTopUp.objects.filter(user=owner).exclude(setup_session_id="").exists()

    save_card(manager, *stripe)  # 201, and the webhook saves it
    assert AutoTopUp.objects.get(user=owner).card_last4 == "1881"


def test_turning_auto_top_up_on_needs_the_keys_scope(stripe, owner, manager, chat_key):
    _, chat = chat_key
    save_card(manager, *stripe)

    assert_lacks_keys_scope(chat.put(AUTO, {"threshold": "500", "amount_usd": "20.00"}, format="json"))
    assert AutoTopUp.objects.get(user=owner).enabled is False

    on = manager.put(AUTO, {"threshold": "500", "amount_usd": "20.00"}, format="json")
    assert on.status_code == 200, on.content
    assert AutoTopUp.objects.get(user=owner).enabled is True
    # Changing it once on raises what may be charged as much as turning it on.
    assert_lacks_keys_scope(chat.put(AUTO, {"threshold": "100000", "amount_usd": "500.00"}, format="json"))
    row = AutoTopUp.objects.get(user=owner)
    assert (row.threshold, row.amount_usd) == (Decimal("500"), Decimal("20.00"))


def test_what_lowers_spending_stays_open_to_a_key_without_the_keys_scope(stripe, owner, manager, chat_key):
    api_key, chat = chat_key
    save_card(manager, *stripe)
    assert manager.put(AUTO, {"threshold": "500", "amount_usd": "20.00"}, format="json").status_code == 200

    assert chat.get("/api/v1/users/me/keys").status_code == 200
    assert chat.get(f"/api/v1/users/me/keys/{api_key.pk}").status_code == 200
    assert chat.get(LIMITS).status_code == 200
    assert chat.get(AUTO).status_code == 200
    off = chat.delete(AUTO)
    assert (off.status_code, off.json()["enabled"]) == (200, False)
    revoked = chat.delete(f"/api/v1/users/me/keys/{api_key.pk}")  # a key may revoke itself
    assert revoked.status_code == 200
    assert ApiKey.objects.get(pk=api_key.pk).revoked_at is not None


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", KEYS, {"name": "x"}),
        ("patch", LIMITS, {"spend_cap_credits": "1"}),
        ("put", AUTO, {"threshold": "1", "amount_usd": "5.00"}),
        ("post", CARD, URLS),
    ],
)
def test_without_a_key_the_guarded_endpoints_stay_401(anon_client, method, path, body):
    assert getattr(anon_client, method)(path, body, format="json").status_code == 401


def test_a_user_not_authenticated_by_a_key_has_no_scopes_to_lack(owner):
    """Scopes belong to API keys: a user authenticated another way (the staff console's
    session; here DRF's force_authenticate) is not limited by them."""
    client = APIClient()
    client.force_authenticate(user=owner)

    made = client.post(KEYS, {"name": "from-a-session", "scopes": ["chat", "keys"]}, format="json")
    assert made.status_code == 201, made.content
    assert made.json()["scopes"] == ["chat", "keys"]
    assert client.patch(LIMITS, {"spend_cap_credits": "9"}, format="json").status_code == 200


# --- the exploit from the issue ------------------------------------------------------


def test_a_budgeted_chat_key_cannot_lift_its_limits(stripe, owner, manager):
    """A chat-only key with a budget of 1 a day and rpm 1 tries everything that raised
    its limits before: each is 403 naming `keys`, and nothing changed."""
    owner_key_count = ApiKey.objects.count()
    User.objects.filter(pk=owner.pk).update(spend_cap_credits=Decimal("5"), spend_cap_window="day")
    save_card(manager, *stripe)
    api_key, chat = key_client(owner, scopes=["chat"], budget_credits=Decimal("1"), budget_window="day", rpm=1)
    before = key_row(api_key)
    stripe_calls = len(stripe[0].requests)

    attempts = [
        chat.post(KEYS, {"name": "unlimited"}, format="json"),
        chat.post(KEYS, {"name": "root", "scopes": ["chat", "openai", "keys"]}, format="json"),
        chat.patch(
            f"/api/v1/users/me/keys/{api_key.pk}",
            {"budget_credits": None, "budget_window": None, "rpm": None, "scopes": ["chat", "openai", "keys"]},
            format="json",
        ),
        chat.patch(LIMITS, {"spend_cap_credits": None}, format="json"),
        chat.post(CARD, URLS, format="json"),
        chat.put(AUTO, {"threshold": "1000", "amount_usd": "500.00"}, format="json"),
    ]

    for response in attempts:
        assert response.status_code == 403, response.content
        assert response.json()["error"]["code"] == "permission_denied"
        assert "lacks the 'keys' scope" in response.json()["error"]["message"]
        assert "its scopes: chat." in response.json()["error"]["message"]
    assert ApiKey.objects.count() == owner_key_count + 1  # only the chat key itself
    assert key_row(api_key) == before == (Decimal("1"), "day", 1, None, None, ["chat"], None)
    owner.refresh_from_db()
    assert (owner.spend_cap_credits, owner.spend_cap_window) == (Decimal("5"), "day")
    assert AutoTopUp.objects.get(user=owner).enabled is False
    assert len(stripe[0].requests) == stripe_calls


# --- which scopes a key gets ---------------------------------------------------------------


def test_a_new_key_gets_chat_and_openai_unless_it_asks(owner, manager):
    plain = manager.post(KEYS, {"name": "plain"}, format="json")
    assert plain.status_code == 201
    assert plain.json()["scopes"] == ["chat", "openai"]
    assert ApiKey.objects.get(pk=plain.json()["id"]).scopes == ["chat", "openai"]
    assert api_key_create(user=owner, name="service")[0].scopes == ["chat", "openai"]

    asked = manager.post(KEYS, {"name": "admin", "scopes": ["keys", "chat"]}, format="json")
    assert asked.status_code == 201
    assert asked.json()["scopes"] == ["chat", "keys"]  # exactly those asked, in the usual order
    made = client_with(asked.json()["key"]).post(KEYS, {"name": "grandchild"}, format="json")
    assert made.status_code == 201  # `keys` works


def test_issue_api_key_prints_a_key_with_every_scope(owner):
    out = io.StringIO()
    call_command("issue_api_key", "owner@example.com", stdout=out)
    api_key = ApiKey.objects.get(key_hash=hash_api_key(out.getvalue().strip()))
    assert api_key.scopes == ["chat", "openai", "keys"]
    made = client_with(out.getvalue().strip()).post(KEYS, {"name": "for-an-app"}, format="json")
    assert made.status_code == 201


def test_seed_demo_prints_a_key_with_every_scope(db):
    out = io.StringIO()
    call_command("seed_demo", stdout=out)
    [raw_key] = [line.split()[2] for line in out.getvalue().splitlines() if line.startswith("API key:")]
    assert ApiKey.objects.get(key_hash=hash_api_key(raw_key)).scopes == ["chat", "openai", "keys"]


def test_the_key_registration_answers_has_every_scope(anon_client, settings):
    settings.ALLOW_REGISTRATION = True
    response = anon_client.post(
        "/api/v1/auth/register", {"email": "new@example.com", "password": "a-long-passphrase-1"}, format="json"
    )
    assert response.status_code == 201
    assert response.json()["api_key"]["scopes"] == ["chat", "openai", "keys"]
    made = client_with(response.json()["api_key"]["key"]).post(KEYS, {"name": "for-an-app"}, format="json")
    assert made.status_code == 201
    assert made.json()["scopes"] == ["chat", "openai"]
