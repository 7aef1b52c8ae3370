"""Usage by organization and member: the rollups equal the raw calls (and a plain-Python
computation) for the `organization` and `member` filters and the by_organization /
by_member breakdowns; the CSV, the staff API, the console page and usage_report
carry them."""

import csv
import io
import random
from datetime import date, timedelta
from itertools import product

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from accounts.models import EndUser
from organizations.models import Membership, Role
from organizations.services import member_remove, organization_api_key_create, organization_create
from reporting.export import usage_summary_rows
from reporting.selectors import usage_summary, usage_summary_from_calls
from tests.chat.factories import ChatSessionFactory
from tests.reporting.conftest import SPAN_SECONDS, START, Recorded
from tests.reporting.factories import CallSpec, record_turn
from tests.reporting.test_selectors import RANGES, expected_summary

pytestmark = pytest.mark.django_db

SUMMARY = "/api/v1/admin/usage/summary"
PAGE = "/admin/reporting/usage/"


@pytest.fixture
def org_usage(usage_data) -> dict:
    """usage_data's personal calls, and ~60 turns through the keys of two organizations:
    Acme (user0 owner, user1 member, later removed) and Globex (user2 owner, user0
    admin), with an end user "ada" on an Acme key (an external id user0's and user1's
    personal keys have too)."""
    rng = random.Random(31)
    users, recorded = usage_data["users"], list(usage_data["recorded"])
    acme = organization_create(creator=users[0], name="Acme")
    globex = organization_create(creator=users[2], name="Globex")
    members = {
        "acme_owner": acme.memberships.get(user=users[0]),
        "acme_member": Membership.objects.create(organization=acme, user=users[1], role=Role.MEMBER),
        "globex_owner": globex.memberships.get(user=users[2]),
        "globex_admin": Membership.objects.create(organization=globex, user=users[0], role=Role.ADMIN),
    }
    keys = {name: organization_api_key_create(member=m, name=f"{name} key")[0] for name, m in members.items()}
    ada = EndUser.objects.create(api_key=keys["acme_member"], external_id="ada")
    sessions = {acme.pk: ChatSessionFactory(user=acme.account), globex.pk: ChatSessionFactory(user=globex.account)}
    aliases = list(usage_data["prices"])
    for _ in range(60):
        name = rng.choice(list(members))
        member = members[name]
        organization = member.organization
        end_user = ada if name == "acme_member" and rng.random() < 0.5 else None
        purpose = rng.choice(["", "title"])
        first = START + timedelta(seconds=rng.randrange(SPAN_SECONDS))
        specs = [
            CallSpec(rng.choice(aliases), first + timedelta(seconds=5 * n), rng.randint(0, 5000), rng.randint(0, 900),
                     cached_input_tokens=rng.randint(0, 100), reasoning_tokens=rng.randint(0, 50))
            for n in range(rng.randint(1, 3))
        ]  # fmt: skip
        calls = record_turn(
            session=sessions[organization.pk], calls=specs, end_user=end_user, purpose=purpose, membership=member
        )
        for spec, call in zip(specs, calls, strict=True):
            recorded.append(
                Recorded(
                    organization.account_id, organization.account.email, spec.alias, spec.at, spec.input_tokens,
                    spec.output_tokens, call.credits_burned, spec.cached_input_tokens, spec.cache_write_tokens,
                    spec.reasoning_tokens, end_user.pk if end_user else None, end_user.external_id if end_user else None,
                    end_user.api_key.name if end_user else None, purpose, member.pk, member.user.email,
                    organization.pk, organization.name, organization.slug,
                )
            )  # fmt: skip
    # A removed member's usage stays theirs.
    member_remove(actor=members["acme_owner"], member=members["acme_member"])
    return {**usage_data, "recorded": recorded, "acme": acme, "globex": globex, "members": members, "ada": ada}


def test_rollups_equal_raw_calls_for_organization_and_member_filters(org_usage):
    users, recorded, acme, globex = org_usage["users"], org_usage["recorded"], org_usage["acme"], org_usage["globex"]
    members = org_usage["members"]
    assert {call.membership_id for call in recorded} == {None, *(m.pk for m in members.values())}
    checked = nonempty = 0
    for organization_id, member_id, user_id, (start, end) in product(
        [None, acme.pk, globex.pk, 10**9],
        [None, 0, members["acme_owner"].pk, members["acme_member"].pk, members["globex_admin"].pk],
        [None, users[0].pk, acme.account_id],
        RANGES[:3],
    ):
        filters = {
            "user_id": user_id, "model_alias": None, "from_date": start, "to_date": end, "bucket": "week",
            "organization_id": organization_id, "member_id": member_id,
        }  # fmt: skip
        from_rollups = usage_summary(**filters)
        assert from_rollups == usage_summary_from_calls(**filters), filters
        assert from_rollups == expected_summary(recorded, **filters), filters
        checked += 1
        nonempty += from_rollups["totals"]["calls"] > 0
    assert checked == 4 * 5 * 3 * 3 and nonempty > 30


def test_rollups_equal_raw_calls_for_end_users_and_purposes_within_an_organization(org_usage):
    recorded, acme, ada = org_usage["recorded"], org_usage["acme"], org_usage["ada"]
    for organization_id, (end_user_id, end_user), purpose in product(
        [None, acme.pk], [(None, None), (ada.pk, None), (0, None), (None, "ada")], [None, "title"]
    ):
        filters = {
            "user_id": None, "model_alias": None, "from_date": None, "to_date": None, "bucket": "month",
            "organization_id": organization_id, "end_user_id": end_user_id, "end_user": end_user, "purpose": purpose,
        }  # fmt: skip
        from_rollups = usage_summary(**filters)
        assert from_rollups == usage_summary_from_calls(**filters), filters
        assert from_rollups == expected_summary(recorded, **filters), filters
    # By name within Acme: only the end user of Acme's key, not the personal keys' "ada"s.
    named = usage_summary(organization_id=acme.pk, end_user="ada")
    assert [row["end_user_id"] for row in named["by_end_user"]] == [ada.pk]


def test_the_breakdowns_name_organizations_and_members_and_sum_to_the_totals(org_usage):
    acme, globex, members = org_usage["acme"], org_usage["globex"], org_usage["members"]
    summary = usage_summary()
    by_organization = summary["by_organization"]
    assert [(r["organization_id"], r["name"], r["slug"]) for r in by_organization] == [
        (None, None, None), (acme.pk, "Acme", "acme"), (globex.pk, "Globex", "globex"),
    ]  # fmt: skip
    by_member = {r["membership_id"]: r for r in summary["by_member"]}
    removed = by_member[members["acme_member"].pk]
    assert (removed["email"], removed["organization_id"], removed["organization_name"]) == (
        "user1@example.com", acme.pk, "Acme",
    )  # fmt: skip
    assert by_member[None]["email"] is None and by_member[None]["organization_name"] is None
    for rows in (summary["by_organization"], summary["by_member"]):
        assert sum(row["calls"] for row in rows) == summary["totals"]["calls"]
        assert sum(row["credits"] for row in rows) == summary["totals"]["credits"]
    # Personal usage: member 0 is exactly the null organization's row.
    personal = usage_summary(member_id=0)
    assert personal["totals"] == {k: v for k, v in by_organization[0].items() if k in personal["totals"]}


def test_the_csv_has_organization_and_member_sections(org_usage, staff_client):
    acme, members = org_usage["acme"], org_usage["members"]
    response = staff_client.get(SUMMARY, {"format": "csv", "organization": acme.pk})
    assert response.status_code == 200
    assert response["Content-Disposition"] == f'attachment; filename="usage_start_now_day_org{acme.pk}.csv"'
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows == usage_summary_rows(usage_summary_from_calls(organization_id=acme.pk))
    assert [row[:3] for row in rows if row[0] == "organization"] == [["organization", str(acme.pk), "Acme"]]
    assert [row[:3] for row in rows if row[0] == "member"] == [
        ["member", str(members["acme_owner"].pk), "user0@example.com"],
        ["member", str(members["acme_member"].pk), "user1@example.com"],
    ]
    everyone = list(csv.reader(io.StringIO(staff_client.get(SUMMARY, {"format": "csv"}).content.decode())))
    assert [row[:3] for row in everyone if row[0] == "organization"][0] == ["organization", "", ""]  # personal


def test_the_staff_api_filters_by_organization_and_member(org_usage, staff_client):
    acme, members = org_usage["acme"], org_usage["members"]
    member = members["acme_member"]
    body = staff_client.get(SUMMARY, {"organization": acme.pk, "member": member.pk}).json()
    expected = usage_summary_from_calls(organization_id=acme.pk, member_id=member.pk)
    assert body["totals"]["calls"] == expected["totals"]["calls"] > 0
    assert (body["organization_id"], body["member_id"]) == (acme.pk, member.pk)
    assert body["by_member"][0]["email"] == "user1@example.com"
    assert body["by_organization"] == [{"organization_id": acme.pk, "name": "Acme", "slug": "acme", **body["totals"]}]
    personal = staff_client.get(SUMMARY, {"member": 0}).json()
    assert personal["by_organization"] == [{"organization_id": None, "name": None, "slug": None, **personal["totals"]}]
    for params, field in [({"organization": 10**9}, "organization"), ({"member": 10**9}, "member"),
                          ({"member": -1}, "member"), ({"organization": "acme"}, "organization")]:  # fmt: skip
        response = staff_client.get(SUMMARY, params)
        assert response.status_code == 400, params
        assert list(response.json()["error"]["fields"]) == [field]


def test_the_console_page_filters_and_breaks_down_by_organization_and_member(org_usage, admin_browser):
    acme, members = org_usage["acme"], org_usage["members"]
    page = admin_browser.get(PAGE).content.decode()
    assert 'id="usage-by-organization"' in page and 'id="usage-by-member"' in page
    assert '?organization=acme">Acme</a> <span class="quiet">(acme)</span>' in page
    assert "personal accounts" in page and '?member=0">no member (personal)</a>' in page
    owner_id = members["acme_owner"].pk
    assert f'?member={owner_id}">user0@example.com</a> <span class="quiet">(Acme)</span>' in page

    only = admin_browser.get(PAGE, {"organization": "acme", "member": owner_id})
    assert only.status_code == 200
    assert only.context["summary"] == usage_summary(organization_id=acme.pk, member_id=owner_id)
    assert 'name="organization" value="acme"' in only.content.decode()
    assert '<span id="usage-organization">Acme</span>' in only.content.decode()
    assert '<span id="usage-member">user0@example.com in Acme</span>' in only.content.decode()
    personal = admin_browser.get(PAGE, {"member": 0}).content.decode()
    assert '<span id="usage-member">none (personal usage)</span>' in personal
    by_id = admin_browser.get(PAGE, {"organization": str(acme.pk), "format": "csv"}).content.decode()
    assert list(csv.reader(io.StringIO(by_id))) == usage_summary_rows(usage_summary(organization_id=acme.pk))

    for params, message in [({"organization": "nope"}, "No organization with this slug."),
                            ({"organization": "99999"}, "No organization with this id."),
                            ({"member": "99999"}, "No member with this id.")]:  # fmt: skip
        bad = admin_browser.get(PAGE, params).content.decode()
        assert message in bad and 'id="usage-by-member"' not in bad


def test_usage_report_filters_and_breaks_down_by_organization_and_member(org_usage):
    acme, members = org_usage["acme"], org_usage["members"]
    out = io.StringIO()
    member_id = members["acme_owner"].pk
    call_command(
        "usage_report", "--from", "2024-01-01", "--to", "2026-01-01", "--organization", "acme",
        "--member", str(member_id), "--csv", stdout=out,
    )  # fmt: skip
    expected = usage_summary(
        organization_id=acme.pk, member_id=member_id, from_date=date(2024, 1, 1), to_date=date(2026, 1, 1)
    )
    assert list(csv.reader(io.StringIO(out.getvalue()))) == usage_summary_rows(expected)
    tables = io.StringIO()
    call_command("usage_report", "--from", "2024-01-01", "--to", "2026-01-01", stdout=tables)
    assert "By organization (none: personal)" in tables.getvalue() and "By member (none: personal)" in tables.getvalue()
    assert "user1@example.com" in tables.getvalue()
    for args, message in [(["--organization", "nope"], "no organization 'nope'"), (["--member", "99999"], "no member")]:
        with pytest.raises(CommandError, match=message):
            call_command("usage_report", "--from", "2025-01-01", "--to", "2025-01-02", *args)
