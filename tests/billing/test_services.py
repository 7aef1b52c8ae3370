from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext

from billing.models import CreditHold, CreditTransaction, Wallet
from billing.money import is_low_balance
from billing.selectors import wallet_status
from billing.services import (
    wallet_adjust,
    wallet_debit,
    wallet_grant,
    wallet_hold_place,
    wallet_hold_release,
    wallet_refund,
    wallet_reverse,
    wallet_topup,
)
from core.exceptions import ApplicationError, InsufficientCredits, StateConflict

pytestmark = pytest.mark.django_db


def balance_of(user) -> Decimal:  # noqa: ANN001
    return Wallet.objects.get(user=user).balance


def ledger_sum(user) -> Decimal:  # noqa: ANN001
    return sum((row.amount for row in CreditTransaction.objects.filter(wallet__user=user)), Decimal("0"))


def test_every_user_gets_an_empty_wallet(owner):
    wallet = Wallet.objects.get(user=owner)
    assert (wallet.balance, wallet.held) == (Decimal("0"), Decimal("0"))


def test_each_kind_writes_one_row_with_its_balance_after(owner, grant_staff):
    grant = wallet_grant(user=owner, amount=Decimal("10"), reason="welcome", actor=grant_staff)
    topup = wallet_topup(user=owner, amount=Decimal("25.5"), reference="pi_1")
    debit = wallet_debit(user=owner, amount=Decimal("0.12345678"), reference="turn-1")
    refund = wallet_refund(user=owner, amount=Decimal("0.12345678"), reason="bad answer", reference="turn-1")
    reversal = wallet_reverse(user=owner, amount=Decimal("5.5"), reference="re_1", reason="refund at Stripe")
    adjustment = wallet_adjust(user=owner, amount=Decimal("-0.00000001"), reason="rounding fix", actor=grant_staff)

    assert [
        (row.kind, row.amount, row.balance_after) for row in (grant, topup, debit, refund, reversal, adjustment)
    ] == [
        ("grant", Decimal("10.00000000"), Decimal("10.00000000")),
        ("topup", Decimal("25.50000000"), Decimal("35.50000000")),
        ("debit", Decimal("-0.12345678"), Decimal("35.37654322")),
        ("refund", Decimal("0.12345678"), Decimal("35.50000000")),
        ("reversal", Decimal("-5.50000000"), Decimal("30.00000000")),
        ("adjustment", Decimal("-0.00000001"), Decimal("29.99999999")),
    ]
    assert grant.actor == grant_staff and adjustment.actor == grant_staff and topup.actor is None
    assert balance_of(owner) == Decimal("29.99999999") == ledger_sum(owner)
    assert CreditTransaction.objects.filter(wallet__user=owner).count() == 6


@pytest.mark.parametrize(
    "post",
    [
        lambda user: wallet_grant(user=user, amount=Decimal("5"), reason="r", reference="g-1"),
        lambda user: wallet_topup(user=user, amount=Decimal("5"), reference="pi_x"),
        lambda user: wallet_debit(user=user, amount=Decimal("5"), reference="turn-x"),
        lambda user: wallet_refund(user=user, amount=Decimal("5"), reason="r", reference="rf-x"),
        lambda user: wallet_reverse(user=user, amount=Decimal("5"), reference="re_x", reason="r"),
        lambda user: wallet_adjust(user=user, amount=Decimal("5"), reason="r", reference="adj-x"),
    ],
    ids=["grant", "topup", "debit", "refund", "reversal", "adjustment"],
)
def test_a_repeated_reference_returns_the_first_row_and_changes_nothing(owner, post):
    first = post(owner)
    balance = balance_of(owner)
    again = post(owner)
    assert again.pk == first.pk
    assert balance_of(owner) == balance == ledger_sum(owner)
    assert CreditTransaction.objects.filter(wallet__user=owner).count() == 1


def test_a_repeated_reference_inside_the_callers_transaction_keeps_the_callers_work(owner):
    wallet_grant(user=owner, amount=Decimal("3"), reason="start")
    with transaction.atomic():
        first = wallet_debit(user=owner, amount=Decimal("1"), reference="turn-in-tx")
        again = wallet_debit(user=owner, amount=Decimal("1"), reference="turn-in-tx")
        wallet_grant(user=owner, amount=Decimal("1"), reason="after the replay")
    assert again.pk == first.pk
    assert balance_of(owner) == Decimal("3") == ledger_sum(owner)


def test_a_reference_of_another_wallet_is_refused_not_returned(owner, other_user):
    wallet_topup(user=owner, amount=Decimal("5"), reference="pi_shared")
    with pytest.raises(StateConflict):
        wallet_topup(user=other_user, amount=Decimal("5"), reference="pi_shared")
    assert balance_of(other_user) == Decimal("0")


def test_the_same_reference_under_another_kind_is_a_new_row(owner):
    wallet_topup(user=owner, amount=Decimal("5"), reference="ch_1")
    wallet_reverse(user=owner, amount=Decimal("5"), reference="ch_1", reason="refunded")
    assert balance_of(owner) == Decimal("0")
    assert CreditTransaction.objects.filter(reference="ch_1").count() == 2


def test_a_charge_is_rounded_up_at_the_eighth_place(owner):
    debit = wallet_debit(user=owner, amount=Decimal("0.000000001"), reference="turn-tiny")
    reversal = wallet_reverse(user=owner, amount=Decimal("1.000000001"), reference="re_tiny", reason="r")
    assert debit.amount == Decimal("-0.00000001")
    assert reversal.amount == Decimal("-1.00000001")
    assert balance_of(owner) == Decimal("-1.00000002")


def test_debits_and_reversals_may_take_the_balance_below_zero(owner):
    wallet_grant(user=owner, amount=Decimal("1"), reason="r")
    wallet_debit(user=owner, amount=Decimal("2.5"), reference="turn-big")
    wallet_reverse(user=owner, amount=Decimal("1"), reference="dp_1", reason="dispute")
    assert balance_of(owner) == Decimal("-2.50000000") == ledger_sum(owner)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda u: wallet_grant(user=u, amount=Decimal("0"), reason="r"), "amount"),
        (lambda u: wallet_grant(user=u, amount=Decimal("-1"), reason="r"), "amount"),
        (lambda u: wallet_grant(user=u, amount="abc", reason="r"), "amount"),
        (lambda u: wallet_grant(user=u, amount="NaN", reason="r"), "amount"),
        (lambda u: wallet_grant(user=u, amount=Decimal("1.123456789"), reason="r"), "amount"),
        (lambda u: wallet_grant(user=u, amount=Decimal("10000.00000001"), reason="r"), "amount"),
        (lambda u: wallet_grant(user=u, amount=Decimal("1"), reason="   "), "reason"),
        (lambda u: wallet_grant(user=u, amount=Decimal("1"), reason="r", reference=""), "reference"),
        (lambda u: wallet_topup(user=u, amount=Decimal("1"), reference=None), "reference"),
        (lambda u: wallet_topup(user=u, amount=Decimal("0.000000001"), reference="pi"), "amount"),
        (lambda u: wallet_debit(user=u, amount=Decimal("-1"), reference="t"), "amount"),
        (lambda u: wallet_debit(user=u, amount=Decimal("1"), reference="x" * 256), "reference"),
        (lambda u: wallet_refund(user=u, amount=Decimal("1"), reason=""), "reason"),
        (lambda u: wallet_reverse(user=u, amount=Decimal("0"), reference="re", reason="r"), "amount"),
        (lambda u: wallet_adjust(user=u, amount=Decimal("0"), reason="r"), "amount"),
        (lambda u: wallet_adjust(user=u, amount=Decimal("1E+10"), reason="r"), "amount"),
    ],
)
def test_bad_amounts_and_references_are_refused_naming_the_field(owner, call, field):
    with pytest.raises(ApplicationError) as raised:
        call(owner)
    assert list(raised.value.fields) == [field]
    assert CreditTransaction.objects.count() == 0
    assert balance_of(owner) == Decimal("0")


def test_money_is_never_a_float(owner):
    with pytest.raises(TypeError):
        wallet_grant(user=owner, amount=0.1, reason="float")


def test_a_user_without_a_wallet_row_gets_one_on_first_use(owner):
    Wallet.objects.filter(user=owner).delete()
    wallet_grant(user=owner, amount=Decimal("2"), reason="r")
    assert balance_of(owner) == Decimal("2")


# --- holds ------------------------------------------------------------------------


def test_a_hold_reserves_and_the_debit_settles_it_in_the_same_transaction(owner):
    wallet_grant(user=owner, amount=Decimal("10"), reason="r")
    hold = wallet_hold_place(user=owner, amount=Decimal("4"), reference="turn-h")
    assert wallet_status(user=owner)["held"] == Decimal("4")
    assert wallet_status(user=owner)["available"] == Decimal("6")

    row = wallet_debit(user=owner, amount=Decimal("1.25"), reference="turn-h", release_hold="turn-h")
    hold.refresh_from_db()
    assert hold.status == CreditHold.Status.SETTLED and hold.closed_at is not None
    status = wallet_status(user=owner)
    assert (status["balance"], status["held"], status["available"]) == (
        Decimal("8.75"),
        Decimal("0"),
        Decimal("8.75"),
    )
    assert row.balance_after == Decimal("8.75")

    # A redelivered completion neither charges nor releases again.
    wallet_debit(user=owner, amount=Decimal("1.25"), reference="turn-h", release_hold="turn-h")
    wallet_hold_release(user=owner, reference="turn-h")
    assert wallet_status(user=owner)["balance"] == Decimal("8.75")
    assert wallet_status(user=owner)["held"] == Decimal("0")


def test_a_reference_the_caller_knows_is_new_takes_no_savepoint(owner):
    """A turn's hold and debit (reference: the turn, inserted or locked unfinished in
    the same transaction) skip the savepoint that guards a replay, and write the same."""
    wallet_grant(user=owner, amount=Decimal("10"), reason="r")
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        wallet_hold_place(user=owner, amount=Decimal("4"), reference="turn-n", reference_is_new=True)
        row = wallet_debit(
            user=owner, amount=Decimal("1.25"), reference="turn-n", release_hold="turn-n", reference_is_new=True
        )
    assert not [query for query in queries if "SAVEPOINT" in query["sql"].upper()]
    assert CreditHold.objects.get(reference="turn-n").status == CreditHold.Status.SETTLED
    assert row.balance_after == balance_of(owner) == Decimal("8.75") == ledger_sum(owner)
    assert wallet_status(user=owner)["held"] == Decimal("0")


def test_a_reference_wrongly_called_new_fails_the_whole_transaction(owner):
    """Without the savepoint a repeat cannot be answered: the caller's transaction
    fails as a whole, and nothing of it is written."""
    wallet_grant(user=owner, amount=Decimal("10"), reason="r")
    wallet_hold_place(user=owner, amount=Decimal("4"), reference="turn-r")
    wallet_debit(user=owner, amount=Decimal("1"), reference="turn-r", release_hold="turn-r")
    for place_again in (
        lambda: wallet_hold_place(user=owner, amount=Decimal("4"), reference="turn-r", reference_is_new=True),
        lambda: wallet_debit(user=owner, amount=Decimal("1"), reference="turn-r", reference_is_new=True),
    ):
        with pytest.raises(IntegrityError), transaction.atomic():
            wallet_topup(user=owner, amount=Decimal("5"), reference="pi_in_the_failed_tx")
            place_again()
    assert not CreditTransaction.objects.filter(reference="pi_in_the_failed_tx").exists()
    assert balance_of(owner) == Decimal("9") == ledger_sum(owner)
    assert wallet_status(user=owner)["held"] == Decimal("0")


def test_a_released_hold_charges_nothing_and_releasing_twice_is_harmless(owner):
    wallet_grant(user=owner, amount=Decimal("10"), reason="r")
    wallet_hold_place(user=owner, amount=Decimal("3"), reference="turn-f")
    wallet_hold_release(user=owner, reference="turn-f")
    wallet_hold_release(user=owner, reference="turn-f")
    assert CreditHold.objects.get(reference="turn-f").status == CreditHold.Status.RELEASED
    assert wallet_status(user=owner)["held"] == Decimal("0")
    assert balance_of(owner) == Decimal("10")


def test_a_free_turn_settles_its_hold_without_a_ledger_row(owner, settings):
    settings.BILLING_OVERDRAFT_LIMIT = Decimal("3")  # warn mode: the hold goes into overdraft
    wallet_hold_place(user=owner, amount=Decimal("3"), reference="turn-free")
    assert wallet_debit(user=owner, amount=Decimal("0"), reference="turn-free", release_hold="turn-free") is None
    assert CreditHold.objects.get(reference="turn-free").status == CreditHold.Status.SETTLED
    assert wallet_status(user=owner)["held"] == Decimal("0")
    assert CreditTransaction.objects.count() == 0


def test_block_mode_refuses_a_hold_the_available_balance_cannot_cover(owner, settings):
    settings.BILLING_ENFORCEMENT = "block"
    wallet_grant(user=owner, amount=Decimal("5"), reason="r")
    wallet_hold_place(user=owner, amount=Decimal("4"), reference="turn-1")
    with pytest.raises(InsufficientCredits) as raised:
        wallet_hold_place(user=owner, amount=Decimal("1.00000001"), reference="turn-2")
    assert raised.value.status_code == 402
    assert not CreditHold.objects.filter(reference="turn-2").exists()
    # Exactly what is available is fine, and a replay of a placed hold is never refused.
    wallet_hold_place(user=owner, amount=Decimal("1"), reference="turn-3")
    assert wallet_hold_place(user=owner, amount=Decimal("4"), reference="turn-1").amount == Decimal("4")
    assert wallet_status(user=owner)["available"] == Decimal("0")


def test_warn_mode_places_the_hold_anyway_within_the_overdraft_limit(owner, settings):
    settings.BILLING_ENFORCEMENT = "warn"
    settings.BILLING_OVERDRAFT_LIMIT = Decimal("7")
    hold = wallet_hold_place(user=owner, amount=Decimal("7"), reference="turn-w")
    assert hold.status == CreditHold.Status.ACTIVE
    assert wallet_status(user=owner)["available"] == Decimal("-7")


def test_a_hold_reference_of_another_wallet_is_refused(owner, other_user):
    wallet_hold_place(user=owner, amount=Decimal("1"), reference="turn-shared")
    with pytest.raises(StateConflict):
        wallet_hold_place(user=other_user, amount=Decimal("1"), reference="turn-shared")
    # Releasing someone else's hold does nothing.
    wallet_hold_release(user=other_user, reference="turn-shared")
    assert CreditHold.objects.get(reference="turn-shared").status == CreditHold.Status.ACTIVE


def test_low_balance_is_strictly_below_the_threshold(settings):
    settings.LOW_BALANCE_THRESHOLD = Decimal("5.0")
    assert is_low_balance(Decimal("4.99999999"))
    assert not is_low_balance(Decimal("5"))


def test_wallet_status_reports_every_figure(owner, settings):
    settings.LOW_BALANCE_THRESHOLD = Decimal("5.0")
    settings.BILLING_ENFORCEMENT = "block"
    wallet_grant(user=owner, amount=Decimal("6"), reason="r")
    wallet_hold_place(user=owner, amount=Decimal("2"), reference="t")
    assert wallet_status(user=owner) == {
        "balance": Decimal("6"),
        "held": Decimal("2"),
        "available": Decimal("4"),
        "low_balance": False,
        "low_balance_threshold": Decimal("5.0"),
        "enforcement": "block",
        "grants": [],
    }
