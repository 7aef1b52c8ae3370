"""The console's organization pages through the real admin views (test client, staff)."""

import re
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import ApiKey, User
from billing.limits import window_start
from billing.models import CreditTransaction, SpendCounter, Wallet
from billing.services import wallet_grant, wallet_hold_place
from organizations.models import Invitation, Membership, Organization, Role
from organizations.services import (
    invitation_create,
    member_budget_set,
    organization_api_key_create,
    organization_create,
)
from tests.conftest import make_user
from tests.organizations.conftest import member_add

pytestmark = pytest.mark.django_db


def org_url(organization: Organization, action: str = "change") -> str:
    return f"/admin/organizations/organization/{organization.pk}/{action}/"


def token_from(html: str) -> str:
    return re.search(r'name="token" value="([0-9a-f-]{36})"', html).group(1)


@pytest.fixture
def team(org, owner):  # noqa: ANN001, ANN201
    """Acme with an owner, an admin with a budget and some spend held, a removed member,
    an open invitation and keys."""
    admin = member_add(org, "alice@example.com", Role.ADMIN)
    member_budget_set(member=admin, budget_credits=Decimal("25"), budget_window="month")
    gone = member_add(org, "gone@example.com")
    gone_key, _ = organization_api_key_create(member=gone, name="gone's key")
    Membership.objects.filter(pk=gone.pk).update(removed_at="2026-12-01T00:00:00Z")
    key, _ = organization_api_key_create(member=admin, name="alice's backend", budget_credits=Decimal("40"))
    owner_membership = Membership.objects.get(organization=org, user=owner)
    invitation_create(actor=owner_membership, email="newcomer@example.com", role=Role.MEMBER)
    return {"admin": admin, "gone": gone, "key": key, "gone_key": gone_key}


def test_the_organization_list_shows_members_balance_and_finds_by_member_email(admin_browser, org, team):
    other = Organization.objects.create(
        name="Beta", slug="beta", account=make_user("beta@organizations.parley.invalid", kind=User.Kind.ORGANIZATION)
    )
    response = admin_browser.get("/admin/organizations/organization/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "Acme" in html and "Beta" in html and "100.00000000" in html
    rows = {row.name: row.members_count for row in response.context["cl"].result_list}
    assert rows == {"Acme": 2, "Beta": 0}  # the removed member does not count

    found = admin_browser.get("/admin/organizations/organization/?q=alice%40example.com")
    # A search through the memberships does not multiply the count.
    assert [(row.name, row.members_count) for row in found.context["cl"].result_list] == [("Acme", 2)]
    assert other.name not in found.content.decode().split('id="result_list"')[1]


def test_the_organization_page_shows_members_invitations_keys_and_wallet(admin_browser, org, owner, team):
    wallet_hold_place(user=org.account, amount=Decimal("3"), reference="turn-1")
    # What the admin spent in this month's budget window (billing.limits counts it per member).
    now = timezone.now()
    SpendCounter.objects.create(
        user=org.account, membership=team["admin"], window="month", window_start=window_start("month", now),
        spent=Decimal("4.25"),
    )  # fmt: skip
    response = admin_browser.get(org_url(org))
    assert response.status_code == 200
    html = response.content.decode()
    # Members: email linking to their user page, role, budget, removed.
    assert f'href="/admin/accounts/user/{owner.pk}/change/"' in html
    assert f'href="/admin/accounts/user/{team["admin"].user.pk}/change/"' in html
    assert "25 / month" in html and "gone@example.com" in html and "4.25000000" in html
    # Open invitations.
    assert "newcomer@example.com" in html and 'id="invitations-group"' in html
    # The organization's keys, each linking to its page, with who made it.
    assert f'href="/admin/accounts/apikey/{team["key"].pk}/change/"' in html
    assert "alice&#x27;s backend" in html and team["key"].prefix in html and "40 / lifetime" in html
    # The wallet: balance, held, available, and the links to it and to its grant form.
    assert "100.00000000" in html and "3.00000000" in html and "97.00000000" in html
    wallet = Wallet.objects.get(user=org.account)
    assert f'href="/admin/billing/wallet/{wallet.pk}/change/"' in html
    assert f'href="/admin/billing/wallet/{wallet.pk}/grant/"' in html and ">Grant credits<" in html
    assert "organizations.parley.invalid" in html  # the account, named once on its own line


def test_staff_grant_to_an_organizations_wallet_writes_one_ledger_row(admin_browser, org, staff_user):
    wallet = Wallet.objects.get(user=org.account)
    page = admin_browser.get(f"/admin/billing/wallet/{wallet.pk}/grant/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Grant credits to Organization Acme" in html and "Wallet of Organization Acme" in html
    assert "@organizations.parley.invalid" not in html
    form = {"amount": "12.5", "reason": "pilot credits", "token": token_from(html)}

    response = admin_browser.post(f"/admin/billing/wallet/{wallet.pk}/grant/", form)
    assert response.status_code == 302
    assert admin_browser.post(f"/admin/billing/wallet/{wallet.pk}/grant/", form).status_code == 302  # once

    row = CreditTransaction.objects.get(wallet=wallet, reason="pilot credits")
    assert (row.kind, row.amount, row.actor, row.balance_after) == (
        "grant", Decimal("12.5"), staff_user, Decimal("112.5")
    )  # fmt: skip
    assert CreditTransaction.objects.filter(wallet=wallet).count() == 2  # the fixture's grant and this one
    wallet_page = admin_browser.get(response["Location"]).content.decode()
    assert "Granted 12.50000000 credits to Organization Acme" in wallet_page
    assert "Wallet of Organization Acme" in wallet_page
    assert f'href="/admin/organizations/organization/{org.pk}/change/"' in wallet_page


def test_the_wallet_list_names_organizations_and_filters_by_kind(admin_browser, org, owner):
    html = admin_browser.get("/admin/billing/wallet/?user__kind__exact=organization").content.decode()
    listed = html.split('id="result_list"')[1]
    assert "Organization Acme" in listed and owner.email not in listed
    people = admin_browser.get("/admin/billing/wallet/?user__kind__exact=person").content.decode()
    assert "Organization Acme" not in people.split('id="result_list"')[1]
    ledger = admin_browser.get("/admin/billing/credittransaction/").content.decode()
    assert "Organization Acme" in ledger


def test_remove_member_action_ends_the_membership_and_revokes_their_keys(admin_browser, org, team):
    admin = team["admin"]
    response = admin_browser.post(
        "/admin/organizations/membership/", {"action": "remove_members", "_selected_action": [admin.pk]}, follow=True
    )
    assert response.status_code == 200
    assert "Removed 1 member." in response.content.decode()
    admin.refresh_from_db()
    assert admin.removed_at is not None
    assert ApiKey.objects.get(pk=team["key"].pk).revoked_at is not None


def test_the_last_owner_cannot_be_removed_and_the_console_says_why(admin_browser, org, owner):
    ownership = Membership.objects.get(organization=org, user=owner)
    response = admin_browser.post(
        "/admin/organizations/membership/",
        {"action": "remove_members", "_selected_action": [ownership.pk]},
        follow=True,
    )
    assert "always has an owner" in response.content.decode()
    ownership.refresh_from_db()
    assert ownership.removed_at is None


def test_memberships_cannot_be_added_or_deleted(admin_browser, org, owner):
    ownership = Membership.objects.get(organization=org, user=owner)
    assert admin_browser.get("/admin/organizations/membership/add/").status_code == 403
    assert admin_browser.get(f"/admin/organizations/membership/{ownership.pk}/delete/").status_code == 403
    assert admin_browser.get(f"{org_url(org, 'delete')}").status_code == 403


def test_a_members_role_and_budget_change_through_the_services(admin_browser, org, owner, team):
    admin = team["admin"]
    url = f"/admin/organizations/membership/{admin.pk}/change/"
    assert admin_browser.get(url).status_code == 200
    response = admin_browser.post(url, {"role": "member", "budget_credits": "7.5", "budget_window": "day"})
    assert response.status_code == 302
    admin.refresh_from_db()
    assert (admin.role, admin.budget_credits, admin.budget_window) == ("member", Decimal("7.5"), "day")

    # The only owner keeps the role: the refusal is on the field, nothing changes.
    ownership = Membership.objects.get(organization=org, user=owner)
    response = admin_browser.post(
        f"/admin/organizations/membership/{ownership.pk}/change/", {"role": "admin", "budget_credits": ""}
    )
    assert response.status_code == 200
    assert "always has an owner" in str(response.context["adminform"].form.errors["role"])
    ownership.refresh_from_db()
    assert ownership.role == Role.OWNER


def test_withdrawing_an_invitation_from_the_console(admin_browser, org, team):
    invitation = Invitation.objects.get(email="newcomer@example.com")
    assert admin_browser.get("/admin/organizations/invitation/").status_code == 200
    response = admin_browser.post(
        "/admin/organizations/invitation/", {"action": "withdraw", "_selected_action": [invitation.pk]}, follow=True
    )
    assert "Withdrew 1 invitation." in response.content.decode()
    invitation.refresh_from_db()
    assert invitation.revoked_at is not None
    assert "newcomer@example.com" not in admin_browser.get(org_url(org)).content.decode()


def test_staff_create_an_organization_with_its_first_owner(admin_browser, owner):
    response = admin_browser.post(
        "/admin/organizations/organization/add/",
        {"name": "Gamma Labs", "slug": "", "owner_email": "OWNER@example.com"},
    )
    assert response.status_code == 302
    organization = Organization.objects.get(slug="gamma-labs")
    assert organization.account.is_organization and Wallet.objects.filter(user=organization.account).exists()
    assert Membership.objects.get(organization=organization).user == owner

    taken = admin_browser.post(
        "/admin/organizations/organization/add/", {"name": "Gamma Labs", "slug": "", "owner_email": owner.email}
    )
    assert taken.status_code == 200 and "slug" in taken.context["adminform"].form.errors
    nobody = admin_browser.post(
        "/admin/organizations/organization/add/", {"name": "Delta", "slug": "", "owner_email": "nobody@example.com"}
    )
    assert nobody.status_code == 200 and "owner_email" in nobody.context["adminform"].form.errors
    assert Organization.objects.count() == 1


def test_renaming_an_organization_keeps_its_slug(admin_browser, org):
    response = admin_browser.post(org_url(org), {
        "name": "Acme Corp",
        "memberships-TOTAL_FORMS": "0", "memberships-INITIAL_FORMS": "0",
        "invitations-TOTAL_FORMS": "0", "invitations-INITIAL_FORMS": "0",
    })  # fmt: skip
    assert response.status_code == 302
    org.refresh_from_db()
    assert (org.name, org.slug) == ("Acme Corp", "acme")


def test_user_list_shows_kind_and_an_org_account_links_to_its_organization(admin_browser, org, owner):
    html = admin_browser.get("/admin/accounts/user/?kind__exact=organization").content.decode()
    listed = html.split('id="result_list"')[1]
    assert org.account.email in listed and owner.email not in listed
    page = admin_browser.get(f"/admin/accounts/user/{org.account.pk}/change/").content.decode()
    assert f'href="/admin/organizations/organization/{org.pk}/change/"' in page and "organization Acme" in page
    person = admin_browser.get(f"/admin/accounts/user/{owner.pk}/change/").content.decode()
    assert f'href="/admin/organizations/organization/{org.pk}/change/">Acme</a> (owner)' in person


def test_an_org_keys_list_and_page_name_the_organization_and_member(admin_browser, org, team):
    html = admin_browser.get("/admin/accounts/apikey/?owner=organization").content.decode()
    assert "Acme: alice@example.com" in html
    page = admin_browser.get(f"/admin/accounts/apikey/{team['key'].pk}/change/").content.decode()
    assert f'href="/admin/organizations/organization/{org.pk}/change/">Acme</a>' in page
    assert f'href="/admin/organizations/membership/{team["admin"].pk}/change/">alice@example.com</a>' in page


def test_staff_without_the_grant_permission_get_no_grant_button_and_403(org):
    viewer = make_user("viewer@example.com", staff=True)
    viewer.user_permissions.set(
        Permission.objects.filter(
            codename__in=["view_organization", "view_membership", "view_invitation", "view_wallet"]
        )
    )
    client = Client()
    client.force_login(viewer)
    wallet = Wallet.objects.get(user=org.account)
    page = client.get(org_url(org))
    assert page.status_code == 200
    html = page.content.decode()
    assert "Acme" in html and "grant-credits-link" not in html and f"/billing/wallet/{wallet.pk}/grant/" not in html
    response = client.post(
        f"/admin/billing/wallet/{wallet.pk}/grant/",
        {"amount": "5", "reason": "r", "token": "0b7b3c3e-0c4a-4b9e-9d6f-6a9f0f0e7b11"},
    )
    assert response.status_code == 403
    assert CreditTransaction.objects.filter(wallet=wallet).count() == 1  # the fixture's grant only


def test_the_organization_pages_and_lists_naming_organizations_do_not_query_per_row(admin_browser, org, owner):
    def queries(url: str) -> int:
        with CaptureQueriesContext(connection) as captured:
            assert admin_browser.get(url).status_code == 200
        return len(captured)

    pages = [
        "/admin/organizations/organization/", org_url(org), "/admin/organizations/membership/",
        "/admin/organizations/invitation/", "/admin/accounts/apikey/", "/admin/accounts/user/",
        "/admin/billing/wallet/", "/admin/billing/credittransaction/",
    ]  # fmt: skip
    for url in pages:
        queries(url)  # a process's first page reads the content types once more
    few = [queries(url) for url in pages]
    ownership = Membership.objects.get(organization=org, user=owner)
    for n in range(5):
        team = organization_create(creator=owner, name=f"Team {n}")
        wallet_grant(user=team.account, amount=Decimal("1"), reason="r")
        member = member_add(org, f"person{n}@example.com")
        organization_api_key_create(member=member, name=f"key {n}")
        invitation_create(actor=ownership, email=f"invitee{n}@example.com")
    assert [queries(url) for url in pages] == few
