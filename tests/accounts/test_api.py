import pytest
from django.core.management import call_command
from django.db import connection
from rest_framework.test import APIClient

from accounts.models import ApiKey, User, all_scopes
from accounts.services import api_key_create, hash_api_key
from tests.conftest import client_for

pytestmark = pytest.mark.django_db


def test_raw_key_is_stored_nowhere_in_the_database(owner):
    _, raw_key = api_key_create(user=owner, name="laptop")
    secret_part = raw_key[len("prl_") + 8 :]
    with connection.cursor() as cursor:
        cursor.execute("SELECT name, prefix, key_hash FROM accounts_apikey")
        rows = cursor.fetchall()
    flattened = " ".join(str(value) for row in rows for value in row)
    assert raw_key not in flattened
    assert secret_part not in flattened
    assert ApiKey.objects.get(name="laptop").key_hash == hash_api_key(raw_key)


def test_key_authenticates_and_shows_the_profile(owner):
    response = client_for(owner).get("/api/v1/users/me")
    assert response.status_code == 200
    assert response.json() == {
        "id": owner.id,
        "email": "owner@example.com",
        "is_staff": False,
        "date_joined": response.json()["date_joined"],
        "kind": "person",
        "organization": None,
        "member": None,
    }


@pytest.mark.parametrize(
    "header",
    ["Bearer prl_unknown", "Bearer", "Bearer a b", "Token something"],
)
def test_unknown_or_malformed_key_is_401(header):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get("/api/v1/users/me")
    assert response.status_code == 401
    assert response.json()["error"]["code"] in {"authentication_failed", "not_authenticated"}


def test_missing_key_is_401(anon_client):
    response = anon_client.get("/api/v1/users/me")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_revoked_key_is_401_and_revoking_is_owner_only(owner, other_user):
    client = APIClient()
    api_key, raw_key = api_key_create(user=owner, name="to-revoke")
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    assert client.get("/api/v1/users/me").status_code == 200

    assert client_for(other_user).delete(f"/api/v1/users/me/keys/{api_key.id}").status_code == 404
    response = client_for(owner).delete(f"/api/v1/users/me/keys/{api_key.id}")
    assert response.status_code == 200
    assert response.json()["revoked_at"] is not None
    assert client.get("/api/v1/users/me").status_code == 401


def test_key_list_shows_own_keys_without_secrets(owner, other_user):
    client = client_for(owner)
    api_key_create(user=other_user, name="not-mine")
    response = client.get("/api/v1/users/me/keys")
    assert response.status_code == 200
    names = [row["name"] for row in response.json()["results"]]
    assert names == ["test"]
    assert "key" not in response.json()["results"][0]


def test_create_key_shows_the_secret_once(owner):
    client = client_for(owner, scopes=all_scopes())
    response = client.post("/api/v1/auth/keys", {"name": "ci"}, format="json")
    assert response.status_code == 201
    raw_key = response.json()["key"]
    assert raw_key.startswith(response.json()["prefix"])
    fresh = APIClient()
    fresh.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    assert fresh.get("/api/v1/users/me").json()["email"] == owner.email


def test_create_key_without_name_is_400_naming_the_field(owner):
    response = client_for(owner, scopes=all_scopes()).post("/api/v1/auth/keys", {}, format="json")
    assert response.status_code == 400
    assert "name" in response.json()["error"]["fields"]


def test_register_creates_user_wallet_and_key(anon_client, settings):
    settings.ALLOW_REGISTRATION = True
    response = anon_client.post(
        "/api/v1/auth/register", {"email": "new@example.com", "password": "a-long-passphrase-1"}, format="json"
    )
    assert response.status_code == 201
    body = response.json()
    assert body["user"]["email"] == "new@example.com"
    user = User.objects.get(email="new@example.com")
    assert user.check_password("a-long-passphrase-1")
    assert user.wallet.balance == 0
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {body['api_key']['key']}")
    assert client.get("/api/v1/users/me").status_code == 200


def test_register_duplicate_email_is_400(anon_client, owner, settings):
    settings.ALLOW_REGISTRATION = True
    response = anon_client.post(
        "/api/v1/auth/register", {"email": "OWNER@example.com", "password": "a-long-passphrase-1"}, format="json"
    )
    assert response.status_code == 400
    assert "email" in response.json()["error"]["fields"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"password": "a-long-passphrase-1"}, "email"),
        ({"email": "not-an-email", "password": "a-long-passphrase-1"}, "email"),
        ({"email": "x@example.com"}, "password"),
        ({"email": "x@example.com", "password": "short"}, "password"),
    ],
)
def test_register_malformed_body_is_400_naming_the_field(anon_client, settings, body, field):
    settings.ALLOW_REGISTRATION = True
    response = anon_client.post("/api/v1/auth/register", body, format="json")
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]
    assert not User.objects.filter(email="x@example.com").exists()


def test_register_is_closed_when_disabled(anon_client, settings):
    settings.ALLOW_REGISTRATION = False
    response = anon_client.post(
        "/api/v1/auth/register", {"email": "new@example.com", "password": "a-long-passphrase-1"}, format="json"
    )
    assert response.status_code == 404
    assert not User.objects.filter(email="new@example.com").exists()


def test_issue_api_key_command_prints_a_working_key(capsys):
    call_command("issue_api_key", "ops@example.com", "--create-user", "--staff")
    raw_key = capsys.readouterr().out.strip()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    body = client.get("/api/v1/users/me").json()
    assert body["email"] == "ops@example.com"
    assert body["is_staff"] is True


def test_issue_api_key_for_unknown_user_without_create_fails():
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="--create-user"):
        call_command("issue_api_key", "nobody@example.com")


def test_seed_demo_creates_a_user_with_a_working_key(capsys):
    call_command("seed_demo")
    out = capsys.readouterr().out
    raw_key = out.split("API key:")[1].split()[0]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    assert client.get("/api/v1/users/me").json()["email"] == "demo@parley.local"


def test_requests_over_the_rate_are_429(owner, monkeypatch):
    from rest_framework.throttling import SimpleRateThrottle

    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", {"anon": "2/min", "user": "2/min"})
    client = client_for(owner)
    codes = [client.get("/api/v1/users/me").status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    assert client.get("/api/v1/users/me").json()["error"]["code"] == "throttled"
