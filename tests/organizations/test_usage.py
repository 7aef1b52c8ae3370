"""GET /api/v1/orgs/{org_id}/usage: owners and admins see the organization's usage and
may filter it by member; a member sees only their own turns through its keys; a
non-member gets 404 and an organization's key 403. users/me/usage stays personal."""

import csv
import io
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from rest_framework.test import APIClient

from organizations.models import Role
from organizations.services import member_remove, organization_api_key_create, organization_create
from reporting.selectors import usage_summary
from tests.billing.factories import ModelPriceFactory
from tests.chat.factories import ChatSessionFactory
from tests.conftest import client_for
from tests.organizations.conftest import member_add
from tests.reporting.factories import CallSpec, record_turn

pytestmark = pytest.mark.django_db

WHEN = datetime(2025, 1, 2, 12, tzinfo=UTC)


def usage_url(organization_id: int) -> str:
    return f"/api/v1/orgs/{organization_id}/usage"


@pytest.fixture
def usage(org, owner):  # noqa: ANN001, ANN201
    """In Acme: one turn by `owner` (the owner), two by ada (a member), one by bob (an
    admin); one personal turn of ada's."""
    ModelPriceFactory(alias="fast", input_credits_per_mtok=Decimal("150"), output_credits_per_mtok=Decimal("600"))
    members = {"owner": org.memberships.get(user=owner), "ada": member_add(org, "ada@example.com"),
               "bob": member_add(org, "bob@example.com", Role.ADMIN)}  # fmt: skip
    session = ChatSessionFactory(user=org.account)
    for name, tokens in [("owner", 1000), ("ada", 200), ("ada", 300), ("bob", 4000)]:
        record_turn(session=session, calls=[CallSpec("fast", WHEN, tokens, 10)], membership=members[name])
    record_turn(session=ChatSessionFactory(user=members["ada"].user), calls=[CallSpec("fast", WHEN, 7, 1)])
    return members


def test_a_member_sees_only_their_own_usage_in_the_organization(org, usage):
    ada = usage["ada"]
    client = client_for(ada.user)
    body = client.get(usage_url(org.pk)).json()
    assert body["totals"]["calls"] == 2 and body["totals"]["input_tokens"] == 500
    assert [row["membership_id"] for row in body["by_member"]] == [ada.pk]
    assert (body["organization_id"], body["member_id"]) == (org.pk, ada.pk)
    # Naming themselves is the same; naming anyone else needs a manager's role.
    assert client.get(usage_url(org.pk), {"member": ada.pk}).json() == body
    refused = client.get(usage_url(org.pk), {"member": usage["bob"].pk})
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "role_required"
    assert "owner or admin" in refused.json()["error"]["message"]
    unknown = client.get(usage_url(org.pk), {"member": 10**9})
    assert unknown.status_code == 400 and list(unknown.json()["error"]["fields"]) == ["member"]
    # The CSV is the same selection.
    rows = list(csv.reader(io.StringIO(client.get(usage_url(org.pk), {"format": "csv"}).content.decode())))
    assert rows[1][:4] == ["total", "", "", "2"]
    assert [row[1:3] for row in rows if row[0] == "member"] == [[str(ada.pk), "ada@example.com"]]


@pytest.mark.parametrize("manager", ["owner", "bob"])
def test_owners_and_admins_see_everything_and_filter_by_member(org, usage, manager):
    client = client_for(usage[manager].user)
    body = client.get(usage_url(org.pk), {"from_date": "2025-01-01", "to_date": "2025-01-31"}).json()
    assert body["totals"]["calls"] == 4 and body["totals"]["input_tokens"] == 5500
    assert {row["membership_id"]: row["calls"] for row in body["by_member"]} == {
        usage["owner"].pk: 1, usage["ada"].pk: 2, usage["bob"].pk: 1,
    }  # fmt: skip
    assert body["by_organization"][0]["slug"] == "acme"
    only_ada = client.get(usage_url(org.pk), {"member": usage["ada"].pk}).json()
    assert only_ada["totals"]["input_tokens"] == 500
    assert only_ada["totals"]["calls"] == usage_summary(organization_id=org.pk, member_id=usage["ada"].pk)["totals"][
        "calls"
    ]
    csv_response = client.get(usage_url(org.pk), {"format": "csv", "member": usage["ada"].pk})
    assert csv_response["Content-Disposition"].endswith(f'_org{org.pk}_member{usage["ada"].pk}.csv"')


def test_a_removed_member_of_the_organization_still_counts_for_managers(org, usage):
    member_remove(actor=usage["owner"], member=usage["ada"])
    assert client_for(usage["ada"].user).get(usage_url(org.pk)).status_code == 404
    body = client_for(usage["owner"].user).get(usage_url(org.pk), {"member": usage["ada"].pk}).json()
    assert body["totals"]["calls"] == 2 and body["by_member"][0]["email"] == "ada@example.com"


def test_non_members_get_404_and_an_organizations_key_403(org, usage, other_user):
    assert client_for(other_user).get(usage_url(org.pk)).status_code == 404
    elsewhere = organization_create(creator=other_user, name="Globex")
    ada_client = client_for(usage["ada"].user)
    assert ada_client.get(usage_url(elsewhere.pk)).status_code == 404
    assert ada_client.get(usage_url(10**9)).status_code == 404
    assert APIClient().get(usage_url(org.pk)).status_code == 401

    _, raw = organization_api_key_create(member=usage["owner"], name="ci")
    org_key = APIClient()
    org_key.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    refused = org_key.get(usage_url(org.pk))
    assert refused.status_code == 403 and "personal key" in refused.json()["error"]["message"]


def test_users_me_usage_stays_personal(org, usage):
    ada = usage["ada"]
    mine = client_for(ada.user).get("/api/v1/users/me/usage").json()
    assert mine["totals"]["calls"] == 1 and mine["totals"]["input_tokens"] == 7
    assert mine["by_organization"] == [{"organization_id": None, "name": None, "slug": None, **mine["totals"]}]
    for name in ("organization", "member"):
        response = client_for(ada.user).get("/api/v1/users/me/usage", {name: org.pk})
        assert response.status_code == 400 and list(response.json()["error"]["fields"]) == [name]


def test_an_organizations_key_reads_only_its_members_turns_on_users_me_usage(org, usage):
    _, raw = organization_api_key_create(member=usage["ada"], name="laptop")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    body = client.get("/api/v1/users/me/usage").json()
    assert body["totals"]["calls"] == 2 and [row["membership_id"] for row in body["by_member"]] == [usage["ada"].pk]
