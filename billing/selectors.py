"""Reads of wallets, the ledger and prices. Nothing here writes."""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import DecimalField, OuterRef, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce

from accounts.models import User
from billing import _sql
from billing.models import (
    LEDGER_DIGITS,
    CreditGrant,
    CreditHold,
    CreditTransaction,
    ModelPrice,
    TransactionKind,
    Wallet,
)
from billing.money import is_low_balance

RECENT_TRANSACTIONS = 20


def wallet_for_user(*, user: User) -> Wallet:
    """The user's wallet; an unsaved empty one when the user has none yet (a wallet
    is created with every user, so only rows made around user_create lack one)."""
    return Wallet.objects.filter(user=user).first() or Wallet(user=user)


def grants_in_order(lots: Iterable[CreditGrant]) -> list[CreditGrant]:
    """Lots in the order credits are used (CreditGrant.consumption_key)."""
    return sorted(lots, key=lambda lot: lot.consumption_key)


def wallet_open_grants(*, wallet: Wallet) -> list[CreditGrant]:
    """The wallet's promotional or expiring grants with credits left, in the order
    they are used. No query for a wallet that has none (its cached grants_remaining
    says so)."""
    if wallet.pk is None or not wallet.grants_remaining:
        return []
    return grants_in_order(CreditGrant.objects.filter(wallet=wallet, remaining__gt=0))


def wallet_status_of(wallet: Wallet) -> dict[str, Any]:
    return {
        "balance": wallet.balance,
        "held": wallet.held,
        "available": wallet.available,
        "low_balance": is_low_balance(wallet.balance),
        "low_balance_threshold": settings.LOW_BALANCE_THRESHOLD,
        "enforcement": settings.BILLING_ENFORCEMENT,
        "grants": wallet_open_grants(wallet=wallet),
    }


def wallet_status(*, user: User) -> dict[str, Any]:
    """balance, held, available (Decimals), low_balance, low_balance_threshold,
    enforcement and grants (the open CreditGrant rows, in the order they are used):
    what GET users/me/wallet shows, for any code that reports it."""
    return wallet_status_of(wallet_for_user(user=user))


def transactions_for_user(*, user: User) -> QuerySet[CreditTransaction]:
    """The user's own ledger rows, newest first."""
    return CreditTransaction.objects.filter(wallet__user=user).order_by("-created_at", "-id")


def wallet_recent_transactions(*, wallet: Wallet, limit: int = RECENT_TRANSACTIONS) -> list[CreditTransaction]:
    if wallet.pk is None:
        return []
    return list(CreditTransaction.objects.filter(wallet=wallet).order_by("-created_at", "-id")[:limit])


def model_prices_active() -> QuerySet[ModelPrice]:
    return ModelPrice.objects.filter(active=True).order_by("alias")


def model_price_for_alias(*, alias: str) -> ModelPrice | None:
    """The price in force for `alias`, or None when the alias has none. The one
    function for this rule (chat asks it too); raw SQL, see billing/_sql.py."""
    if not alias:
        return None
    return _sql.model_price_active(alias=alias)


def hold_amount(*, reference: str) -> Decimal | None:
    """The amount of the hold `reference` (placed when its turn was accepted), or None."""
    return _sql.hold_amount(reference=reference)


# --- reconciliation -----------------------------------------------------------------


@dataclass(frozen=True)
class WalletDrift:
    wallet: Wallet
    ledger_sum: Decimal
    last_balance_after: Decimal | None
    holds_sum: Decimal
    grants_sum: Decimal = Decimal("0")
    # What replaying the ledger says of the wallet's grants that their rows do not.
    grant_problems: tuple[str, ...] = ()

    @property
    def balance_drift(self) -> Decimal:
        return self.wallet.balance - self.ledger_sum

    @property
    def last_row_drift(self) -> bool:
        """The last ledger row's balance_after is not the cached balance."""
        expected = Decimal("0") if self.last_balance_after is None else self.last_balance_after
        return expected != self.wallet.balance

    @property
    def held_drift(self) -> Decimal:
        return self.wallet.held - self.holds_sum

    @property
    def grants_drift(self) -> Decimal:
        return self.wallet.grants_remaining - self.grants_sum

    @property
    def drifted(self) -> bool:
        return (
            self.balance_drift != 0
            or self.last_row_drift
            or self.held_drift != 0
            or self.grants_drift != 0
            or bool(self.grant_problems)
        )


def grant_ledger_problems(*, wallet: Wallet) -> list[str]:
    """Replays the wallet's ledger from its first lot's grant row, applying the rule
    of billing.services (debits take from the open lots in consumption order, an
    `expiry` row from its lot), and says where a lot's amount or remaining is not
    what the ledger explains. Empty when all is well (and for a wallet with no lots)."""
    lots = {lot.transaction_id: lot for lot in CreditGrant.objects.filter(wallet=wallet)}
    if not lots:
        return []
    by_id = {lot.pk: lot for lot in lots.values()}
    replayed: dict[int, Decimal] = {}  # lot id -> remaining as the ledger says
    problems = []
    rows = (
        CreditTransaction.objects.filter(wallet=wallet, id__gte=min(lots))
        .filter(kind__in=[TransactionKind.GRANT, TransactionKind.DEBIT, TransactionKind.EXPIRY])
        .order_by("id")
        .values_list("id", "kind", "amount", "reference")
    )
    for row_id, kind, amount, reference in rows.iterator(chunk_size=2000):
        if kind == TransactionKind.GRANT and (lot := lots.get(row_id)) is not None:
            if lot.amount != amount:
                problems.append(f"grant {lot.pk}: amount {lot.amount} != its ledger row {row_id}'s {amount}")
            replayed[lot.pk] = amount
        elif kind == TransactionKind.DEBIT:
            left = -amount
            for lot in grants_in_order(by_id[pk] for pk, rest in replayed.items() if rest > 0):
                share = min(replayed[lot.pk], left)
                replayed[lot.pk] -= share
                left -= share
                if not left:
                    break
        elif kind == TransactionKind.EXPIRY:
            lot_id = int(str(reference).split(":")[0]) if str(reference).split(":")[0].isdigit() else None
            if lot_id not in replayed:
                problems.append(f"expiry row {row_id} ({reference}) names no grant of this wallet")
                continue
            replayed[lot_id] += amount
            if replayed[lot_id] < 0:
                problems.append(f"expiry row {row_id} takes more than grant {lot_id} had left")
    for lot in by_id.values():
        expected = replayed.get(lot.pk)
        if expected is None:
            problems.append(f"grant {lot.pk}: its ledger row {lot.transaction_id} is not a grant of this wallet")
        elif expected != lot.remaining:
            problems.append(f"grant {lot.pk}: remaining {lot.remaining} != {expected} by the ledger")
    return problems


def wallet_drifts() -> Iterator[WalletDrift]:
    """Every wallet whose cached balance differs from the sum of its ledger or from its
    last balance_after, whose `held` differs from the sum of its active holds, whose
    `grants_remaining` differs from the sum of its grants' remaining, or whose grants
    the ledger does not explain (grant_ledger_problems, for wallets with grants). One
    query, and one per wallet with grants; the comparison is made on Decimals in
    Python (SQLite sums in floats)."""
    ledger = DecimalField(**LEDGER_DIGITS)
    per_wallet = {"wallet": OuterRef("pk")}
    ledger_sum = (
        CreditTransaction.objects.filter(**per_wallet).values("wallet").annotate(total=Sum("amount")).values("total")
    )
    last_after = CreditTransaction.objects.filter(**per_wallet).order_by("-id").values("balance_after")[:1]
    holds_sum = (
        CreditHold.objects.filter(**per_wallet, status=CreditHold.Status.ACTIVE)
        .values("wallet")
        .annotate(total=Sum("amount"))
        .values("total")
    )
    grants_sum = (
        CreditGrant.objects.filter(**per_wallet).values("wallet").annotate(total=Sum("remaining")).values("total")
    )
    # Only wallets that ever had a lot are replayed against their ledger.
    with_lots = set(CreditGrant.objects.values_list("wallet_id", flat=True).distinct())
    wallets = (
        Wallet.objects.select_related("user__organization")
        .annotate(
            ledger_sum=Coalesce(Subquery(ledger_sum, output_field=ledger), Decimal("0"), output_field=ledger),
            last_balance_after=Subquery(last_after, output_field=ledger),
            holds_sum=Coalesce(Subquery(holds_sum, output_field=ledger), Decimal("0"), output_field=ledger),
            grants_sum=Coalesce(Subquery(grants_sum, output_field=ledger), Decimal("0"), output_field=ledger),
        )
        .order_by("pk")
    )
    for wallet in wallets.iterator(chunk_size=1000):
        drift = WalletDrift(
            wallet=wallet,
            ledger_sum=wallet.ledger_sum,
            last_balance_after=wallet.last_balance_after,
            holds_sum=wallet.holds_sum,
            grants_sum=wallet.grants_sum,
            grant_problems=tuple(grant_ledger_problems(wallet=wallet)) if wallet.pk in with_lots else (),
        )
        if drift.drifted:
            yield drift
