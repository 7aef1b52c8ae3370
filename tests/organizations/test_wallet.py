"""An organization's wallet through /api/v1/orgs/{org_id}/...: who may see what (any
member the wallet, owners and admins the rest, another organization 404, an
organization's own key 403), the staff's grant (the API and `grant_credits --org`),
reconciliation of organization wallets, and the low-balance notice to its managers."""

from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from accounts.models import all_scopes
from billing.models import CreditTransaction, Wallet
from billing.services import wallet_debit, wallet_grant
from organizations.models import Role
from organizations.services import organization_api_key_create, organization_create
from tests.conftest import client_for, make_user
from tests.organizations.conftest import member_add

pytestmark = pytest.mark.django_db


def url(org, suffix: str) -> str:  # noqa: ANN001
    return f"/api/v1/orgs/{org.pk}/{suffix}"


def balance_of(user) -> Decimal:  # noqa: ANN001
    return Wallet.objects.get(user=user).balance


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


# --- who sees what ---------------------------------------------------------------------


def test_a_member_sees_the_org_wallet_with_the_personal_body(org, owner):
    ada = member_add(org, "ada@example.com")
    wallet_grant(user=ada.user, amount=Decimal("3"), reason="her own")
    client = client_for(ada.user)

    response = client.get(url(org, "wallet"))

    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["balance"], body["available"]) == ("100.00000000", "100.00000000")
    assert Decimal(body["held"]) == 0
    assert body["low_balance"] is False and body["grants"] == []
    assert body["auto_top_up"]["enabled"] is False
    # The same keys as users/me/wallet, which still shows her own wallet.
    personal = client.get("/api/v1/users/me/wallet").json()
    assert set(body) == set(personal) and personal["balance"] == "3.00000000"


def test_transactions_need_an_owner_or_admin_and_the_403_names_the_role(org, owner):
    ada = member_add(org, "ada@example.com")
    bob = member_add(org, "bob@example.com", Role.ADMIN)
    wallet_debit(user=org.account, amount=Decimal("1.5"), reference="turn-1")

    refused = client_for(ada.user).get(url(org, "transactions"))
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "role_required"
    assert "owner or admin role in organization 'Acme'; your role is member" in refused.json()["error"]["message"]

    for manager in (owner, bob.user):
        body = client_for(manager).get(url(org, "transactions") + "?page_size=1").json()
        assert [(row["kind"], row["amount"]) for row in body["results"]] == [("debit", "-1.50000000")]
        assert body["next"]  # cursor pagination, newest first: the grant is on the next page
    rows = client_for(owner).get(url(org, "transactions")).json()["results"]
    assert [row["kind"] for row in rows] == ["debit", "grant"]


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("get", "transactions"),
        ("post", "wallet/top-up"),
        ("get", "top-ups"),
        ("get", "auto-top-up"),
        ("put", "auto-top-up"),
        ("delete", "auto-top-up"),
        ("post", "auto-top-up/card"),
    ],
)
def test_a_member_gets_403_naming_the_role_on_every_managers_endpoint(org, method, suffix):
    ada = member_add(org, "ada@example.com")
    response = getattr(client_for(ada.user, scopes=all_scopes()), method)(url(org, suffix), {}, format="json")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "role_required"


@pytest.mark.parametrize("suffix", ["wallet", "transactions", "wallet/top-up", "top-ups", "auto-top-up"])
def test_another_organization_and_an_unknown_one_are_404(org, owner, other_user, suffix):
    other_org = organization_create(creator=other_user, name="Globex")
    client = client_for(owner, scopes=all_scopes())
    method = client.post if suffix == "wallet/top-up" else client.get

    assert method(url(other_org, suffix), {}, format="json").status_code == 404
    assert method(f"/api/v1/orgs/999999/{suffix}", {}, format="json").status_code == 404
    assert method(f"/api/v1/orgs/{10**30}/{suffix}", {}, format="json").status_code == 404
    # A removed member is no longer one.
    assert client_for(other_user).get(url(org, "wallet")).status_code == 404


def test_a_removed_member_is_404(org, owner):
    ada = member_add(org, "ada@example.com")
    ada.removed_at = ada.created_at
    ada.save(update_fields=["removed_at"])
    assert client_for(ada.user).get(url(org, "wallet")).status_code == 404


def test_an_org_key_is_refused_on_the_org_endpoints(org, owner, anon_client):
    membership = org.memberships.get(user=owner)
    _, raw = organization_api_key_create(member=membership, name="ci", scopes=all_scopes())
    anon_client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")

    response = anon_client.get(url(org, "wallet"))

    assert response.status_code == 403
    assert "take a person's API key" in response.json()["error"]["message"]
    anon_client.credentials()
    assert anon_client.get(url(org, "wallet")).status_code == 401


# --- staff ------------------------------------------------------------------------------


def test_staff_grant_to_an_org_writes_one_ledger_row_on_its_wallet(org, owner, grant_staff, grant_staff_client):
    response = grant_staff_client.post(
        f"/api/v1/admin/orgs/{org.pk}/grant", {"amount": "25.5", "reason": "pilot"}, HTTP_IDEMPOTENCY_KEY="pilot-1"
    )
    again = grant_staff_client.post(
        f"/api/v1/admin/orgs/{org.pk}/grant", {"amount": "25.5", "reason": "pilot"}, HTTP_IDEMPOTENCY_KEY="pilot-1"
    )

    assert response.status_code == again.status_code == 201, response.json()
    body = response.json()
    assert again.json()["transaction"]["id"] == body["transaction"]["id"]
    assert (body["transaction"]["kind"], body["transaction"]["amount"]) == ("grant", "25.50000000")
    assert body["transaction"]["actor"] == grant_staff.pk
    assert body["wallet"]["balance"] == "125.50000000"
    row = CreditTransaction.objects.get(reason="pilot")
    assert row.wallet.user_id == org.account_id
    assert balance_of(org.account) == Decimal("125.5")
    assert not CreditTransaction.objects.filter(wallet__user=owner).exists()

    shown = grant_staff_client.get(f"/api/v1/admin/orgs/{org.pk}/wallet").json()
    assert (shown["user_id"], shown["email"], shown["balance"]) == (
        org.account_id, "acme@organizations.parley.invalid", "125.50000000",
    )  # fmt: skip
    assert [t["reason"] for t in shown["transactions"]] == ["pilot", "test credits"]


def test_a_reused_grant_key_with_another_amount_is_422(org, grant_staff_client):
    grant = f"/api/v1/admin/orgs/{org.pk}/grant"
    assert grant_staff_client.post(grant, {"amount": "5", "reason": "r"}, HTTP_IDEMPOTENCY_KEY="k").status_code == 201
    assert grant_staff_client.post(grant, {"amount": "7", "reason": "r"}, HTTP_IDEMPOTENCY_KEY="k").status_code == 422
    bad = grant_staff_client.post(grant, {"amount": "0", "reason": "r"})
    assert bad.status_code == 400 and list(bad.json()["error"]["fields"]) == ["amount"]
    assert balance_of(org.account) == Decimal("105")


@pytest.mark.parametrize("method", ["get", "post"])
def test_the_staff_org_endpoints_are_staff_only_and_404_for_an_unknown_org(
    org, owner, staff_user, grant_staff_client, method
):
    suffix = "grant" if method == "post" else "wallet"
    body = {"amount": "1", "reason": "r"}
    owners = getattr(client_for(owner), method)(f"/api/v1/admin/orgs/{org.pk}/{suffix}", body)
    assert owners.status_code == 403  # an owner of the organization is not staff
    bare_staff = getattr(client_for(staff_user), method)(f"/api/v1/admin/orgs/{org.pk}/{suffix}", body)
    assert bare_staff.status_code == 403 and "billing." in bare_staff.json()["error"]["message"]
    for org_id in (999999, 10**30):
        assert getattr(grant_staff_client, method)(f"/api/v1/admin/orgs/{org_id}/{suffix}", body).status_code == 404
    assert balance_of(org.account) == Decimal("100")


def test_grant_credits_org_writes_one_row_on_the_org_wallet(org, owner, grant_staff):
    for _ in range(2):
        output = run(
            "grant_credits", "--org", "acme", "12.5", "--reason", "pilot", "--actor", grant_staff.email,
            "--reference", "pilot-2026",
        )  # fmt: skip
    row = CreditTransaction.objects.get(reason="pilot")
    assert (row.wallet.user_id, row.amount, row.actor) == (org.account_id, Decimal("12.5"), grant_staff)
    assert balance_of(org.account) == Decimal("112.5")
    assert "to organization Acme (acme)" in output and "balance 112.50000000" in output
    assert not CreditTransaction.objects.filter(wallet__user=owner).exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--org", "nope", "5", "--reason", "r"], "No organization with slug nope"),
        (["owner@example.com", "5", "--org", "acme", "--reason", "r"], "not both"),
        (["5", "--reason", "r"], "either"),
        (["acme@organizations.parley.invalid", "5", "--reason", "r"], "use --org acme"),
        (["--org", "acme", "0", "--reason", "r"], "amount"),
        (["--org", "acme", "abc", "--reason", "r"], "amount"),
        (["--org", "acme", "5", "--reason", " "], "reason"),
        (["--org", "acme", "5", "--reason", "r", "--actor", "owner@example.com"], "No staff user"),
    ],
)
def test_grant_credits_org_keeps_the_rules(org, owner, args, message):
    with pytest.raises(CommandError, match=message):
        run("grant_credits", *args)
    assert balance_of(org.account) == Decimal("100")
    assert CreditTransaction.objects.count() == 1  # the fixture's grant


# --- reconciliation and notices ---------------------------------------------------------


def test_reconcile_checks_org_wallets_and_fixes_a_drifted_one_like_a_persons(org, owner):
    wallet_grant(user=owner, amount=Decimal("10"), reason="r")
    wallet_debit(user=org.account, amount=Decimal("2"), reference="turn-1")
    assert "2 wallets checked, no drift." in run("reconcile_wallets")
    with connection.cursor() as cursor:
        cursor.execute("UPDATE billing_wallet SET balance = balance + 2.5 WHERE user_id = %s", [org.account_id])

    out = StringIO()
    with pytest.raises(CommandError, match="1 of"):
        call_command("reconcile_wallets", stdout=out)
    assert f"organization Acme (account id {org.account_id}" in out.getvalue()
    assert "owner@example.com" not in out.getvalue()

    fixed = run("reconcile_wallets", "--fix")
    assert "adjustment +2.50000000" in fixed and "no drift left" in fixed
    adjustment = CreditTransaction.objects.get(kind="adjustment")
    assert (adjustment.wallet.user_id, adjustment.amount) == (org.account_id, Decimal("2.5"))
    assert balance_of(org.account) == Decimal("100.5") and balance_of(owner) == Decimal("10")
    assert "2 wallets checked, no drift." in run("reconcile_wallets")


def test_an_org_wallet_crossing_the_low_balance_threshold_emails_its_managers(
    org, owner, settings, mailoutbox, django_capture_on_commit_callbacks
):
    settings.LOW_BALANCE_THRESHOLD = Decimal("5")
    member_add(org, "admin@example.com", Role.ADMIN)
    member_add(org, "member@example.com")
    gone = member_add(org, "gone@example.com", Role.ADMIN)
    gone.removed_at = gone.created_at
    gone.save(update_fields=["removed_at"])
    make_user("bystander@example.com")

    with django_capture_on_commit_callbacks(execute=True):
        wallet_debit(user=org.account, amount=Decimal("96"), reference="turn-1")  # 100 -> 4

    [email] = mailoutbox
    assert sorted(email.to) == ["admin@example.com", "owner@example.com"]
    assert "4.00000000" in email.body
    assert not any(address.endswith(".invalid") for address in email.to)
