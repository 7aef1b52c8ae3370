"""The summary served from the rollups equals the raw aggregation of the LLM calls,
and both equal a plain-Python computation over the generated calls, for every filter
and bucket, across day, ISO-week, month and year boundaries."""

from collections import defaultdict
from datetime import date, timedelta
from decimal import Decimal
from itertools import product

import pytest

from reporting.selectors import usage_summary, usage_summary_from_calls, zero_figures

pytestmark = pytest.mark.django_db

RANGES = [
    (None, None),
    (date(2025, 1, 1), None),
    (None, date(2025, 1, 31)),
    (date(2024, 12, 31), date(2025, 1, 1)),  # two days across the year boundary
    (date(2025, 1, 6), date(2025, 2, 2)),  # whole ISO weeks across a month boundary
    (date(2025, 1, 15), date(2025, 1, 15)),  # one day
    (date(2025, 2, 1), date(2025, 2, 28)),
    (date(2026, 1, 1), date(2026, 12, 31)),  # nothing there
    (date.min, date.max),
]


def _bucket_start(day: date, bucket: str) -> date:
    if bucket == "week":
        return day - timedelta(days=day.weekday())
    if bucket == "month":
        return day.replace(day=1)
    return day


def add(figures: dict, call) -> None:  # noqa: ANN001
    figures["calls"] += 1
    figures["input_tokens"] += call.input_tokens
    figures["cached_input_tokens"] += call.cached_input_tokens
    figures["cache_write_tokens"] += call.cache_write_tokens
    figures["output_tokens"] += call.output_tokens
    figures["reasoning_tokens"] += call.reasoning_tokens
    figures["credits"] += call.credits


def expected_summary(
    recorded, *, user_id, model_alias, from_date, to_date, bucket, end_user_id=None, purpose=None,  # noqa: ANN001
    end_user=None, organization_id=None, member_id=None,  # noqa: ANN001
) -> dict:
    chosen = [
        call
        for call in recorded
        if (user_id is None or call.user_id == user_id)
        and (end_user_id is None or (call.end_user_id or 0) == end_user_id)
        and (end_user is None or call.external_id == end_user)
        and (purpose is None or call.purpose == purpose)
        and (organization_id is None or call.organization_id == organization_id)
        and (member_id is None or (call.membership_id or 0) == member_id)
        and (model_alias is None or call.alias == model_alias)
        and (from_date is None or call.day >= from_date)
        and (to_date is None or call.day <= to_date)
    ]

    def grouped(key) -> dict:  # noqa: ANN001
        groups: dict = defaultdict(zero_figures)
        for call in chosen:
            add(groups[key(call)], call)
        return dict(sorted(groups.items()))

    emails = {call.user_id: call.email for call in recorded}
    end_users = {call.end_user_id: (call.external_id, call.api_key_name) for call in recorded}
    by_end_user = grouped(lambda c: c.end_user_id or 0)
    organizations = {call.organization_id: (call.organization_name, call.organization_slug) for call in recorded}
    members = {
        call.membership_id: (call.member_email, call.organization_id, call.organization_name) for call in recorded
    }
    totals = zero_figures()
    for call in chosen:
        add(totals, call)
    return {
        "user_id": user_id,
        "model_alias": model_alias,
        "from_date": from_date,
        "to_date": to_date,
        "bucket": bucket,
        "totals": totals,
        "by_model": [{"model_alias": k, **v} for k, v in grouped(lambda c: c.alias).items()],
        "by_user": [{"user_id": k, "email": emails[k], **v} for k, v in grouped(lambda c: c.user_id).items()],
        "by_bucket": [{"bucket": k, **v} for k, v in grouped(lambda c: _bucket_start(c.day, bucket)).items()],
        # Every recorded call is of a chat session (the OpenAI endpoint's: tests/openai_api).
        "source": None,
        "by_source": [{"source": "chat", **totals}] if totals["calls"] else [],
        "end_user_id": end_user_id,
        "end_user": end_user,
        "purpose": purpose,
        "by_end_user": [
            {"end_user_id": k or None, "external_id": end_users[k or None][0], "api_key_name": end_users[k or None][1],
             **v}
            for k, v in by_end_user.items()
        ],  # fmt: skip
        "by_purpose": [{"purpose": k, **v} for k, v in grouped(lambda c: c.purpose).items()],
        "organization_id": organization_id,
        "member_id": member_id,
        # Personal usage: the row of a null organization / member.
        "by_organization": [
            {"organization_id": k or None, "name": organizations[k or None][0], "slug": organizations[k or None][1],
             **v}
            for k, v in grouped(lambda c: c.organization_id or 0).items()
        ],
        "by_member": [
            {"membership_id": k or None, "email": members[k or None][0], "organization_id": members[k or None][1],
             "organization_name": members[k or None][2], **v}
            for k, v in grouped(lambda c: c.membership_id or 0).items()
        ],
    }  # fmt: skip


def test_rollup_summary_equals_raw_aggregation_for_every_filter_and_bucket(usage_data):
    users, recorded = usage_data["users"], usage_data["recorded"]
    assert len(recorded) > 300
    user_choices = [None, users[0].pk, users[2].pk]
    alias_choices = [None, "fast", "tiny", "retired-alias"]
    checked = 0
    for user_id, alias, (start, end), bucket in product(user_choices, alias_choices, RANGES, ["day", "week", "month"]):
        filters = {"user_id": user_id, "model_alias": alias, "from_date": start, "to_date": end, "bucket": bucket}
        from_rollups = usage_summary(**filters)
        from_calls = usage_summary_from_calls(**filters)
        assert from_rollups == from_calls, filters
        assert from_rollups == expected_summary(recorded, **filters), filters
        checked += 1
    assert checked == 3 * 4 * len(RANGES) * 3


def test_rollup_summary_equals_raw_aggregation_per_end_user_and_purpose(usage_data):
    users, recorded, end_users = usage_data["users"], usage_data["recorded"], usage_data["end_users"]
    ada, bob = end_users[users[0].pk]
    assert {call.end_user_id for call in recorded} >= {None, ada.pk, bob.pk}
    assert {call.purpose for call in recorded} == {"", "title", "tags"}
    # "ada" is an end user of user0's key and of user1's: by name, both.
    for user_id, (end_user_id, end_user), purpose, (start, end) in product(
        [None, users[0].pk], [(None, None), (ada.pk, None), (bob.pk, None), (0, None), (None, "ada")],
        [None, "title", ""], RANGES[:3],
    ):
        filters = {
            "user_id": user_id, "model_alias": None, "from_date": start, "to_date": end, "bucket": "day",
            "end_user_id": end_user_id, "purpose": purpose, "end_user": end_user,
        }  # fmt: skip
        from_rollups = usage_summary(**filters)
        assert from_rollups == usage_summary_from_calls(**filters), filters
        assert from_rollups == expected_summary(recorded, **filters), filters


def test_the_generated_data_reaches_every_edge_the_comparison_is_about(usage_data):
    """Guards the test above: the data really straddles the boundaries it claims to."""
    days = {call.day for call in usage_data["recorded"]}
    for day in [date(2024, 12, 31), date(2025, 1, 1), date(2025, 1, 5), date(2025, 1, 6), date(2025, 2, 1)]:
        assert day in days
    summary = usage_summary(bucket="month")
    assert [row["bucket"] for row in summary["by_bucket"]] == [
        date(2024, 12, 1),
        date(2025, 1, 1),
        date(2025, 2, 1),
        date(2025, 3, 1),
    ]
    assert {row["model_alias"] for row in summary["by_model"]} == {"fast", "smart", "tiny"}
    # Every token class is in the data, so the comparison covers each of their sums.
    totals = summary["totals"]
    assert 0 < totals["cached_input_tokens"] + totals["cache_write_tokens"] < totals["input_tokens"]
    assert totals["cached_input_tokens"] > 0 and totals["cache_write_tokens"] > 0
    assert 0 < totals["reasoning_tokens"] < totals["output_tokens"]


def test_boundary_calls_land_in_their_own_utc_day(usage_data):
    user = usage_data["users"][0]
    by_day = {row["bucket"]: row for row in usage_summary(user_id=user.pk, bucket="day")["by_bucket"]}
    assert by_day[date(2025, 1, 14)]["calls"] >= 1
    assert by_day[date(2025, 1, 15)]["calls"] >= 1
    late = [c for c in usage_data["recorded"] if c.user_id == user.pk and c.day == date(2025, 1, 14)]
    assert by_day[date(2025, 1, 14)]["calls"] == len(late)
    assert by_day[date(2025, 1, 14)]["credits"] == sum((c.credits for c in late), Decimal("0"))


def test_an_empty_selection_answers_zero_totals_and_empty_breakdowns(db):
    summary = usage_summary(from_date=date(2030, 1, 1), to_date=date(2030, 1, 31), bucket="week")
    assert summary["totals"] == {
        "calls": 0, "input_tokens": 0, "cached_input_tokens": 0, "cache_write_tokens": 0, "output_tokens": 0,
        "reasoning_tokens": 0, "credits": Decimal("0"),
    }  # fmt: skip
    assert summary["by_model"] == summary["by_user"] == summary["by_bucket"] == []
    assert summary == usage_summary_from_calls(from_date=date(2030, 1, 1), to_date=date(2030, 1, 31), bucket="week")
