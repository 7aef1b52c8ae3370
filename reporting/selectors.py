"""Usage summaries (README "Usage reporting"). Two sources with one answer:

- `usage_summary` reads the daily rollups (what the API, the admin page and
  `usage_report` serve: it reads at most days x users x aliases rows);
- `usage_summary_from_calls` aggregates the raw LLM calls (the reference the rollups
  are tested and benchmarked against).

Days are UTC calendar days; `from_date` and `to_date` are inclusive. Buckets are keyed
by their first day: the day itself, the Monday of the ISO week, the first of the month.
A breakdown lists only keys with usage; an empty selection has zero totals.

Organizations: an organization's usage is its account's (the turns through its keys
have `user` = the account), and each such turn names the member who made the key
(`membership_id`; 0 on a personal turn). Every breakdown sums to the totals, so the
by-organization and by-member breakdowns list personal usage too, as one row with a
null organization / member.
"""

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Literal

from django.db.models import Count, DateField, F, QuerySet, Sum, Value
from django.db.models.functions import Coalesce, TruncDate, TruncMonth, TruncWeek

from accounts.models import EndUser
from chat.models import LLMCall
from organizations.models import Membership, Organization
from reporting.models import UsageDaily

Bucket = Literal["day", "week", "month"]
BUCKETS: tuple[str, ...] = ("day", "week", "month")
# The figures of every summary row, in the order the CSV and the tables show them.
# Token classes are parts, not extra tokens: cached and cache-write tokens are
# counted in input_tokens, reasoning tokens in output_tokens (chat.models.LLMCall).
TOKENS = ("input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens")
FIGURES = ("calls", *TOKENS, "credits")


# Where the calls came from: the chat API, the OpenAI-compatible endpoint, or its
# embeddings (chat.models.ChatSession.Source).
SOURCES: tuple[str, ...] = ("chat", "openai", "embeddings")


@dataclass(frozen=True)
class UsageFilters:
    user_id: int | None = None
    model_alias: str | None = None
    from_date: date | None = None
    to_date: date | None = None
    bucket: Bucket = "day"
    source: str | None = None
    end_user_id: int | None = None  # 0: the requests that named none
    purpose: str | None = None
    end_user: str | None = None  # the id the client sent (every key's end user of that id)
    organization_id: int | None = None  # the usage of this organization's account
    member_id: int | None = None  # turns through this member's keys; 0: through no member (personal)


def zero_figures() -> dict[str, Any]:
    return {"calls": 0, **dict.fromkeys(TOKENS, 0), "credits": Decimal("0")}


def _figures(row: dict) -> dict[str, Any]:
    return {
        "calls": int(row["calls"]),
        **{name: int(row[name]) for name in TOKENS},
        "credits": Decimal(row["credits"]),
    }


def _filtered(rows: QuerySet, filters: UsageFilters, purpose_field: str = "purpose") -> QuerySet:
    """The filters every summary shares on `source`, `end_user_id`, `membership_id` and
    the purpose (fields or annotations of `rows`); the caller filters users,
    organizations, aliases and days."""
    if filters.member_id is not None:
        rows = rows.filter(membership_id=filters.member_id)
    if filters.source is not None:
        rows = rows.filter(source=filters.source)
    if filters.end_user_id is not None:
        rows = rows.filter(end_user_id=filters.end_user_id)
    if filters.end_user is not None:
        named = EndUser.objects.filter(external_id=filters.end_user)
        if filters.user_id is not None:
            named = named.filter(api_key__user_id=filters.user_id)
        if filters.organization_id is not None:
            named = named.filter(api_key__user__organization__id=filters.organization_id)
        rows = rows.filter(end_user_id__in=list(named.values_list("pk", flat=True)))
    if filters.purpose is not None:
        rows = rows.filter(**{purpose_field: filters.purpose})
    return rows


def _by_end_user(rows: QuerySet, aggregates: dict[str, Any]) -> list[dict]:
    """Totals per end user (end_user_id null: requests that named none), with each end
    user's id as the client sent it and their key's name (one more query)."""
    grouped = list(rows.values("end_user_id").annotate(**aggregates).order_by("end_user_id"))
    names = {
        end_user.pk: end_user
        for end_user in EndUser.objects.filter(pk__in=[row["end_user_id"] for row in grouped]).select_related("api_key")
    }
    answer = []
    for row in grouped:
        end_user = names.get(row["end_user_id"])
        answer.append({
            "end_user_id": row["end_user_id"] or None,
            "external_id": end_user.external_id if end_user else None,
            "api_key_name": end_user.api_key.name if end_user else None,
            **_figures(row),
        })  # fmt: skip
    return answer


def _by_organization(rows: QuerySet, aggregates: dict[str, Any], account_field: str) -> list[dict]:
    """Totals per organization whose account the usage is (`account_field`: the rows'
    user), with its name and slug (one more query); organization_id null: personal
    usage (accounts of people)."""
    grouped = list(
        rows.annotate(organization_key=Coalesce(f"{account_field}__organization__id", Value(0)))
        .values("organization_key")
        .annotate(**aggregates)
        .order_by("organization_key")
    )
    organizations = Organization.objects.in_bulk([row["organization_key"] for row in grouped])
    answer = []
    for row in grouped:
        organization = organizations.get(row["organization_key"])
        answer.append({
            "organization_id": organization.pk if organization else None,
            "name": organization.name if organization else None,
            "slug": organization.slug if organization else None,
            **_figures(row),
        })  # fmt: skip
    return answer


def _by_member(rows: QuerySet, aggregates: dict[str, Any]) -> list[dict]:
    """Totals per organization member (membership_id null: turns through no member's
    key, i.e. personal usage), with the person's email and their organization (one
    more query). Removed members keep their rows."""
    grouped = list(rows.values("membership_id").annotate(**aggregates).order_by("membership_id"))
    members = Membership.objects.select_related("user", "organization").in_bulk(
        [row["membership_id"] for row in grouped]
    )
    answer = []
    for row in grouped:
        member = members.get(row["membership_id"])
        answer.append({
            "membership_id": member.pk if member else None,
            "email": member.user.email if member else None,
            "organization_id": member.organization_id if member else None,
            "organization_name": member.organization.name if member else None,
            **_figures(row),
        })  # fmt: skip
    return answer


def _summarize(
    rows: QuerySet, *, aggregates: dict[str, Any], bucket_expr: Any, filters: UsageFilters,
    purpose_field: str = "purpose", account_field: str = "user",
) -> dict:  # fmt: skip
    """Eight grouped queries (by model, user, bucket, source, end user, purpose,
    organization and member: `rows` carries `source`, `end_user_id`, `membership_id` and
    `purpose` fields or annotations, and `account_field` names the account the usage
    is); the totals are the sum of the by-model rows, so they agree with the breakdowns
    by construction."""
    by_model = [
        {"model_alias": row["model_alias"], **_figures(row)}
        for row in rows.values("model_alias").annotate(**aggregates).order_by("model_alias")
    ]
    by_user = [
        {"user_id": row["user_id"], "email": row["user__email"], **_figures(row)}
        for row in rows.values("user_id", "user__email").annotate(**aggregates).order_by("user_id")
    ]
    by_bucket = [
        {"bucket": row["bucket_start"], **_figures(row)}
        for row in rows.annotate(bucket_start=bucket_expr)
        .values("bucket_start")
        .annotate(**aggregates)
        .order_by("bucket_start")
    ]
    by_source = [
        {"source": row["source"], **_figures(row)}
        for row in rows.values("source").annotate(**aggregates).order_by("source")
    ]
    by_purpose = [
        {"purpose": row[purpose_field], **_figures(row)}
        for row in rows.values(purpose_field).annotate(**aggregates).order_by(purpose_field)
    ]
    totals = zero_figures()
    for row in by_model:
        for name in FIGURES:
            totals[name] += row[name]
    return {
        "user_id": filters.user_id,
        "model_alias": filters.model_alias,
        "from_date": filters.from_date,
        "to_date": filters.to_date,
        "bucket": filters.bucket,
        "source": filters.source,
        "end_user_id": filters.end_user_id,
        "end_user": filters.end_user,
        "purpose": filters.purpose,
        "organization_id": filters.organization_id,
        "member_id": filters.member_id,
        "totals": totals,
        "by_model": by_model,
        "by_user": by_user,
        "by_bucket": by_bucket,
        "by_source": by_source,
        "by_end_user": _by_end_user(rows, aggregates),
        "by_purpose": by_purpose,
        "by_organization": _by_organization(rows, aggregates, account_field),
        "by_member": _by_member(rows, aggregates),
    }


def usage_summary(
    *,
    user_id: int | None = None,
    model_alias: str | None = None,
    from_date: date | None = None,
    to_date: date | None = None,
    bucket: Bucket = "day",
    source: str | None = None,
    end_user_id: int | None = None,
    purpose: str | None = None,
    end_user: str | None = None,
    organization_id: int | None = None,
    member_id: int | None = None,
) -> dict:
    """The summary served to staff and users, from the daily rollups."""
    filters = UsageFilters(
        user_id=user_id, model_alias=model_alias, from_date=from_date, to_date=to_date, bucket=bucket, source=source,
        end_user_id=end_user_id, purpose=purpose, end_user=end_user, organization_id=organization_id,
        member_id=member_id,
    )  # fmt: skip
    rows = _filtered(UsageDaily.objects.all(), filters)
    if user_id is not None:
        rows = rows.filter(user_id=user_id)
    if organization_id is not None:
        rows = rows.filter(user__organization__id=organization_id)
    if model_alias is not None:
        rows = rows.filter(model_alias=model_alias)
    if from_date is not None:
        rows = rows.filter(day__gte=from_date)
    if to_date is not None:
        rows = rows.filter(day__lte=to_date)
    bucket_expr = {"day": F("day"), "week": TruncWeek("day"), "month": TruncMonth("day")}[bucket]
    aggregates = {"calls": Sum("calls"), **{name: Sum(name) for name in TOKENS}, "credits": Sum("credits")}
    return _summarize(rows, aggregates=aggregates, bucket_expr=bucket_expr, filters=filters)


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def usage_summary_from_calls(
    *,
    user_id: int | None = None,
    model_alias: str | None = None,
    from_date: date | None = None,
    to_date: date | None = None,
    bucket: Bucket = "day",
    source: str | None = None,
    end_user_id: int | None = None,
    purpose: str | None = None,
    end_user: str | None = None,
    organization_id: int | None = None,
    member_id: int | None = None,
) -> dict:
    """The same summary aggregated from the raw LLM calls: the reference the rollups
    must equal exactly."""
    filters = UsageFilters(
        user_id=user_id, model_alias=model_alias, from_date=from_date, to_date=to_date, bucket=bucket, source=source,
        end_user_id=end_user_id, purpose=purpose, end_user=end_user, organization_id=organization_id,
        member_id=member_id,
    )  # fmt: skip
    rows = LLMCall.objects.annotate(
        source=F("turn__session__source"), end_user_id=Coalesce("turn__end_user_id", Value(0)),
        turn_purpose=F("turn__purpose"),  # LLMCall.purpose is the call's own (reply, summary...)
        membership_id=Coalesce("turn__membership_id", Value(0)),
    )  # fmt: skip
    rows = _filtered(rows, filters, purpose_field="turn_purpose")
    if user_id is not None:
        rows = rows.filter(user_id=user_id)
    # The turn's user, not the call's: the rollup's key is the call's, so a call recorded
    # under another user than its turn's would show here as a mismatch.
    if organization_id is not None:
        rows = rows.filter(turn__user__organization__id=organization_id)
    if model_alias is not None:
        rows = rows.filter(model_alias=model_alias)
    # Half-open ranges on the timestamp, so the (user|alias, created_at) indexes apply.
    if from_date is not None:
        rows = rows.filter(created_at__gte=_day_start(from_date))
    if to_date is not None and to_date < date.max:
        rows = rows.filter(created_at__lt=_day_start(to_date + timedelta(days=1)))
    bucket_expr = {
        "day": TruncDate("created_at", tzinfo=UTC),
        "week": TruncWeek("created_at", tzinfo=UTC, output_field=DateField()),
        "month": TruncMonth("created_at", tzinfo=UTC, output_field=DateField()),
    }[bucket]
    aggregates = {"calls": Count("id"), **{name: Sum(name) for name in TOKENS}, "credits": Sum("credits_burned")}
    return _summarize(
        rows, aggregates=aggregates, bucket_expr=bucket_expr, filters=filters, purpose_field="turn_purpose",
        account_field="turn__user",
    )  # fmt: skip
