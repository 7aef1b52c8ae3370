"""Spend limits: an end user's budget on an API key, an organization member's budget,
an API key's credit budget and an account's spending cap, each per window (a UTC day, a Monday-to-Sunday week, a calendar month) or for the key's
lifetime.

Invariants:
- A limit is enforced with the wallet's own hold: when a turn is accepted, its
  worst-case cost is held against the wallet AND every limit that applies, in the
  same transaction (billing.services.wallet_hold_place), so concurrent first
  requests cannot pass a budget together (LiteLLM's #40095/#34732).
- Counters (billing.SpendCounter) are keyed by (owner, window, window start), so a
  new window is a new row that starts at zero: a window always resets, with no job
  (LiteLLM's #5651/#7129/#22013).
- Every counter write runs under the account's wallet row lock, taken first; then
  the end user's counter, the member's, the key's, then the account's (the fixed
  lock order). An organization's account is an account like a person's.
- A hold records its counters; settling it (a debit, a release) moves the held
  amount out of them and the charge into `spent`, in the settling transaction,
  even when the window has ended since (a turn counts in the window it started in).
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.db.models import F
from django.utils import timezone

from accounts.models import ApiKey, EndUser, SpendWindow, User
from billing.models import CreditHold, SpendCounter
from core.exceptions import InsufficientCredits
from organizations.models import Membership
from organizations.selectors import api_key_membership

ZERO = Decimal("0")
# A lifetime counter's window_start: one row per owner for ever.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PER = {SpendWindow.DAY: "per day", SpendWindow.WEEK: "per week", SpendWindow.MONTH: "per month"}


class SpendLimitExceeded(InsufficientCredits):
    """An end user's or a key's budget, or an account's cap, refused a turn (or the
    end user is blocked): 402 on the chat API, 429 `insufficient_quota` on /v1
    (openai_api.errors maps InsufficientCredits)."""

    code = "spend_limit_exceeded"


# --- windows -------------------------------------------------------------------------


def window_start(window: str | None, now: datetime) -> datetime:
    """The start (UTC) of the window `now` falls in; EPOCH for a lifetime limit."""
    if not window:
        return EPOCH
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if window == SpendWindow.DAY:
        return day
    if window == SpendWindow.WEEK:
        return day - timedelta(days=day.weekday())  # Monday
    if window == SpendWindow.MONTH:
        return day.replace(day=1)
    raise ValueError(f"Unknown spend window {window!r}.")


def window_end(window: str | None, start: datetime) -> datetime | None:
    """When the window that began at `start` resets; None for a lifetime limit."""
    if not window:
        return None
    if window == SpendWindow.DAY:
        return start + timedelta(days=1)
    if window == SpendWindow.WEEK:
        return start + timedelta(days=7)
    return (start.replace(day=28) + timedelta(days=4)).replace(day=1)  # the 1st of next month


# --- the limits of a request -----------------------------------------------------------


@dataclass(frozen=True)
class SpendLimit:
    user_id: int
    api_key_id: int | None  # None: the account's cap
    label: str  # "End user 'ada' budget on API key 'ci'", "API key 'ci' budget" or "Account spending cap"
    budget: Decimal | None  # None: counted, never refused (an end user with no budget)
    window: str | None
    end_user_id: int | None = None  # set: one end user's budget on the key
    membership_id: int | None = None  # set: an organization member's budget

    def counter_key(self, now: datetime) -> dict:
        return {
            "user_id": self.user_id,
            "api_key_id": self.api_key_id,
            "end_user_id": self.end_user_id,
            "membership_id": self.membership_id,
            "window": self.window or "",
            "window_start": window_start(self.window, now),
        }

    @property
    def hold_field(self) -> str:
        """The CreditHold field that records this limit's counter."""
        if self.end_user_id is not None:
            return "end_user_counter_id"
        if self.membership_id is not None:
            return "member_counter_id"
        return "key_counter_id" if self.api_key_id is not None else "cap_counter_id"


def end_user_budget(*, api_key: ApiKey, end_user: EndUser) -> tuple[Decimal | None, str | None]:
    """(budget, window) of one end user of the key: the owner's override, else the
    key's end-user budget; (None, None) when neither is set."""
    if end_user.budget_credits is not None:
        return end_user.budget_credits, end_user.budget_window
    return api_key.end_user_budget_credits, api_key.end_user_budget_window


def end_user_label(*, api_key: ApiKey, end_user: EndUser) -> str:
    return f"End user '{end_user.external_id}' of API key '{api_key.name}'"


def spend_limits_for(*, user: User, api_key: ApiKey | None, end_user: EndUser | None = None) -> list[SpendLimit]:
    """The limits a turn of this user through this key (for this end user) counts
    against, in lock order (the end user's, the member's, the key's, then the
    account's). Read from the rows authentication loaded: a request with no limit set
    pays no query for this (an organization's key reads its member's row). A blocked
    end user is refused here, before anything is written."""
    limits = []
    if api_key is not None and end_user is not None:
        if end_user.blocked:
            raise SpendLimitExceeded(f"{end_user_label(api_key=api_key, end_user=end_user)} is blocked by its owner.")
        # Counted even without a budget (for life), so the owner sees each person's spend.
        budget, window = end_user_budget(api_key=api_key, end_user=end_user)
        label = f"{end_user_label(api_key=api_key, end_user=end_user)}: budget"
        limits.append(SpendLimit(user.pk, api_key.pk, label, budget, window, end_user.pk))
    if api_key is not None and api_key.membership_id is not None:
        membership = api_key_membership(api_key=api_key)
        if membership.budget_credits is not None:
            limits.append(
                SpendLimit(user.pk, None, f"Member {membership.user.email}'s budget in organization "
                           f"'{membership.organization.name}'", membership.budget_credits, membership.budget_window,
                           membership_id=membership.pk)
            )  # fmt: skip
    if api_key is not None and api_key.budget_credits is not None:
        limits.append(
            SpendLimit(user.pk, api_key.pk, f"API key '{api_key.name}' budget", api_key.budget_credits,
                       api_key.budget_window)
        )  # fmt: skip
    if user.spend_cap_credits is not None:
        limits.append(SpendLimit(user.pk, None, "Account spending cap", user.spend_cap_credits, user.spend_cap_window))
    return limits


def _credits(value: Decimal) -> str:
    """A short figure for messages: 9.5, not 9.50000000."""
    text = f"{value:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _refusal(limit: SpendLimit, *, used: Decimal, amount: Decimal, now: datetime) -> SpendLimitExceeded:
    period = PER.get(limit.window, "") if limit.window else ""
    name = f"{limit.label} of {_credits(limit.budget)} credits" + (f" {period}" if period else " (lifetime)")
    resets = window_end(limit.window, window_start(limit.window, now))
    when = f"resets at {resets:%Y-%m-%dT%H:%M:%SZ}" if resets else "it does not reset"
    return SpendLimitExceeded(
        f"{name}: {_credits(used)} spent or held, and this request could cost up to {_credits(amount)}; {when}."
    )


def spend_limits_hold(*, hold: CreditHold, limits: Sequence[SpendLimit], now: datetime | None = None) -> None:
    """Holds `hold.amount` against each limit, or raises SpendLimitExceeded (the
    caller's transaction then rolls back the wallet's hold too). The caller holds the
    user's wallet lock (billing.services.wallet_hold_place): counters are created and
    moved only under it, so get_or_create cannot race, and the counter rows are
    locked in the order of `limits` (end user, key, then account)."""
    now = now or timezone.now()
    amount = hold.amount
    counters: dict[str, int] = {}
    for limit in limits:
        key = limit.counter_key(now)
        counter, _ = SpendCounter.objects.select_for_update().get_or_create(**key)
        used = counter.spent + counter.held
        if limit.budget is not None and used + amount > limit.budget:
            raise _refusal(limit, used=used, amount=amount, now=now)
        SpendCounter.objects.filter(pk=counter.pk).update(held=F("held") + amount)
        counters[limit.hold_field] = counter.pk
    CreditHold.objects.filter(pk=hold.pk).update(**counters)
    for name, value in counters.items():
        setattr(hold, name, value)


def spend_counters_settle(*, counter_ids: Iterable[int | None], held: Decimal, charge: Decimal) -> None:
    """A hold of `held` closed with `charge` spent (0 when released): moves its
    counters in one statement. The caller holds the wallet lock. (PostgreSQL's
    settling debit does the same inside billing._sql's statement.)"""
    ids = [pk for pk in counter_ids if pk is not None]
    if ids:
        SpendCounter.objects.filter(pk__in=ids).update(held=F("held") - held, spent=F("spent") + charge)


# --- reads ------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowSpend:
    spent: Decimal
    held: Decimal
    resets_at: datetime | None


def _spend(counter: SpendCounter | None, window: str | None, now: datetime) -> WindowSpend:
    resets_at = window_end(window, window_start(window, now))
    if counter is None:
        return WindowSpend(ZERO, ZERO, resets_at)
    return WindowSpend(counter.spent, counter.held, resets_at)


def api_keys_spend(*, api_keys: Sequence[ApiKey], now: datetime | None = None) -> dict[int, WindowSpend]:
    """Each key's spend in its current budget window, in one query."""
    now = now or timezone.now()
    starts = {window_start(window, now) for window in (None, *SpendWindow.values)}
    counters = {
        (c.api_key_id, c.window, c.window_start): c
        for c in SpendCounter.objects.filter(
            api_key__in=[k.pk for k in api_keys], end_user__isnull=True, window_start__in=starts
        )
    }
    return {
        key.pk: _spend(
            counters.get((key.pk, key.budget_window or "", window_start(key.budget_window, now))),
            key.budget_window,
            now,
        )
        for key in api_keys
    }


def end_users_spend(*, end_users: Sequence[EndUser], now: datetime | None = None) -> dict[int, WindowSpend]:
    """Each end user's spend in its current budget window (its override's, else its
    key's: `end_user.api_key` loaded), in one query; for life when it has no budget."""
    now = now or timezone.now()
    starts = {window_start(window, now) for window in (None, *SpendWindow.values)}
    counters = {
        (c.end_user_id, c.window, c.window_start): c
        for c in SpendCounter.objects.filter(end_user__in=[u.pk for u in end_users], window_start__in=starts)
    }
    spend = {}
    for end_user in end_users:
        window = end_user_budget(api_key=end_user.api_key, end_user=end_user)[1]
        counter = counters.get((end_user.pk, window or "", window_start(window, now)))
        spend[end_user.pk] = _spend(counter, window, now)
    return spend


def members_spend(*, memberships: Sequence[Membership], now: datetime | None = None) -> dict[int, WindowSpend]:
    """Each member's spend in their current budget window (lifetime without a
    window), in one query."""
    now = now or timezone.now()
    starts = {window_start(window, now) for window in (None, *SpendWindow.values)}
    counters = {
        (c.membership_id, c.window, c.window_start): c
        for c in SpendCounter.objects.filter(membership__in=[m.pk for m in memberships], window_start__in=starts)
    }
    return {
        m.pk: _spend(counters.get((m.pk, m.budget_window or "", window_start(m.budget_window, now))), m.budget_window, now)
        for m in memberships
    }


def account_spend(*, user: User, now: datetime | None = None) -> WindowSpend:
    """The account's spend in its current cap window."""
    now = now or timezone.now()
    counter = SpendCounter.objects.filter(
        api_key__isnull=True, **SpendLimit(user.pk, None, "", ZERO, user.spend_cap_window).counter_key(now)
    ).first()
    return _spend(counter, user.spend_cap_window, now)
