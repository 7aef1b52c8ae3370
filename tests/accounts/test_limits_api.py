"""The limits of API keys and the account through the API: fields, validation,
spent / resets_at, expiry (401) and scopes (403)."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import ApiKey, User, all_scopes
from accounts.services import api_key_create, api_key_revoke
from billing.limits import spend_limits_for, window_end, window_start
from billing.services import wallet_debit, wallet_grant, wallet_hold_place
from tests.conftest import client_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner_client(owner) -> APIClient:  # noqa: ANN001
    """The owner's own key, with every scope: these tests manage keys and the cap,
    which needs `keys` (tests/accounts/test_keys_scope.py tests the refusals)."""
    return client_for(owner, scopes=all_scopes())


def client_with(raw_key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client


def test_a_key_is_created_with_its_limits_and_shows_them(owner_client):
    expires = (timezone.now() + timedelta(days=30)).replace(microsecond=0)
    response = owner_client.post(
        "/api/v1/auth/keys",
        {
            "name": "ci", "budget_credits": "10.5", "budget_window": "day", "rpm": 60, "tpm": 100000,
            "expires_at": expires.isoformat(), "scopes": ["openai"],
        },  # fmt: skip
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["key"].startswith("prl_")
    assert (body["budget_credits"], body["budget_window"], body["rpm"], body["tpm"], body["scopes"]) == (
        "10.50000000", "day", 60, 100000, ["openai"],
    )  # fmt: skip
    assert datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00")) == expires
    now = timezone.now()
    assert (body["spent"], body["held"]) == ("0.00000000", "0.00000000")
    assert body["resets_at"] == window_end("day", window_start("day", now)).isoformat().replace("+00:00", "Z")
    key = ApiKey.objects.get(pk=body["id"])
    assert (key.budget_credits, key.scopes) == (Decimal("10.5"), ["openai"])


def test_a_key_created_without_limits_has_none_and_both_scopes(owner_client):
    body = owner_client.post("/api/v1/auth/keys", {"name": "plain"}, format="json").json()
    assert (body["budget_credits"], body["budget_window"], body["rpm"], body["tpm"], body["expires_at"]) == (
        None, None, None, None, None,
    )  # fmt: skip
    assert body["scopes"] == ["chat", "openai"]
    assert body["resets_at"] is None  # lifetime


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("budget_window", "year"),
        ("budget_window", 7),
        ("budget_credits", "-1"),
        ("budget_credits", "abc"),
        ("budget_credits", "0.123456789"),
        ("rpm", 0),
        ("rpm", -5),
        ("tpm", "many"),
        ("scopes", ["chat", "admin"]),
        ("scopes", []),
        ("scopes", "chat"),
        ("expires_at", "tomorrow"),
        ("expires_at", "2020-01-01T00:00:00Z"),
    ],
)
def test_bad_limit_values_are_400_naming_the_field_on_create_and_patch(owner_client, owner, field, value):
    created = owner_client.post("/api/v1/auth/keys", {"name": "ci", field: value}, format="json")
    assert created.status_code == 400, created.content
    assert field in created.json()["error"]["fields"]
    assert not ApiKey.objects.filter(name="ci").exists()

    key, _ = api_key_create(user=owner, name="target")
    patched = owner_client.patch(f"/api/v1/users/me/keys/{key.pk}", {field: value}, format="json")
    assert patched.status_code == 400, patched.content
    assert field in patched.json()["error"]["fields"]
    assert ApiKey.objects.get(pk=key.pk).budget_credits is None


def test_patch_changes_only_the_fields_sent_and_null_clears(owner_client, owner):
    key, _ = api_key_create(user=owner, name="ci", budget_credits=Decimal("5"), budget_window="week", rpm=10)
    response = owner_client.patch(
        f"/api/v1/users/me/keys/{key.pk}", {"budget_credits": "7", "rpm": None, "scopes": ["chat"]}, format="json"
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["budget_credits"], body["budget_window"], body["rpm"], body["scopes"]) == (
        "7.00000000", "week", None, ["chat"],
    )  # fmt: skip
    key.refresh_from_db()
    assert (key.budget_credits, key.budget_window, key.rpm, key.scopes) == (Decimal("7"), "week", None, ["chat"])


def test_repeated_scopes_are_stored_once(owner_client):
    body = owner_client.post("/api/v1/auth/keys", {"name": "x", "scopes": ["openai", "chat", "openai"]}).json()
    assert body["scopes"] == ["chat", "openai"]


def test_someone_elses_key_is_404_and_unchanged(owner_client, other_user):
    theirs, _ = api_key_create(user=other_user, name="theirs")
    assert owner_client.patch(f"/api/v1/users/me/keys/{theirs.pk}", {"rpm": 1}, format="json").status_code == 404
    assert owner_client.get(f"/api/v1/users/me/keys/{theirs.pk}").status_code == 404
    assert ApiKey.objects.get(pk=theirs.pk).rpm is None


def test_a_revoked_keys_limits_cannot_change(owner_client, owner):
    key, _ = api_key_create(user=owner, name="old")
    api_key_revoke(api_key=key)
    response = owner_client.patch(f"/api/v1/users/me/keys/{key.pk}", {"rpm": 5}, format="json")
    assert response.status_code == 422
    assert "revoked" in response.json()["error"]["message"]


def test_delete_still_revokes(owner_client, owner):
    key, _ = api_key_create(user=owner, name="old")
    response = owner_client.delete(f"/api/v1/users/me/keys/{key.pk}")
    assert response.status_code == 200 and response.json()["revoked_at"] is not None


def test_the_key_list_shows_each_keys_spent_and_held_in_its_window(owner_client, owner):
    wallet_grant(user=owner, amount=Decimal("50"), reason="test")
    daily, _ = api_key_create(user=owner, name="daily", budget_credits=Decimal("10"), budget_window="day")
    lifetime, _ = api_key_create(user=owner, name="lifetime", budget_credits=Decimal("10"))
    for key, reference in ((daily, "t1"), (lifetime, "t2")):
        wallet_hold_place(user=owner, amount=Decimal("3"), reference=reference,
                          spend_limits=spend_limits_for(user=owner, api_key=key))  # fmt: skip
    wallet_debit(user=owner, amount=Decimal("1.5"), reference="t1", release_hold="t1")

    rows = {row["name"]: row for row in owner_client.get("/api/v1/users/me/keys").json()["results"]}
    assert (rows["daily"]["spent"], rows["daily"]["held"]) == ("1.50000000", "0.00000000")
    assert rows["daily"]["resets_at"].endswith("T00:00:00Z")
    assert (rows["lifetime"]["spent"], rows["lifetime"]["held"], rows["lifetime"]["resets_at"]) == (
        "0.00000000", "3.00000000", None,
    )  # fmt: skip
    detail = owner_client.get(f"/api/v1/users/me/keys/{daily.pk}").json()
    assert detail["spent"] == "1.50000000"
    # A key with no budget counts nothing: null, not a 0 that reads as "spent nothing".
    plain, _ = api_key_create(user=owner, name="plain")
    detail = owner_client.get(f"/api/v1/users/me/keys/{plain.pk}").json()
    assert (detail["spent"], detail["held"], detail["resets_at"]) == (None, None, None)


def test_the_account_cap_is_set_and_read(owner_client, owner):
    assert owner_client.get("/api/v1/users/me/limits").json() == {
        "spend_cap_credits": None, "spend_cap_window": None, "spent": None, "held": None, "resets_at": None,
    }  # fmt: skip
    response = owner_client.patch(
        "/api/v1/users/me/limits", {"spend_cap_credits": "25", "spend_cap_window": "month"}, format="json"
    )
    assert response.status_code == 200, response.content
    body = response.json()
    now = timezone.now()
    assert (body["spend_cap_credits"], body["spend_cap_window"]) == ("25.00000000", "month")
    assert body["resets_at"] == window_end("month", window_start("month", now)).isoformat().replace("+00:00", "Z")
    owner.refresh_from_db()
    assert (owner.spend_cap_credits, owner.spend_cap_window) == (Decimal("25"), "month")

    cleared = owner_client.patch("/api/v1/users/me/limits", {"spend_cap_credits": None}, format="json").json()
    assert (cleared["spend_cap_credits"], cleared["spend_cap_window"]) == (None, "month")
    assert (cleared["spent"], cleared["held"], cleared["resets_at"]) == (None, None, None)  # nothing is counted


@pytest.mark.parametrize(
    ("field", "value"),
    [("spend_cap_window", "fortnight"), ("spend_cap_credits", "-0.01"), ("spend_cap_credits", "x")],
)
def test_bad_cap_values_are_400_naming_the_field(owner_client, owner, field, value):
    response = owner_client.patch("/api/v1/users/me/limits", {field: value}, format="json")
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]
    assert User.objects.get(pk=owner.pk).spend_cap_credits is None


def test_the_limits_need_a_key(anon_client):
    assert anon_client.get("/api/v1/users/me/limits").status_code == 401


# --- expiry and scopes ----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)  # the live server reads what the test wrote
def test_an_expired_key_is_401_naming_the_expiry_on_both_apis(owner, live_server):
    key, raw = api_key_create(user=owner, name="temp", expires_at=timezone.now() + timedelta(seconds=30))
    assert client_with(raw).get("/api/v1/users/me").status_code == 200
    expired_at = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    ApiKey.objects.filter(pk=key.pk).update(expires_at=expired_at)  # time passes

    response = client_with(raw).get("/api/v1/users/me")
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "API key 'temp' expired at 2026-01-01T12:00:00Z."

    import httpx2

    answer = httpx2.get(f"{live_server.url}/v1/models", headers={"Authorization": f"Bearer {raw}"})
    assert answer.status_code == 401
    error = answer.json()["error"]
    assert (error["code"], error["message"]) == ("invalid_api_key", "API key 'temp' expired at 2026-01-01T12:00:00Z.")


@pytest.mark.django_db(transaction=True)
def test_a_key_without_the_scope_is_403_naming_it_on_both_apis(owner, live_server):
    import httpx2

    _, chat_only = api_key_create(user=owner, name="chat-only", scopes=["chat"])
    _, openai_only = api_key_create(user=owner, name="sdk-only", scopes=["openai"])

    response = client_with(openai_only).get("/api/v1/users/me")
    assert response.status_code == 403
    assert "API key 'sdk-only' lacks the 'chat' scope" in response.json()["error"]["message"]
    assert client_with(chat_only).get("/api/v1/users/me").status_code == 200

    refused = httpx2.get(f"{live_server.url}/v1/models", headers={"Authorization": f"Bearer {chat_only}"})
    assert refused.status_code == 403
    assert "API key 'chat-only' lacks the 'openai' scope" in refused.json()["error"]["message"]
    allowed = httpx2.get(f"{live_server.url}/v1/models", headers={"Authorization": f"Bearer {openai_only}"})
    assert allowed.status_code == 200
