"""Spend limits at the service level (billing.limits through billing.services): the
windows, holding against a key budget and an account cap, settling, and windows
that really reset. Runs on SQLite and on PostgreSQL (there the settling debit is
billing._sql's one statement)."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from accounts.services import api_key_create, api_key_limits_set, user_spend_cap_set
from billing.limits import (
    EPOCH,
    SpendLimitExceeded,
    account_spend,
    api_keys_spend,
    spend_limits_for,
    window_end,
    window_start,
)
from billing.models import CreditHold, CreditTransaction, SpendCounter, Wallet
from billing.services import wallet_debit, wallet_grant, wallet_hold_place, wallet_hold_release

pytestmark = pytest.mark.django_db

WEDNESDAY = datetime(2026, 12, 2, 11, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("window", "start", "end"),
    [
        ("day", datetime(2026, 12, 2, tzinfo=UTC), datetime(2026, 12, 3, tzinfo=UTC)),
        ("week", datetime(2026, 11, 30, tzinfo=UTC), datetime(2026, 12, 7, tzinfo=UTC)),  # Monday to Monday
        ("month", datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)),
        (None, EPOCH, None),
    ],
)
def test_windows_start_and_end_in_utc(window, start, end):
    assert window_start(window, WEDNESDAY) == start
    assert window_end(window, start) == end


def test_a_window_is_computed_in_utc_whatever_the_offset_of_now():
    from datetime import timedelta, timezone

    late_in_tokyo = datetime(2026, 12, 3, 1, 0, tzinfo=timezone(timedelta(hours=9)))  # 16:00 UTC on the 2nd
    assert window_start("day", late_in_tokyo) == datetime(2026, 12, 2, tzinfo=UTC)


def test_month_ends_are_right_for_short_and_long_months():
    assert window_end("month", datetime(2027, 2, 1, tzinfo=UTC)) == datetime(2027, 3, 1, tzinfo=UTC)
    assert window_end("month", datetime(2027, 1, 1, tzinfo=UTC)) == datetime(2027, 2, 1, tzinfo=UTC)


@pytest.fixture
def funded(owner):  # noqa: ANN001, ANN201
    wallet_grant(user=owner, amount=Decimal("100"), reason="test credits")
    return owner


@pytest.fixture
def ci_key(funded):  # noqa: ANN001, ANN201
    api_key, _ = api_key_create(user=funded, name="ci", budget_credits=Decimal("10"), budget_window="day")
    return api_key


def hold(user, api_key, amount: str, reference: str, now: datetime = WEDNESDAY) -> CreditHold:  # noqa: ANN001
    return wallet_hold_place(
        user=user, amount=Decimal(amount), reference=reference,
        spend_limits=spend_limits_for(user=user, api_key=api_key), now=now,
    )  # fmt: skip


def test_a_hold_counts_against_the_key_budget_and_settling_moves_it_to_spent(funded, ci_key):
    placed = hold(funded, ci_key, "4", "turn-1")
    counter = SpendCounter.objects.get(api_key=ci_key)
    assert (counter.window, counter.window_start, counter.spent, counter.held) == (
        "day", datetime(2026, 12, 2, tzinfo=UTC), Decimal("0"), Decimal("4"),
    )  # fmt: skip
    assert placed.key_counter_id == counter.pk and placed.cap_counter_id is None

    wallet_debit(user=funded, amount=Decimal("1.25"), reference="turn-1", release_hold="turn-1")

    counter.refresh_from_db()
    assert (counter.spent, counter.held) == (Decimal("1.25"), Decimal("0"))
    wallet = Wallet.objects.get(user=funded)
    assert (wallet.balance, wallet.held) == (Decimal("98.75"), Decimal("0"))


def test_a_released_hold_leaves_nothing_spent(funded, ci_key):
    hold(funded, ci_key, "4", "turn-1")
    wallet_hold_release(user=funded, reference="turn-1")
    wallet_hold_release(user=funded, reference="turn-1")  # twice: once
    counter = SpendCounter.objects.get(api_key=ci_key)
    assert (counter.spent, counter.held) == (Decimal("0"), Decimal("0"))


def test_a_free_turn_settles_its_hold_with_nothing_spent(funded, ci_key):
    hold(funded, ci_key, "4", "turn-1")
    assert wallet_debit(user=funded, amount=Decimal("0"), reference="turn-1", release_hold="turn-1") is None
    counter = SpendCounter.objects.get(api_key=ci_key)
    assert (counter.spent, counter.held) == (Decimal("0"), Decimal("0"))


def test_past_the_budget_the_hold_is_refused_naming_the_limit_and_nothing_is_written(funded, ci_key):
    hold(funded, ci_key, "6", "turn-1")
    wallet_debit(user=funded, amount=Decimal("5.5"), reference="turn-1", release_hold="turn-1")
    hold(funded, ci_key, "4", "turn-2")  # 5.5 spent + 4 held = 9.5

    with pytest.raises(SpendLimitExceeded) as refused:
        hold(funded, ci_key, "0.50000001", "turn-3")

    assert str(refused.value) == (
        "API key 'ci' budget of 10 credits per day: 9.5 spent or held, and this request could cost up to "
        "0.50000001; resets at 2026-12-03T00:00:00Z."
    )
    assert refused.value.status_code == 402
    assert not CreditHold.objects.filter(reference="turn-3").exists()
    wallet = Wallet.objects.get(user=funded)
    assert (wallet.balance, wallet.held) == (Decimal("94.5"), Decimal("4"))
    counter = SpendCounter.objects.get(api_key=ci_key)
    assert (counter.spent, counter.held) == (Decimal("5.5"), Decimal("4"))
    hold(funded, ci_key, "0.5", "turn-4")  # exactly up to the budget is allowed


def test_a_daily_budget_resets_at_midnight_utc_with_no_job(funded, ci_key):
    hold(funded, ci_key, "10", "turn-1")
    wallet_debit(user=funded, amount=Decimal("10"), reference="turn-1", release_hold="turn-1")
    with pytest.raises(SpendLimitExceeded):
        hold(funded, ci_key, "1", "turn-2", now=datetime(2026, 12, 2, 23, 59, 59, tzinfo=UTC))

    next_day = datetime(2026, 12, 3, 0, 0, 1, tzinfo=UTC)
    hold(funded, ci_key, "10", "turn-3", now=next_day)

    spend = api_keys_spend(api_keys=[ci_key], now=next_day)[ci_key.pk]
    assert (spend.spent, spend.held, spend.resets_at) == (Decimal("0"), Decimal("10"), datetime(2026, 12, 4, tzinfo=UTC))
    yesterday = api_keys_spend(api_keys=[ci_key], now=WEDNESDAY)[ci_key.pk]
    assert (yesterday.spent, yesterday.held) == (Decimal("10"), Decimal("0"))


def test_a_turn_settled_after_its_window_ended_counts_in_the_window_it_started_in(funded, ci_key):
    hold(funded, ci_key, "3", "turn-1", now=datetime(2026, 12, 2, 23, 59, tzinfo=UTC))
    wallet_debit(user=funded, amount=Decimal("2"), reference="turn-1", release_hold="turn-1")  # settles later
    counters = {c.window_start.day: (c.spent, c.held) for c in SpendCounter.objects.filter(api_key=ci_key)}
    assert counters == {2: (Decimal("2"), Decimal("0"))}


def test_weekly_and_monthly_budgets_reset_on_monday_and_the_first(funded):
    weekly, _ = api_key_create(user=funded, name="weekly", budget_credits=Decimal("5"), budget_window="week")
    monthly, _ = api_key_create(user=funded, name="monthly", budget_credits=Decimal("5"), budget_window="month")
    sunday_night = datetime(2026, 12, 6, 23, 0, tzinfo=UTC)
    for key in (weekly, monthly):
        hold(funded, key, "5", f"{key.name}-1", now=WEDNESDAY)
        with pytest.raises(SpendLimitExceeded):
            hold(funded, key, "1", f"{key.name}-2", now=sunday_night)
    hold(funded, weekly, "5", "weekly-3", now=datetime(2026, 12, 7, 0, 0, tzinfo=UTC))  # Monday
    with pytest.raises(SpendLimitExceeded):
        hold(funded, monthly, "1", "monthly-3", now=datetime(2026, 12, 31, 23, 59, tzinfo=UTC))
    hold(funded, monthly, "5", "monthly-4", now=datetime(2027, 1, 1, 0, 0, tzinfo=UTC))


def test_a_lifetime_budget_never_resets(funded):
    key, _ = api_key_create(user=funded, name="once", budget_credits=Decimal("2"))
    hold(funded, key, "2", "turn-1")
    with pytest.raises(SpendLimitExceeded) as refused:
        hold(funded, key, "1", "turn-2", now=datetime(2031, 1, 1, tzinfo=UTC))
    assert "API key 'once' budget of 2 credits (lifetime): 2 spent or held" in str(refused.value)
    assert "it does not reset" in str(refused.value)


def test_the_account_cap_counts_every_key_and_refuses_naming_itself(funded):
    user_spend_cap_set(user=funded, spend_cap_credits=Decimal("5"), spend_cap_window="month")
    first, _ = api_key_create(user=funded, name="first")
    second, _ = api_key_create(user=funded, name="second", budget_credits=Decimal("100"))
    hold(funded, first, "3", "turn-1")
    placed = hold(funded, second, "2", "turn-2")
    assert placed.key_counter_id is not None and placed.cap_counter_id is not None

    with pytest.raises(SpendLimitExceeded) as refused:
        hold(funded, first, "0.01", "turn-3")
    assert str(refused.value).startswith("Account spending cap of 5 credits per month: 5 spent or held")
    assert "resets at 2027-01-01T00:00:00Z" in str(refused.value)
    # The refusal rolled back the key counter's share too.
    assert SpendCounter.objects.get(api_key=second).held == Decimal("2")

    wallet_debit(user=funded, amount=Decimal("1"), reference="turn-2", release_hold="turn-2")
    spend = account_spend(user=funded, now=WEDNESDAY)
    assert (spend.spent, spend.held) == (Decimal("1"), Decimal("3"))
    key_counter = SpendCounter.objects.get(api_key=second)
    assert (key_counter.spent, key_counter.held) == (Decimal("1"), Decimal("0"))


def test_a_replayed_hold_is_not_counted_twice(funded, ci_key):
    first = hold(funded, ci_key, "4", "turn-1")
    assert hold(funded, ci_key, "4", "turn-1") == first
    assert SpendCounter.objects.get(api_key=ci_key).held == Decimal("4")


def test_a_key_without_limits_writes_no_counter(funded):
    plain, _ = api_key_create(user=funded, name="plain")
    assert spend_limits_for(user=funded, api_key=plain) == []
    hold(funded, plain, "4", "turn-1")
    wallet_debit(user=funded, amount=Decimal("1"), reference="turn-1", release_hold="turn-1")
    assert not SpendCounter.objects.exists()
    assert CreditTransaction.objects.filter(kind="debit").count() == 1


def test_a_lowered_budget_applies_to_the_next_request(funded, ci_key):
    hold(funded, ci_key, "3", "turn-1")
    api_key_limits_set(api_key=ci_key, budget_credits=Decimal("3"))
    with pytest.raises(SpendLimitExceeded):
        hold(funded, ci_key, "0.1", "turn-2")
