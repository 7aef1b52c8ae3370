"""The staff usage page in the Django admin, through Django's real admin views."""

import csv
import io
import re
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from reporting.export import usage_summary_rows
from reporting.selectors import usage_summary_from_calls
from tests.billing.factories import ModelPriceFactory
from tests.chat.factories import ChatSessionFactory
from tests.conftest import make_user
from tests.reporting.factories import CallSpec, record_turn

pytestmark = pytest.mark.django_db

PAGE = "/admin/reporting/usage/"


def at(month: int, day: int, hour: int = 12) -> datetime:
    return datetime(2025, month, day, hour, tzinfo=UTC)


@pytest.fixture
def calls(owner, other_user):  # noqa: ANN001, ANN201
    ModelPriceFactory(alias="fast", input_credits_per_mtok=Decimal("150"), output_credits_per_mtok=Decimal("600"))
    ModelPriceFactory(alias="smart", input_credits_per_mtok=Decimal("3000"), output_credits_per_mtok=Decimal("15000"))
    mine, theirs = ChatSessionFactory(user=owner), ChatSessionFactory(user=other_user)
    # No class prices: the token classes do not change the credits.
    record_turn(
        session=mine,
        calls=[
            CallSpec("fast", at(1, 1), 1000, 200, cached_input_tokens=700, cache_write_tokens=50, reasoning_tokens=80)
        ],
    )  # 0.2700
    record_turn(session=mine, calls=[CallSpec("smart", at(1, 4), 2000, 100, cache_write_tokens=2000)])  # 7.5000
    record_turn(session=theirs, calls=[CallSpec("fast", at(1, 4), 1, 0)])  # 0.0002


def figures(
    calls: str, tokens_in: str, cached: str, written: str, tokens_out: str, reasoning: str, credits: str
) -> dict:
    return {
        "calls": calls, "input_tokens": tokens_in, "cached_input_tokens": cached, "cache_write_tokens": written,
        "output_tokens": tokens_out, "reasoning_tokens": reasoning, "credits": credits,
    }  # fmt: skip


def totals_cells(html: str) -> dict[str, str]:
    table = html.split('id="usage-totals"', 1)[1].split("</table>", 1)[0]
    return dict(re.findall(r'data-figure="(\w+)">([^<]*)<', table))


def row_cells(table: str) -> list[list[str]]:
    """The text of each body row's cells (links and spans reduced to their text)."""
    body = table.split("<tbody>", 1)[1]
    return [
        [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row)]
        for row in re.findall(r"<tr>(.*?)</tr>", body, flags=re.S)
    ]


def test_the_page_shows_totals_breakdowns_and_a_chart(console, owner, other_user, calls):
    response = console.get(PAGE, {"from_date": "2025-01-01", "to_date": "2025-01-31"})
    assert response.status_code == 200
    html = response.content.decode()
    assert totals_cells(html) == figures("3", "3001", "700", "2050", "300", "80", "7.7702")
    by_model = html.split('id="usage-by-model"', 1)[1].split("</table>", 1)[0]
    assert "fast" in by_model and "0.2702" in by_model and "7.5000" in by_model
    # Each breakdown row shows every figure, in the CSV's order.
    assert row_cells(by_model) == [
        ["fast", "2", "1001", "700", "50", "200", "80", "0.2702"],
        ["smart", "1", "2000", "0", "2000", "100", "0", "7.5000"],
    ]
    headers = re.findall(r"<th[^>]*>([^<]*)</th>", by_model)
    assert headers == [
        "Model alias", "Calls", "Input tokens", "Cached input", "Cache writes", "Output tokens", "Reasoning", "Credits",
    ]  # fmt: skip
    assert "part of the input tokens, reasoning is part of the output tokens" in html
    by_user = html.split('id="usage-by-user"', 1)[1].split("</table>", 1)[0]
    assert owner.email in by_user and other_user.email in by_user and "7.7700" in by_user
    # One bar per day from the first to the last day with usage; the empty days are drawn empty.
    svg = html.split('<svg id="usage-chart"', 1)[1].split("</svg>", 1)[0]
    bars = re.findall(r'<rect class="bar"[^>]*data-bucket="([\d-]+)" data-credits="([\d.]+)"', svg)
    assert bars == [
        ("2025-01-01", "0.2700"),
        ("2025-01-02", "0.0000"),
        ("2025-01-03", "0.0000"),
        ("2025-01-04", "7.5002"),
    ]
    heights = [float(h) for h in re.findall(r'<rect class="bar"[^>]* height="([\d.]+)"', svg)]
    assert heights[3] == max(heights) and heights[1] == heights[2] == 0
    assert "<script" not in html.split('id="content-main"', 1)[1]  # no JavaScript for the chart
    assert 'href="?from_date=2025-01-01&amp;to_date=2025-01-31&amp;format=csv"' in html


def test_the_user_id_link_from_the_wallet_page_filters_one_user(console, owner, calls):
    html = console.get(PAGE, {"user_id": owner.pk}).content.decode()
    assert f'User: <a href="/admin/accounts/user/{owner.pk}/change/">{owner.email}</a>' in html
    assert totals_cells(html) == figures("2", "3000", "700", "2050", "300", "80", "7.7700")
    assert "other@example.com" not in html


def test_filters_by_user_email_case_insensitively(console, owner, calls):
    html = console.get(PAGE, {"user": owner.email.upper()}).content.decode()
    assert f">{owner.email}</a>" in html.split('class="usage-scope"', 1)[1]
    assert totals_cells(html) == figures("2", "3000", "700", "2050", "300", "80", "7.7700")
    # The by-user rows link to the page narrowed by email.
    html = console.get(PAGE).content.decode()
    by_user = html.split('id="usage-by-user"', 1)[1].split("</table>", 1)[0]
    assert f'href="?user={owner.email.replace("@", "%40")}"' in by_user


def test_filters_by_model_and_bucket(console, calls):
    html = console.get(PAGE, {"model_alias": "fast", "bucket": "month"}).content.decode()
    assert totals_cells(html) == figures("2", "1001", "700", "50", "200", "80", "0.2702")
    assert re.findall(r'data-bucket="([\d-]+)"', html) == ["2025-01-01"]


@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        ({"from_date": "2025-02-01", "to_date": "2025-01-01"}, "from_date", "From must not be after To."),
        ({"user_id": "424242"}, "user", "No user with this id."),
        ({"user": "424242"}, "user", "No user with this id."),
        ({"user": "x"}, "user", "Enter an email address or a user id."),
        ({"user": "nobody@example.com"}, "user", "No user with this email."),
        ({"from_date": "2025-13-45"}, "from_date", "Enter a valid date."),
        ({"bucket": "year"}, "bucket", "Select a valid choice."),
        ({"model_alias": "nope"}, "model_alias", "Select a valid choice."),
    ],
)
def test_bad_filters_are_shown_next_to_the_field_without_figures(console, calls, params, field, message):
    response = console.get(PAGE, params)
    assert response.status_code == 200
    html = response.content.decode()
    block = html.split(f'id="filter-{field}"', 1)[1].split("</div>", 1)[0]
    assert 'class="errorlist' in block and message in block
    assert 'id="usage-totals"' not in html
    csv_response = console.get(PAGE, {**params, "format": "csv"})
    assert csv_response["Content-Type"].startswith("text/html")


def test_csv_download_has_the_api_rows(console, calls):
    response = console.get(
        PAGE, {"from_date": "2025-01-01", "to_date": "2025-01-31", "bucket": "week", "format": "csv"}
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"].startswith("attachment;")
    expected = usage_summary_from_calls(
        from_date=datetime(2025, 1, 1).date(), to_date=datetime(2025, 1, 31).date(), bucket="week"
    )
    assert list(csv.reader(io.StringIO(response.content.decode()))) == usage_summary_rows(expected)


def test_an_empty_selection_shows_zeros(console, calls):
    html = console.get(PAGE, {"from_date": "2030-01-01"}).content.decode()
    assert totals_cells(html) == figures("0", "0", "0", "0", "0", "0", "0.0000")
    assert "No usage in this selection." in html


def test_the_page_is_in_the_admin_index(console):
    html = console.get("/admin/").content.decode()
    assert f'href="{PAGE}"' in html and "Usage summary" in html


def test_only_staff_with_the_view_permission_see_it(calls):
    client = Client()
    assert client.get(PAGE).status_code == 302  # to the login page
    client.force_login(make_user("customer@example.com"))
    assert client.get(PAGE).status_code == 302
    staff = make_user("helpdesk@example.com", staff=True)
    client.force_login(staff)
    assert client.get(PAGE).status_code == 403
    assert client.get(PAGE, {"format": "csv"}).status_code == 403
    staff.user_permissions.add(Permission.objects.get(codename="view_usage", content_type__app_label="reporting"))
    assert client.get(PAGE).status_code == 200


def test_there_is_nothing_to_add_change_or_delete(console):
    assert console.get(PAGE + "add/").status_code == 404
    assert console.get(PAGE + "1/change/").status_code == 404
    assert console.post(PAGE, {"from_date": "2025-01-01"}).status_code == 200  # a POST is just a page view
