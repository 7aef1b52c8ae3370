"""Debits, settles and the expiry of a grant racing on one wallet, on PostgreSQL."""

from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.models import CreditGrant, Wallet
from billing.selectors import grant_ledger_problems, wallet_drifts
from billing.services import (
    grant_expire,
    grants_expire_due,
    wallet_debit,
    wallet_grant,
    wallet_hold_place,
    wallet_hold_release,
    wallet_topup,
)
from tests.billing.test_concurrency import assert_ledger_is_consistent, run_together
from tests.billing.test_grants import travel

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

D = Decimal


def test_debits_settles_and_an_expiry_racing_on_one_wallet_keep_the_ledger_and_grants_exact(owner, monkeypatch):
    later = timezone.now() + timedelta(days=1)
    wallet_topup(user=owner, amount=D("50"), reference="pi_1")
    due = wallet_grant(user=owner, amount=D("20"), reason="trial", promotional=True, expires_at=later)
    promo = wallet_grant(user=owner, amount=D("10"), reason="promo", promotional=True)
    goodwill = wallet_grant(user=owner, amount=D("15"), reason="goodwill", expires_at=later + timedelta(days=1))
    due_lot = CreditGrant.objects.get(transaction=due)
    for number in range(20):
        wallet_hold_place(user=owner, amount=D("0.75"), reference=f"turn-{number}")
    travel(monkeypatch, timedelta(days=1, seconds=1))  # the due lot's time has come, not the goodwill one's

    def job(number: int) -> Callable[[], object]:
        if number % 8 == 0:
            return grants_expire_due if number % 16 else lambda: grant_expire(grant_id=due_lot.pk)
        if number < 20:  # turns in flight settle for less than they hold
            return lambda: wallet_debit(
                user=owner, amount=D("0.5"), reference=f"turn-{number}", release_hold=f"turn-{number}"
            )
        return lambda: wallet_debit(user=owner, amount=D("0.25"), reference=f"turn-{number}")

    results = run_together([job(number) for number in range(44)])
    assert [r for r in results if isinstance(r, Exception)] == []
    # The holds not settled above (0, 8 and 16 ran the expiry) are released.
    for number in (0, 8, 16):
        wallet_hold_release(user=owner, reference=f"turn-{number}")
    assert grants_expire_due() == 0  # the first debit or sweep to run expired it all

    rows = assert_ledger_is_consistent(owner)
    wallet = Wallet.objects.get(user=owner)
    lots = {lot.transaction_id: lot for lot in CreditGrant.objects.filter(wallet=wallet)}
    expiries = [row for row in rows if row.kind == "expiry"]
    debited = -sum((row.amount for row in rows if row.kind == "debit"), D("0"))
    assert debited == 17 * D("0.5") + 21 * D("0.25")  # 17 settled turns, 21 plain debits
    # The due lot was past its expires_at before any of them ran: whichever came first
    # (a debit or a sweep) expired all of it, once, and no debit took from it.
    assert [(row.amount, row.reference) for row in expiries] == [(D("-20"), str(due_lot.pk))]
    assert lots[due.pk].remaining == D("0")
    assert wallet.balance == D("95") - debited - D("20")
    assert wallet.held == D("0")
    assert wallet.grants_remaining == sum((lot.remaining for lot in lots.values()), D("0"))
    # The debits took from the promotional lot, then the goodwill one: none was lost,
    # none used twice.
    assert (lots[promo.pk].remaining, lots[goodwill.pk].remaining) == (D("0"), D("25") - debited)
    assert grant_ledger_problems(wallet=wallet) == []
    assert list(wallet_drifts()) == []
