"""Many writers on one wallet at once, on PostgreSQL (row locks are what is tested:
SQLite serialises whole transactions). Every thread has its own connection."""

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from django.db import connection

from billing.models import CreditHold, CreditTransaction, Wallet
from billing.services import wallet_debit, wallet_grant, wallet_hold_place, wallet_hold_release
from core.exceptions import InsufficientCredits

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

THREADS = 50
CONNECTION_HEADROOM = 20  # the test's own connection, the Celery worker's, psql sessions


def run_together(jobs: list[Callable[[], object]]) -> list[object]:
    """Runs the jobs in as many threads, released at the same instant; returns each
    job's result or the exception it raised. Every thread holds a connection, so the
    jobs must leave room under the server's max_connections (a full server refuses
    with "too many clients", which is not what these tests are about)."""
    with connection.cursor() as cursor:
        cursor.execute("SHOW max_connections")
        max_connections = int(cursor.fetchone()[0])
    assert len(jobs) + CONNECTION_HEADROOM <= max_connections, f"{len(jobs)} threads crowd {max_connections}"
    barrier = threading.Barrier(len(jobs))

    def run(job: Callable[[], object]) -> object:
        try:
            barrier.wait(timeout=30)
            return job()
        except Exception as exc:  # noqa: BLE001  reported to the test, which asserts on it
            return exc
        finally:
            connection.close()  # this thread's own connection

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return list(pool.map(run, jobs))


def assert_ledger_is_consistent(user) -> list[CreditTransaction]:  # noqa: ANN001
    """balance = sum of the ledger = last balance_after, and each row's balance_after
    follows from the one before it: the writers were serialised, none was lost."""
    wallet = Wallet.objects.get(user=user)
    rows = list(CreditTransaction.objects.filter(wallet=wallet).order_by("id"))
    running = Decimal("0")
    for row in rows:
        running += row.amount
        assert row.balance_after == running, f"row {row.pk} balance_after {row.balance_after} != {running}"
    assert wallet.balance == running
    references = [row.reference for row in rows if row.reference is not None]
    assert len(references) == len(set(references))
    return rows


def test_fifty_threads_debiting_and_granting_one_wallet_leave_the_exact_balance(owner, grant_staff):
    wallet_grant(user=owner, amount=Decimal("100"), reason="start")

    def job(number: int) -> Callable[[], object]:
        if number % 5 == 0:
            return lambda: wallet_grant(
                user=owner, amount=Decimal("1.00000001"), reason=f"grant {number}", actor=grant_staff,
                reference=f"grant-{number}",
            )  # fmt: skip
        return lambda: wallet_debit(user=owner, amount=Decimal("0.33333333"), reference=f"turn-{number}")

    results = run_together([job(number) for number in range(THREADS)])
    assert [r for r in results if isinstance(r, Exception)] == []

    grants, debits = THREADS // 5, THREADS - THREADS // 5
    expected = Decimal("100") + grants * Decimal("1.00000001") - debits * Decimal("0.33333333")
    assert expected == Decimal("96.66666690")
    rows = assert_ledger_is_consistent(owner)
    assert len(rows) == 1 + THREADS
    assert Wallet.objects.get(user=owner).balance == expected


def test_concurrent_retries_of_one_reference_charge_once(owner):
    wallet_grant(user=owner, amount=Decimal("10"), reason="start")
    results = run_together(
        [lambda: wallet_debit(user=owner, amount=Decimal("2.5"), reference="turn-retried")] * THREADS
    )
    assert [r for r in results if isinstance(r, Exception)] == []
    assert len({row.pk for row in results}) == 1
    assert CreditTransaction.objects.filter(reference="turn-retried").count() == 1
    assert Wallet.objects.get(user=owner).balance == Decimal("7.5")
    assert_ledger_is_consistent(owner)


def test_concurrent_holds_in_block_mode_never_overspend(owner, settings):
    settings.BILLING_ENFORCEMENT = "block"
    wallet_grant(user=owner, amount=Decimal("10"), reason="start")
    results = run_together(
        [
            (lambda number=number: wallet_hold_place(user=owner, amount=Decimal("1"), reference=f"turn-{number}"))
            for number in range(THREADS)
        ]
    )
    placed = [r for r in results if isinstance(r, CreditHold)]
    refused = [r for r in results if isinstance(r, InsufficientCredits)]
    assert (len(placed), len(refused)) == (10, THREADS - 10)
    wallet = Wallet.objects.get(user=owner)
    assert (wallet.balance, wallet.held) == (Decimal("10"), Decimal("10"))


def test_concurrent_settles_and_releases_keep_held_exact(owner):
    holds = THREADS // 2  # two racing threads per hold: THREADS connections in all
    wallet_grant(user=owner, amount=Decimal("100"), reason="start")
    for number in range(holds):
        wallet_hold_place(user=owner, amount=Decimal("2"), reference=f"turn-{number}")

    def job(number: int) -> Callable[[], object]:
        reference = f"turn-{number}"
        if number % 2:
            return lambda: wallet_hold_release(user=owner, reference=reference)
        return lambda: wallet_debit(user=owner, amount=Decimal("1.5"), reference=reference, release_hold=reference)

    # Each hold is settled or released by two racing threads; it closes once.
    results = run_together([job(number) for number in range(holds)] * 2)
    assert [r for r in results if isinstance(r, Exception)] == []
    settled = (holds + 1) // 2  # the even-numbered holds
    wallet = Wallet.objects.get(user=owner)
    assert wallet.held == Decimal("0")
    assert wallet.balance == Decimal("100") - settled * Decimal("1.5")
    assert CreditHold.objects.filter(status="active").count() == 0
    assert CreditHold.objects.filter(status="settled").count() == settled
    assert CreditHold.objects.filter(status="released").count() == holds - settled
    assert_ledger_is_consistent(owner)


def test_a_debit_outside_a_transaction_is_one_statement(owner):
    """The hot wallet's row lock is held for one statement and its commit."""
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        row = wallet_debit(user=owner, amount=Decimal("0.1"), reference="turn-one-statement")
    # After that statement committed, the auto top-up hook may read (no lock) whether to act.
    ledger = [query for query in captured.captured_queries if "billing_autotopup" not in query["sql"]]
    assert len(ledger) == 1
    assert (row.amount, row.balance_after) == (Decimal("-0.1"), Decimal("-0.1"))
    assert Wallet.objects.get(user=owner).balance == Decimal("-0.1")
    # A retry is refused by the unique index, then answered with the first row.
    assert wallet_debit(user=owner, amount=Decimal("0.1"), reference="turn-one-statement").pk == row.pk
    assert Wallet.objects.get(user=owner).balance == Decimal("-0.1")
