"""The staff API asks for the same Django permissions as the staff console pages
that show the same data; is_staff alone reads nothing. The "Parley staff" group
holds them all, and `issue_api_key --staff` puts the user in it."""

import importlib
from io import StringIO
from types import SimpleNamespace

import pytest
from django.apps import apps
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.db import connection

from accounts.models import User
from accounts.permissions import STAFF_GROUP, STAFF_GROUP_PERMISSIONS
from billing.models import CreditTransaction
from tests.conftest import client_for, staff_with

pytestmark = pytest.mark.django_db

WALLET, SUMMARY = "/api/v1/admin/wallets/{}", "/api/v1/admin/usage/summary"
# Each staff endpoint and every permission it needs (docs/usage-and-console.md, "Staff API permissions").
ENDPOINTS = [
    ("get", WALLET, ("billing.view_wallet", "billing.view_credittransaction")),
    ("post", WALLET + "/grant", ("billing.view_wallet", "billing.grant_credits")),
    ("get", SUMMARY, ("reporting.view_usage",)),
]


def call(client, method: str, url: str, user_id: int):  # noqa: ANN001, ANN201
    return getattr(client, method)(url.format(user_id), {"amount": "1", "reason": "r"} if method == "post" else None)


def group_permissions(group: Group) -> set[str]:
    return {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.select_related("content_type")}


@pytest.mark.parametrize(("method", "url", "needed"), ENDPOINTS)
def test_staff_without_the_permissions_is_403_naming_them_and_sees_nothing(owner, staff_user, method, url, needed):
    response = call(client_for(staff_user), method, url, owner.pk)

    assert response.status_code == 403
    body = response.json()
    assert body["error"]["code"] == "permission_denied"
    assert all(name in body["error"]["message"] for name in needed)
    assert STAFF_GROUP in body["error"]["message"]
    assert owner.email not in response.content.decode()
    assert not CreditTransaction.objects.exists()


@pytest.mark.parametrize(("method", "url", "needed"), ENDPOINTS)
def test_each_permission_the_endpoint_names_is_required(owner, method, url, needed):
    for left_out in needed:
        partial = staff_with(*[name for name in needed if name != left_out])
        response = call(client_for(partial), method, url, owner.pk)
        assert response.status_code == 403, (left_out, response.content)
        assert left_out in response.json()["error"]["message"]
    assert call(client_for(staff_with(*needed)), method, url, owner.pk).status_code in (200, 201)


@pytest.mark.parametrize(("method", "url", "needed"), ENDPOINTS)
def test_permissions_without_is_staff_are_not_enough(owner, method, url, needed):
    user = staff_with(*needed)
    user.is_staff = False
    user.save(update_fields=["is_staff"])
    assert call(client_for(user), method, url, owner.pk).status_code == 403


def test_the_migration_makes_the_group_with_exactly_the_staff_api_permissions():
    migration = importlib.import_module("accounts.migrations.0002_parley_staff_group")
    assert set(migration.PERMISSIONS) == set(STAFF_GROUP_PERMISSIONS)
    assert migration.STAFF_GROUP == STAFF_GROUP
    assert {name for _, _, needed in ENDPOINTS for name in needed} == set(STAFF_GROUP_PERMISSIONS)

    editor = SimpleNamespace(connection=connection)  # all the migration reads of it
    migration.create_staff_group(apps, editor)
    migration.create_staff_group(apps, editor)  # safe to run again

    assert group_permissions(Group.objects.get(name=STAFF_GROUP)) == set(STAFF_GROUP_PERMISSIONS)


def test_issue_api_key_staff_adds_the_user_to_the_group_and_says_so(owner):
    out, err = StringIO(), StringIO()
    call_command("issue_api_key", "ops@example.com", "--create-user", "--staff", stdout=out, stderr=err)

    user = User.objects.get(email="ops@example.com")
    assert user.is_staff and list(user.groups.values_list("name", flat=True)) == [STAFF_GROUP]
    assert STAFF_GROUP in err.getvalue() and "billing.grant_credits" in err.getvalue()
    key = out.getvalue().strip()
    assert key.startswith("prl_") and "\n" not in key  # stdout is the key alone
    client = client_for(user)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    for method, url, _ in ENDPOINTS:
        assert call(client, method, url, owner.pk).status_code in (200, 201), url
