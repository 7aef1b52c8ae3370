import csv
import io
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from reporting.selectors import usage_summary_from_calls
from tests.billing.factories import ModelPriceFactory
from tests.chat.factories import ChatSessionFactory
from tests.reporting.factories import CallSpec, record_turn

pytestmark = pytest.mark.django_db

SUMMARY = "/api/v1/admin/usage/summary"
MINE = "/api/v1/users/me/usage"


def at(month: int, day: int, hour: int = 12) -> datetime:
    return datetime(2025, month, day, hour, tzinfo=UTC)


@pytest.fixture
def calls(owner, other_user):  # noqa: ANN001, ANN201
    """owner: two fast calls on Jan 31 and one smart call on Feb 3; other_user: one fast call on Feb 1.
    fast: 150 / 600 credits per million tokens; smart: 3000 / 15000 (no class prices: cached
    and cache-write tokens cost the input price, so the classes do not change the credits)."""
    ModelPriceFactory(alias="fast", input_credits_per_mtok=Decimal("150"), output_credits_per_mtok=Decimal("600"))
    ModelPriceFactory(alias="smart", input_credits_per_mtok=Decimal("3000"), output_credits_per_mtok=Decimal("15000"))
    mine, theirs = ChatSessionFactory(user=owner), ChatSessionFactory(user=other_user)
    # 0.27 + 0.0195 = 0.2895 on Jan 31
    record_turn(
        session=mine,
        calls=[
            CallSpec(
                "fast", at(1, 31), 1000, 200, cached_input_tokens=600, cache_write_tokens=100, reasoning_tokens=120
            ),
            CallSpec("fast", at(1, 31, 23), 10, 30, cache_write_tokens=10, reasoning_tokens=30),
        ],
    )
    # 2000*3000/1e6 + 100*15000/1e6 = 6 + 1.5 = 7.5 on Feb 3
    record_turn(session=mine, calls=[CallSpec("smart", at(2, 3), 2000, 100, cached_input_tokens=1500)])
    # 1*150/1e6 + 0 = 0.00015 -> 0.0002 on Feb 1
    record_turn(session=theirs, calls=[CallSpec("fast", at(2, 1), 1, 0)])


def figures(
    calls: int, tokens_in: int, cached: int, written: int, tokens_out: int, reasoning: int, credits: str
) -> dict:
    """The figures in the CSV's order: cached and written are of tokens_in, reasoning of tokens_out."""
    return {
        "calls": calls, "input_tokens": tokens_in, "cached_input_tokens": cached, "cache_write_tokens": written,
        "output_tokens": tokens_out, "reasoning_tokens": reasoning, "credits": credits,
    }  # fmt: skip


def test_staff_see_everyone_with_totals_and_breakdowns(staff_client, owner, other_user, calls):
    response = staff_client.get(SUMMARY, {"from_date": "2025-01-01", "to_date": "2025-02-28", "bucket": "month"})
    assert response.status_code == 200
    body = response.json()
    assert body["totals"] == figures(4, 3011, 2100, 110, 330, 150, "7.7897")
    assert body["by_model"] == [
        {"model_alias": "fast", **figures(3, 1011, 600, 110, 230, 150, "0.2897")},
        {"model_alias": "smart", **figures(1, 2000, 1500, 0, 100, 0, "7.5000")},
    ]
    assert body["by_user"] == [
        {"user_id": owner.pk, "email": owner.email, **figures(3, 3010, 2100, 110, 330, 150, "7.7895")},
        {"user_id": other_user.pk, "email": other_user.email, **figures(1, 1, 0, 0, 0, 0, "0.0002")},
    ]
    assert body["by_bucket"] == [
        {"bucket": "2025-01-01", **figures(2, 1010, 600, 110, 230, 150, "0.2895")},
        {"bucket": "2025-02-01", **figures(2, 2001, 1500, 0, 100, 0, "7.5002")},
    ]
    assert (body["bucket"], body["from_date"], body["to_date"], body["user_id"]) == (
        "month",
        "2025-01-01",
        "2025-02-28",
        None,
    )


def test_staff_filter_by_user_alias_and_days(staff_client, owner, calls):
    response = staff_client.get(
        SUMMARY, {"user_id": owner.pk, "model_alias": "fast", "from_date": "2025-01-31", "to_date": "2025-01-31"}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["totals"] == figures(2, 1010, 600, 110, 230, 150, "0.2895")
    assert [row["user_id"] for row in body["by_user"]] == [owner.pk]
    assert body["by_bucket"] == [{"bucket": "2025-01-31", **figures(2, 1010, 600, 110, 230, 150, "0.2895")}]


def test_week_buckets_start_on_monday(staff_client, calls):
    body = staff_client.get(SUMMARY, {"bucket": "week"}).json()
    # Fri Jan 31 -> week of Mon Jan 27; Sat Feb 1 -> same week; Mon Feb 3 -> its own week.
    assert [(row["bucket"], row["calls"]) for row in body["by_bucket"]] == [("2025-01-27", 3), ("2025-02-03", 1)]


def test_users_see_only_their_own_usage(owner_client, other_client, owner, other_user, calls):
    body = owner_client.get(MINE).json()
    assert body["totals"] == figures(3, 3010, 2100, 110, 330, 150, "7.7895")
    assert [row["user_id"] for row in body["by_user"]] == [owner.pk]
    assert body["user_id"] == owner.pk
    theirs = other_client.get(MINE, {"bucket": "day"}).json()
    assert theirs["totals"] == figures(1, 1, 0, 0, 0, 0, "0.0002")
    assert theirs["by_bucket"] == [{"bucket": "2025-02-01", **figures(1, 1, 0, 0, 0, 0, "0.0002")}]


def test_users_cannot_ask_for_someone_elses_usage(owner_client, other_user, calls):
    response = owner_client.get(MINE, {"user_id": other_user.pk})
    assert response.status_code == 400
    assert "user_id" in response.json()["error"]["fields"]


def test_the_admin_summary_is_staff_only(owner_client, anon_client, calls):
    assert owner_client.get(SUMMARY).status_code == 403
    assert anon_client.get(SUMMARY).status_code == 401
    assert anon_client.get(MINE).status_code == 401


def test_an_empty_range_answers_zeros(staff_client, owner_client, calls):
    for client, url in ((staff_client, SUMMARY), (owner_client, MINE)):
        body = client.get(url, {"from_date": "2024-01-01", "to_date": "2024-12-31"}).json()
        assert body["totals"] == figures(0, 0, 0, 0, 0, 0, "0.0000")
        assert body["by_model"] == body["by_user"] == body["by_bucket"] == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"from_date": "2025-02-02", "to_date": "2025-02-01"}, "from_date"),
        ({"from_date": "2025-02-30"}, "from_date"),
        ({"to_date": "yesterday"}, "to_date"),
        ({"bucket": "year"}, "bucket"),
        ({"format": "xml"}, "format"),
        ({"user_id": "abc"}, "user_id"),
        ({"user_id": "0"}, "user_id"),
        ({"user_id": str(2**63)}, "user_id"),
        ({"user_id": "987654"}, "user_id"),  # no such user
        ({"model_alias": "x" * 65}, "model_alias"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(staff_client, params, field):
    response = staff_client.get(SUMMARY, params)
    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == [field]


def test_bad_dates_on_the_user_endpoint_are_400_too(owner_client):
    response = owner_client.get(MINE, {"from_date": "2025-03-01", "to_date": "2025-02-01"})
    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == ["from_date"]


def test_csv_is_an_attachment_with_the_same_figures(staff_client, owner, other_user, calls):
    response = staff_client.get(
        SUMMARY, {"format": "csv", "bucket": "month", "from_date": "2025-01-01", "to_date": "2025-02-28"}
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"] == 'attachment; filename="usage_2025-01-01_2025-02-28_month.csv"'
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows == [
        [
            "section",
            "key",
            "email",
            "calls",
            "input_tokens",
            "cached_input_tokens",
            "cache_write_tokens",
            "output_tokens",
            "reasoning_tokens",
            "credits",
        ],
        ["total", "", "", "4", "3011", "2100", "110", "330", "150", "7.7897"],
        ["model", "fast", "", "3", "1011", "600", "110", "230", "150", "0.2897"],
        ["model", "smart", "", "1", "2000", "1500", "0", "100", "0", "7.5000"],
        ["user", str(owner.pk), owner.email, "3", "3010", "2100", "110", "330", "150", "7.7895"],
        ["user", str(other_user.pk), other_user.email, "1", "1", "0", "0", "0", "0", "0.0002"],
        ["bucket", "2025-01-01", "", "2", "1010", "600", "110", "230", "150", "0.2895"],
        ["bucket", "2025-02-01", "", "2", "2001", "1500", "0", "100", "0", "7.5002"],
        ["source", "chat", "", "4", "3011", "2100", "110", "330", "150", "7.7897"],
        ["end_user", "", "", "4", "3011", "2100", "110", "330", "150", "7.7897"],
        ["purpose", "", "", "4", "3011", "2100", "110", "330", "150", "7.7897"],
        ["organization", "", "", "4", "3011", "2100", "110", "330", "150", "7.7897"],
        ["member", "", "", "4", "3011", "2100", "110", "330", "150", "7.7897"],
    ]


def test_users_get_their_own_csv_and_errors_stay_json(owner_client, other_user, calls):
    response = owner_client.get(MINE, {"format": "csv"})
    assert response["Content-Type"].startswith("text/csv")
    assert other_user.email not in response.content.decode()
    bad = owner_client.get(MINE, {"format": "csv", "bucket": "decade"})
    assert bad.status_code == 400
    assert bad["Content-Type"] == "application/json"
    assert list(bad.json()["error"]["fields"]) == ["bucket"]


def test_format_json_is_the_default_and_explicit(staff_client, calls):
    assert staff_client.get(SUMMARY, {"format": "json"}).json() == staff_client.get(SUMMARY).json()


def test_the_api_serves_exactly_the_raw_aggregation(staff_client, calls):
    body = staff_client.get(SUMMARY, {"bucket": "week"}).json()
    raw = usage_summary_from_calls(bucket="week")
    assert body["totals"]["credits"] == f"{raw['totals']['credits']:.4f}"
    assert [row["credits"] for row in body["by_bucket"]] == [f"{row['credits']:.4f}" for row in raw["by_bucket"]]


def test_the_last_representable_day_is_accepted(staff_client, calls):
    response = staff_client.get(SUMMARY, {"from_date": "0001-01-01", "to_date": "9999-12-31"})
    assert response.status_code == 200
    assert response.json()["totals"]["calls"] == 4
    assert date.fromisoformat(response.json()["to_date"]) == date.max
