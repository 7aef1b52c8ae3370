"""The figures of the staff console's dashboard (the admin index, core.admin_site):
how the business is doing, one function per figure, each one query (Stripe's: two
tables, two queries; the upstreams: one query and one cache round trip). They read across the apps, so they live here
rather than in one app's selectors; the page shows each only to staff who may open
the list it links to.

Days are UTC calendar days, as in the usage reports (reporting.selectors): "today"
is since midnight UTC, "7 days" is today and the 6 days before."""

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.db.models import Count, Q, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone
from djstripe.models import WebhookEventTrigger

from billing.models import TopUp, TopUpEvent, Wallet
from chat.models import Turn
from reporting.models import UsageDaily
from routing.cooldown import states
from routing.selectors import upstreams_all

ZERO = Decimal("0")
TOP_UP_DAYS = 30
SPEND_DAYS = 7
ACTIVE_DAYS = 7
FAILING_HOURS = 24
# Top-ups that were paid: their money came in, whatever happened to it later (a
# refund or a dispute is its own figure on the top-up).
PAID_TOP_UPS = (
    TopUp.Status.SUCCEEDED, TopUp.Status.PARTIALLY_REFUNDED, TopUp.Status.REFUNDED, TopUp.Status.DISPUTED,
)  # fmt: skip


def today_utc() -> date:
    return timezone.now().astimezone(UTC).date()


@dataclass(frozen=True)
class CreditsOutstanding:
    total: Decimal  # the sum of wallet balances: credits owed to users
    wallets: int  # wallets with a balance above zero


def credits_outstanding() -> CreditsOutstanding:
    row = Wallet.objects.aggregate(
        total=Coalesce(Sum("balance"), ZERO), wallets=Count("id", filter=Q(balance__gt=0))
    )  # fmt: skip
    return CreditsOutstanding(total=row["total"], wallets=row["wallets"])


@dataclass(frozen=True)
class TopUps:
    since: datetime
    count: int
    usd: Decimal


def top_ups_paid(*, days: int = TOP_UP_DAYS) -> TopUps:
    """Top-ups created in the last `days` days and paid (PAID_TOP_UPS): their count and dollars."""
    since = timezone.now() - timedelta(days=days)
    row = TopUp.objects.filter(created_at__gte=since, status__in=PAID_TOP_UPS).aggregate(
        count=Count("id"), usd=Coalesce(Sum("amount_usd"), ZERO)
    )
    return TopUps(since=since, count=row["count"], usd=row["usd"])


@dataclass(frozen=True)
class ModelSpend:
    model_alias: str
    today: Decimal
    week: Decimal


@dataclass(frozen=True)
class Spend:
    since: date  # the first day of the week's figure
    today: Decimal
    week: Decimal
    by_model: list[ModelSpend]  # most spent over the week first


def spend_by_model(*, days: int = SPEND_DAYS) -> Spend:
    """Credits spent today and over the last `days` UTC days, per model alias, from the
    daily rollups (kept in step with the calls: reporting.services)."""
    today = today_utc()
    since = today - timedelta(days=days - 1)
    rows = (
        UsageDaily.objects.filter(day__gte=since)
        .values("model_alias")
        .annotate(week=Sum("credits"), today=Coalesce(Sum("credits", filter=Q(day=today)), ZERO))
        .order_by("-week", "model_alias")
    )
    by_model = [ModelSpend(model_alias=row["model_alias"], today=row["today"], week=row["week"]) for row in rows]
    return Spend(
        since=since,
        today=sum((row.today for row in by_model), ZERO),
        week=sum((row.week for row in by_model), ZERO),
        by_model=by_model,
    )


@dataclass(frozen=True)
class ActiveUsers:
    since: date
    count: int


def active_users(*, days: int = ACTIVE_DAYS) -> ActiveUsers:
    """Users who made at least one LLM call (a turn, or a /v1 request) in the last `days` UTC days."""
    since = today_utc() - timedelta(days=days - 1)
    count = UsageDaily.objects.filter(day__gte=since).values("user_id").distinct().count()
    return ActiveUsers(since=since, count=count)


@dataclass(frozen=True)
class FailingTurns:
    since: datetime
    failed: int
    total: int


def failing_turns(*, hours: int = FAILING_HOURS) -> FailingTurns:
    """Turns created in the last `hours` hours that failed, out of all created then."""
    since = timezone.now() - timedelta(hours=hours)
    row = Turn.objects.filter(created_at__gte=since).aggregate(
        total=Count("id"), failed=Count("id", filter=Q(status=Turn.Status.FAILED))
    )
    return FailingTurns(since=since, failed=row["failed"], total=row["total"])


@dataclass(frozen=True)
class StripeWaiting:
    webhooks_failed: int  # valid, not processed, processing raised (re-run from their list)
    webhooks_waiting: int  # valid, not processed yet, no error
    events_pending: int  # recorded top-up events whose top-up is not known yet (the sweeper applies them)

    @property
    def total(self) -> int:
        return self.webhooks_failed + self.webhooks_waiting + self.events_pending


def stripe_events_waiting() -> StripeWaiting:
    """Stripe's webhooks not processed (the two choices of billing.stripe.admin's
    FailedProcessingFilter) and top-up events not applied: two queries, one per table."""
    row = WebhookEventTrigger.objects.filter(valid=True, processed=False).aggregate(
        failed=Count("id", filter=~Q(exception="")), waiting=Count("id", filter=Q(exception=""))
    )
    pending = TopUpEvent.objects.filter(state=TopUpEvent.State.PENDING).count()
    return StripeWaiting(webhooks_failed=row["failed"], webhooks_waiting=row["waiting"], events_pending=pending)


@dataclass(frozen=True)
class Cooling:
    upstreams: int  # upstreams known (rows, and the kinds' defaults without one)
    cooling: list[str]  # the names of those cooling down now


def upstreams_cooling() -> Cooling:
    """Upstreams cooling down now (routing.cooldown): the rows and the kinds' defaults,
    their cooldowns read in one cache round trip."""
    names = sorted({upstream.name for upstream in upstreams_all()})
    found = states(names)
    return Cooling(upstreams=len(names), cooling=[name for name in names if found[name].cooling])
