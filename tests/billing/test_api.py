from decimal import Decimal
from urllib.parse import urlsplit

import pytest

from billing.models import CreditTransaction, Wallet
from billing.services import model_price_change, model_price_create, wallet_debit, wallet_grant, wallet_hold_place
from tests.conftest import client_for, make_user

pytestmark = pytest.mark.django_db


def test_wallet_shows_balance_held_and_signals_as_strings(owner, owner_client, settings):
    settings.LOW_BALANCE_THRESHOLD = Decimal("5.0")
    wallet_grant(user=owner, amount=Decimal("7.5"), reason="r")
    wallet_hold_place(user=owner, amount=Decimal("3.25"), reference="turn-1")
    wallet_debit(user=owner, amount=Decimal("3.00000001"), reference="turn-0")

    response = owner_client.get("/api/v1/users/me/wallet")
    assert response.status_code == 200
    assert response.json() == {
        "balance": "4.49999999",
        "held": "3.25000000",
        "available": "1.24999999",
        "low_balance": True,
        "low_balance_threshold": "5.00000000",
        "enforcement": "warn",
        "grants": [],
        "auto_top_up": {
            "enabled": False,
            "threshold": None,
            "amount_usd": None,
            "card": None,
            "in_flight_top_up": None,
            "disabled_reason": "",
            "disabled_at": None,
            "last_error": "",
        },
    }


def test_wallet_needs_a_key(anon_client):
    assert anon_client.get("/api/v1/users/me/wallet").status_code == 401


def test_transactions_are_own_rows_only_newest_first_with_a_cursor(owner, owner_client, other_user, grant_staff):
    for number in range(5):
        wallet_grant(user=owner, amount=Decimal(number + 1), reason=f"grant {number}", actor=grant_staff)
    wallet_grant(user=other_user, amount=Decimal("99"), reason="not yours")
    own_ids = list(
        CreditTransaction.objects.filter(wallet__user=owner).order_by("-created_at", "-id").values_list("id", flat=True)
    )

    seen, url = [], "/api/v1/users/me/transactions?page_size=2"
    while url:
        response = owner_client.get(url)
        assert response.status_code == 200
        body = response.json()
        assert len(body["results"]) <= 2
        seen.extend(body["results"])
        url = body["next"] and "{0.path}?{0.query}".format(urlsplit(body["next"]))
        # A row written between pages never shifts what comes next.
        if len(seen) == 2:
            wallet_grant(user=owner, amount=Decimal("1000"), reason="arrives mid-walk")

    assert [row["id"] for row in seen] == own_ids
    assert seen[0] == {
        "id": own_ids[0],
        "kind": "grant",
        "amount": "5.00000000",
        "balance_after": "15.00000000",
        "reference": None,
        "reason": "grant 4",
        "actor": grant_staff.id,
        "created_at": seen[0]["created_at"],
    }
    assert all(row["reason"] != "not yours" for row in seen)


def test_a_bad_cursor_is_not_a_server_error(owner_client):
    response = owner_client.get("/api/v1/users/me/transactions?cursor=not-a-cursor")
    assert response.status_code == 404


def test_models_lists_only_active_prices(owner_client):
    fast = model_price_create(
        alias="fast", provider="local", provider_model="local-fast",
        input_credits_per_mtok=Decimal("0.5"), output_credits_per_mtok=Decimal("1.5"),
    )  # fmt: skip
    model_price_change(price=fast, output_credits_per_mtok=Decimal("2"))
    response = owner_client.get("/api/v1/models")
    assert response.status_code == 200
    assert response.json() == [
        {
            "alias": "fast",
            "provider": "local",
            "provider_model": "local-fast",
            "input_credits_per_mtok": "0.50000000",
            "output_credits_per_mtok": "2.00000000",
        }
    ]


# --- staff ------------------------------------------------------------------------


def test_admin_wallet_shows_the_wallet_and_recent_transactions(owner, grant_staff_client, grant_staff):
    wallet_grant(user=owner, amount=Decimal("3"), reason="first", actor=grant_staff)
    wallet_debit(user=owner, amount=Decimal("0.5"), reference="turn-a")
    response = grant_staff_client.get(f"/api/v1/admin/wallets/{owner.id}")
    assert response.status_code == 200
    body = response.json()
    assert body["user_id"] == owner.id and body["email"] == owner.email
    assert (body["balance"], body["held"], body["available"]) == ("2.50000000", "0.00000000", "2.50000000")
    assert [(row["kind"], row["amount"], row["balance_after"]) for row in body["transactions"]] == [
        ("debit", "-0.50000000", "2.50000000"),
        ("grant", "3.00000000", "3.00000000"),
    ]


def test_admin_grant_records_the_staff_caller_as_actor(owner, grant_staff_client, grant_staff):
    response = grant_staff_client.post(
        f"/api/v1/admin/wallets/{owner.id}/grant", {"amount": "12.34567891", "reason": "support ticket 42"}
    )
    assert response.status_code == 201
    body = response.json()
    assert body["transaction"]["amount"] == "12.34567891"
    assert body["transaction"]["actor"] == grant_staff.id
    assert body["transaction"]["reason"] == "support ticket 42"
    assert body["wallet"]["balance"] == "12.34567891"
    row = CreditTransaction.objects.get()
    assert (row.kind, row.actor, row.wallet.user) == ("grant", grant_staff, owner)
    assert Wallet.objects.get(user=owner).balance == Decimal("12.34567891")


def test_admin_grant_accepts_exactly_the_maximum(owner, grant_staff_client, settings):
    settings.ADMIN_GRANT_MAX = Decimal("10000")
    response = grant_staff_client.post(f"/api/v1/admin/wallets/{owner.id}/grant", {"amount": "10000", "reason": "max"})
    assert response.status_code == 201
    assert Wallet.objects.get(user=owner).balance == Decimal("10000")


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"amount": "0", "reason": "r"}, "amount"),
        ({"amount": 0, "reason": "r"}, "amount"),
        ({"amount": "-1", "reason": "r"}, "amount"),
        ({"amount": "abc", "reason": "r"}, "amount"),
        ({"amount": "1.123456789", "reason": "r"}, "amount"),
        ({"amount": "10000.00000001", "reason": "r"}, "amount"),
        ({"amount": "1e30", "reason": "r"}, "amount"),
        ({"amount": "NaN", "reason": "r"}, "amount"),
        ({"amount": None, "reason": "r"}, "amount"),
        ({"reason": "r"}, "amount"),
        ({"amount": "5"}, "reason"),
        ({"amount": "5", "reason": "   "}, "reason"),
        ({"amount": "5", "reason": "x" * 501}, "reason"),
    ],
)
def test_admin_grant_validation_names_the_field(owner, grant_staff_client, settings, payload, field):
    settings.ADMIN_GRANT_MAX = Decimal("10000")
    response = grant_staff_client.post(f"/api/v1/admin/wallets/{owner.id}/grant", payload)
    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == [field]
    assert not CreditTransaction.objects.exists()
    assert Wallet.objects.get(user=owner).balance == Decimal("0")


def test_admin_grant_with_an_idempotency_key_applies_once(owner, grant_staff_client):
    url = f"/api/v1/admin/wallets/{owner.id}/grant"
    first = grant_staff_client.post(url, {"amount": "5", "reason": "r"}, HTTP_IDEMPOTENCY_KEY="abc")
    again = grant_staff_client.post(url, {"amount": "5", "reason": "r"}, HTTP_IDEMPOTENCY_KEY="abc")
    assert first.status_code == again.status_code == 201
    assert first.json()["transaction"]["id"] == again.json()["transaction"]["id"]
    assert Wallet.objects.get(user=owner).balance == Decimal("5")
    too_long = grant_staff_client.post(url, {"amount": "5", "reason": "r"}, HTTP_IDEMPOTENCY_KEY="k" * 201)
    assert too_long.status_code == 400
    assert list(too_long.json()["error"]["fields"]) == ["Idempotency-Key"]


@pytest.mark.parametrize("method", ["get", "post"])
def test_admin_wallets_of_an_unknown_user_are_404(grant_staff_client, method):
    suffix = "/grant" if method == "post" else ""
    response = getattr(grant_staff_client, method)(
        f"/api/v1/admin/wallets/999999{suffix}", {"amount": "1", "reason": "r"}
    )
    assert response.status_code == 404
    huge = getattr(grant_staff_client, method)(
        f"/api/v1/admin/wallets/{10**30}{suffix}", {"amount": "1", "reason": "r"}
    )
    assert huge.status_code == 404


@pytest.mark.parametrize("method", ["get", "post"])
def test_admin_wallets_are_staff_only(owner, other_client, anon_client, method):
    suffix = "/grant" if method == "post" else ""
    url = f"/api/v1/admin/wallets/{owner.id}{suffix}"
    assert getattr(other_client, method)(url, {"amount": "1", "reason": "r"}).status_code == 403
    assert getattr(anon_client, method)(url, {"amount": "1", "reason": "r"}).status_code == 401
    assert not CreditTransaction.objects.exists()


def test_a_staff_user_sees_only_their_own_wallet_on_users_me(owner):
    staff = make_user("boss@example.com", staff=True)
    wallet_grant(user=owner, amount=Decimal("1"), reason="r")
    body = client_for(staff).get("/api/v1/users/me/transactions").json()
    assert body["results"] == []


def test_staff_without_the_grant_permission_cannot_grant(owner, staff_user):
    response = client_for(staff_user).post(
        f"/api/v1/admin/wallets/{owner.id}/grant", {"amount": "5", "reason": "r"}, format="json"
    )
    assert response.status_code == 403
    assert "billing.grant_credits" in response.json()["error"]["message"]
    assert not CreditTransaction.objects.filter(wallet__user=owner).exists()


def test_an_idempotency_key_reused_with_another_amount_is_422_and_grants_nothing_more(owner, grant_staff_client):
    url = f"/api/v1/admin/wallets/{owner.id}/grant"
    assert grant_staff_client.post(url, {"amount": "5", "reason": "r"}, HTTP_IDEMPOTENCY_KEY="k1").status_code == 201
    response = grant_staff_client.post(url, {"amount": "7", "reason": "r"}, HTTP_IDEMPOTENCY_KEY="k1")
    assert response.status_code == 422
    assert "5.00000000" in response.json()["error"]["message"]
    owner.wallet.refresh_from_db()
    assert owner.wallet.balance == Decimal("5")
