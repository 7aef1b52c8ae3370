"""The console's dashboard (the admin index): each figure of core.selectors as a card
with its words and a link to the list that shows the rows behind it, filtered the same
way. A card is shown, and its figure read, only for staff who may view that list.

The template (templates/admin/index.html) only lays the cards out."""

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from urllib.parse import urlencode

from django.http import HttpRequest
from django.urls import reverse

from billing.money import format_ledger
from billing.stripe.client import stripe_enabled
from core import selectors


@dataclass(frozen=True)
class Row:
    """A line of a card's table (spend per model)."""

    label: str
    url: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Card:
    key: str  # the card's id in the page (dashboard-<key>)
    title: str
    figure: str
    url: str
    detail: str = ""
    figure_title: str = ""  # the exact value, in the figure's tooltip
    alert: bool = False  # something needs a look (shown in the error colour)
    links: list[tuple[str, str]] = field(default_factory=list)  # (text, url) under the figure
    columns: tuple[str, ...] = ()
    rows: list[Row] = field(default_factory=list)


def _url(name: str, **params: object) -> str:
    url = reverse(f"admin:{name}")
    return f"{url}?{urlencode(params)}" if params else url


def _credits(value: Decimal) -> str:
    return f"{value:,.2f}"


def _day(value: date | datetime) -> str:
    return value.isoformat()


def _credits_card() -> Card:
    owed = selectors.credits_outstanding()
    return Card(
        key="credits", title="Credits outstanding", figure=_credits(owed.total), figure_title=format_ledger(owed.total),
        detail=f"Owed to users: the sum of wallet balances ({owed.wallets} wallets above zero).",
        url=_url("billing_wallet_changelist", o="-1"),  # largest balance first
    )  # fmt: skip


def _top_ups_card() -> Card:
    paid = selectors.top_ups_paid()
    statuses = ",".join(selectors.PAID_TOP_UPS)
    return Card(
        key="top-ups", title=f"Top-ups, last {selectors.TOP_UP_DAYS} days", figure=f"${paid.usd:,.2f}",
        detail=f"{paid.count} paid top-up{'s' if paid.count != 1 else ''}.",
        url=_url("billing_topup_changelist", status__in=statuses, created_at__gte=paid.since.isoformat()),
    )  # fmt: skip


def _spend_card() -> Card:
    spend = selectors.spend_by_model()
    today = selectors.today_utc()

    def usage(**params: object) -> str:
        return _url("reporting_usage_changelist", **params)

    return Card(
        key="spend", title="Credits spent", figure=_credits(spend.today), figure_title=str(spend.today),
        detail=f"today (UTC); {_credits(spend.week)} over {selectors.SPEND_DAYS} days.",
        url=usage(from_date=_day(today), to_date=_day(today)),
        columns=("Model", "Today", f"{selectors.SPEND_DAYS} days"),
        rows=[
            Row(label=row.model_alias, url=usage(model_alias=row.model_alias, from_date=_day(spend.since)),
                values=(_credits(row.today), _credits(row.week)))
            for row in spend.by_model
        ],
        links=[(f"Usage over {selectors.SPEND_DAYS} days", usage(from_date=_day(spend.since)))],
    )  # fmt: skip


def _active_users_card() -> Card:
    active = selectors.active_users()
    return Card(
        key="active-users", title="Active users", figure=str(active.count),
        detail=f"Made at least one model call in the last {selectors.ACTIVE_DAYS} days (UTC, today included).",
        url=_url("reporting_usage_changelist", from_date=_day(active.since)),
    )  # fmt: skip


def _failing_turns_card() -> Card:
    turns = selectors.failing_turns()
    return Card(
        key="failing-turns", title=f"Failed turns, last {selectors.FAILING_HOURS} h", figure=str(turns.failed),
        alert=turns.failed > 0, detail=f"of {turns.total} turns started.",
        url=_url("chat_turn_changelist", status__exact="failed", created_at__gte=turns.since.isoformat()),
    )  # fmt: skip


def _stripe_card(*, webhooks: bool, events: bool) -> Card:
    waiting = selectors.stripe_events_waiting()
    links = []
    if webhooks:
        links += [
            (f"{waiting.webhooks_failed} failed", _url("djstripe_webhookeventtrigger_changelist", processing="failed")),
            (f"{waiting.webhooks_waiting} waiting", _url("djstripe_webhookeventtrigger_changelist", processing="waiting")),
        ]  # fmt: skip
    if events:
        links.append((f"{waiting.events_pending} top-up events pending", _url("billing_topupevent_changelist",
                                                                                state__exact="pending")))  # fmt: skip
    return Card(
        key="stripe", title="Stripe events waiting", figure=str(waiting.total), alert=waiting.webhooks_failed > 0,
        detail="Webhooks not processed, and top-up events not applied.", links=links, url=links[0][1],
    )  # fmt: skip


def _upstreams_card() -> Card:
    cooling = selectors.upstreams_cooling()
    return Card(
        key="upstreams", title="Upstreams cooling down", figure=str(len(cooling.cooling)), alert=bool(cooling.cooling),
        detail=(", ".join(cooling.cooling) if cooling.cooling else "none")
        + f" of {cooling.upstreams}; tried after every other while cooling.",
        url=_url("routing_upstream_changelist"),
    )  # fmt: skip


def dashboard_cards(request: HttpRequest) -> list[Card]:
    """The cards this staff member may follow, in reading order: money, use, trouble."""
    may = request.user.has_perm
    cards = []
    if may("billing.view_wallet"):
        cards.append(_credits_card())
    if may("billing.view_topup"):
        cards.append(_top_ups_card())
    if may("reporting.view_usage"):
        cards += [_spend_card(), _active_users_card()]
    if may("chat.view_turn"):
        cards.append(_failing_turns_card())
    # Stripe's card, as dj-stripe's section (core.admin_site), only when Stripe is on.
    webhooks, events = may("djstripe.view_webhookeventtrigger"), may("billing.view_topupevent")
    if (webhooks or events) and stripe_enabled():
        cards.append(_stripe_card(webhooks=webhooks, events=events))
    if may("routing.view_upstream"):
        cards.append(_upstreams_card())
    return cards
