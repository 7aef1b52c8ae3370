"""A grant past its expires_at is never spent: a debit expires the due lots first,
under the wallet lock, whether or not the sweep ran, and the sweep after it finds
nothing more to expire (issue 29)."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing.models import CreditGrant, CreditHold, CreditTransaction, Wallet
from billing.services import grant_expire, grants_expire_due, wallet_debit, wallet_grant, wallet_hold_place
from tests.billing.test_grants import assert_books_balance, travel

pytestmark = pytest.mark.django_db

D = Decimal


def soon():  # noqa: ANN201
    return timezone.now() + timedelta(minutes=5)


def pass_expiry(monkeypatch, grant: CreditTransaction) -> CreditGrant:  # noqa: ANN001
    """Time passes the lot's expires_at (soon()), and the sweep has not run."""
    travel(monkeypatch, timedelta(minutes=5, seconds=1))
    return CreditGrant.objects.get(transaction=grant)


def ledger(user) -> list[tuple[str, Decimal, Decimal]]:  # noqa: ANN001
    rows = CreditTransaction.objects.filter(wallet__user=user).order_by("id")
    return list(rows.values_list("kind", "amount", "balance_after"))


def test_a_held_grant_past_its_expiry_is_expired_by_the_debit_not_spent(owner, monkeypatch):
    """The reported case: a hold placed before expiry protected the lot from the
    sweep, and the settling debit spent it (ledger: grant +10, debit -10)."""
    wallet_grant(user=owner, amount=D("5"), reason="plain")
    grant = wallet_grant(user=owner, amount=D("10"), reason="trial", promotional=True, expires_at=soon())
    wallet_hold_place(user=owner, amount=D("10"), reference="turn-1")  # falls on the grant, used first
    lot = pass_expiry(monkeypatch, grant)

    wallet_debit(user=owner, amount=D("4"), reference="turn-1", release_hold="turn-1")

    assert ledger(owner) == [
        ("grant", D("5"), D("5")),
        ("grant", D("10"), D("15")),
        ("expiry", D("-10"), D("5")),  # before the debit ...
        ("debit", D("-4"), D("1")),  # ... which the rest of the balance paid
    ]
    lot.refresh_from_db()
    assert (lot.remaining, lot.expired_at is not None) == (D("0"), True)
    expiry = CreditTransaction.objects.get(kind="expiry")
    assert expiry.reference == str(lot.pk)
    assert CreditHold.objects.get(reference="turn-1").status == CreditHold.Status.SETTLED
    # The sweep, later, expires nothing twice.
    assert grants_expire_due() == 0
    assert grant_expire(grant_id=lot.pk) is None
    assert CreditTransaction.objects.filter(kind="expiry").count() == 1
    wallet = assert_books_balance(owner)
    assert (wallet.balance, wallet.held, wallet.grants_remaining) == (D("1"), D("0"), D("0"))


def test_with_nothing_else_left_the_debit_is_owed_not_taken_from_the_expired_grant(owner, settings, monkeypatch):
    settings.BILLING_ENFORCEMENT = "block"
    grant = wallet_grant(user=owner, amount=D("10"), reason="trial", expires_at=soon())
    wallet_hold_place(user=owner, amount=D("10"), reference="turn-1")
    pass_expiry(monkeypatch, grant)

    wallet_debit(user=owner, amount=D("3.5"), reference="turn-1", release_hold="turn-1")

    assert ledger(owner) == [
        ("grant", D("10"), D("10")),
        ("expiry", D("-10"), D("0")),
        ("debit", D("-3.5"), D("-3.5")),  # a debit is never refused: what was used is owed
    ]
    wallet = assert_books_balance(owner)
    assert (wallet.balance, wallet.held, wallet.grants_remaining) == (D("-3.5"), D("0"), D("0"))


def test_a_debit_without_a_hold_expires_every_due_lot_and_uses_the_others_in_order(owner, monkeypatch):
    due_promo = wallet_grant(user=owner, amount=D("2"), reason="promo", promotional=True, expires_at=soon())
    due_plain = wallet_grant(user=owner, amount=D("3"), reason="goodwill", expires_at=soon())
    later = wallet_grant(user=owner, amount=D("4"), reason="later", expires_at=timezone.now() + timedelta(days=3))
    pass_expiry(monkeypatch, due_promo)
    lots = [CreditGrant.objects.get(transaction=row) for row in (due_promo, due_plain)]

    wallet_debit(user=owner, amount=D("1"), reference="turn-1")

    assert ledger(owner)[3:] == [
        ("expiry", D("-2"), D("7")),
        ("expiry", D("-3"), D("4")),
        ("debit", D("-1"), D("3")),
    ]
    assert sorted(CreditTransaction.objects.filter(kind="expiry").values_list("reference", flat=True)) == sorted(
        str(lot.pk) for lot in lots
    )
    assert CreditGrant.objects.get(transaction=later).remaining == D("3")
    assert grants_expire_due() == 0
    wallet = assert_books_balance(owner)
    assert (wallet.balance, wallet.grants_remaining) == (D("3"), D("3"))


def test_a_lot_the_sweep_left_partly_held_before_is_expired_at_the_next_debit(owner, monkeypatch):
    """A lot expired under the earlier rule kept the part turns in flight held (its
    expired_at set, something left): the next debit expires that rest (reference:
    `<lot>:<what was left>`), it does not spend it."""
    wallet_grant(user=owner, amount=D("5"), reason="plain")
    grant = wallet_grant(user=owner, amount=D("10"), reason="trial", promotional=True, expires_at=soon())
    lot = pass_expiry(monkeypatch, grant)
    # What that sweep wrote: 6 expired, 4 left for the turn that held them.
    CreditTransaction.objects.create(
        wallet=lot.wallet, kind="expiry", amount=D("-6"), balance_after=D("9"), reference=str(lot.pk)
    )
    CreditGrant.objects.filter(pk=lot.pk).update(remaining=D("4"), expired_at=timezone.now())
    Wallet.objects.filter(pk=lot.wallet_id).update(balance=D("9"), grants_remaining=D("4"))

    wallet_debit(user=owner, amount=D("1"), reference="turn-1")

    assert ledger(owner)[-2:] == [("expiry", D("-4"), D("5")), ("debit", D("-1"), D("4"))]
    assert CreditTransaction.objects.filter(kind="expiry").latest("id").reference == f"{lot.pk}:4.00000000"
    assert grants_expire_due() == 0
    assert assert_books_balance(owner).balance == D("4")


def test_a_replayed_debit_changes_nothing_and_expires_nothing_twice(owner, monkeypatch):
    wallet_grant(user=owner, amount=D("5"), reason="plain")
    grant = wallet_grant(user=owner, amount=D("10"), reason="trial", expires_at=soon())
    pass_expiry(monkeypatch, grant)
    first = wallet_debit(user=owner, amount=D("2"), reference="turn-1")
    assert wallet_debit(user=owner, amount=D("2"), reference="turn-1").pk == first.pk
    assert [kind for kind, _, _ in ledger(owner)] == ["grant", "grant", "expiry", "debit"]
    assert assert_books_balance(owner).balance == D("3")


def test_the_sweep_expires_all_that_is_left_even_while_turns_hold_it(owner, monkeypatch):
    """Held credits of an expired lot are not kept for the turns in flight (they
    could only be spent by a debit, which no longer spends an expired lot): the
    sweep expires everything, and the turns are paid from the rest."""
    wallet_grant(user=owner, amount=D("5"), reason="plain")
    grant = wallet_grant(user=owner, amount=D("10"), reason="trial", promotional=True, expires_at=soon())
    wallet_hold_place(user=owner, amount=D("4"), reference="turn-1")
    pass_expiry(monkeypatch, grant)

    assert grants_expire_due() == 1
    assert grants_expire_due() == 0
    wallet_debit(user=owner, amount=D("3"), reference="turn-1", release_hold="turn-1")

    assert ledger(owner)[2:] == [("expiry", D("-10"), D("5")), ("debit", D("-3"), D("2"))]
    wallet = assert_books_balance(owner)
    assert (wallet.balance, wallet.held, wallet.grants_remaining) == (D("2"), D("0"), D("0"))


def test_a_debit_of_a_wallet_whose_lots_are_not_due_asks_nothing_more(owner):
    """The check reads the lots the debit reads anyway: no statement is added, and no
    `expiry` row or savepoint is written, while nothing is due."""
    wallet_grant(user=owner, amount=D("5"), reason="plain")
    wallet_grant(user=owner, amount=D("10"), reason="trial", promotional=True, expires_at=soon())
    with CaptureQueriesContext(connection) as captured:
        wallet_debit(user=owner, amount=D("1"), reference="turn-1")
    statements = [
        query["sql"].split()[0].upper()
        for query in captured.captured_queries
        if "billing_autotopup" not in query["sql"]
    ]
    # On PostgreSQL the one-statement debit is tried first: it moves no wallet with
    # grants left, so the ORM path follows.
    first = ["WITH"] if connection.vendor == "postgresql" else []
    assert [s for s in statements if s not in ("SAVEPOINT", "RELEASE")] == [
        *first,
        "SELECT",  # the wallet, locked
        "SELECT",  # its open lots
        "UPDATE",  # the lot the debit takes from
        "INSERT",  # the debit row
        "UPDATE",  # the wallet
    ]
    assert not CreditTransaction.objects.filter(kind="expiry").exists()
