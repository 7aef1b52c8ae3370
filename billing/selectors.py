"""Reads of wallets, the ledger and prices. Nothing here writes."""

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import DecimalField, OuterRef, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce

from accounts.models import User
from billing import _sql
from billing.models import LEDGER_DIGITS, CreditHold, CreditTransaction, ModelPrice, Wallet
from billing.money import is_low_balance

RECENT_TRANSACTIONS = 20


def wallet_for_user(*, user: User) -> Wallet:
    """The user's wallet; an unsaved empty one when the user has none yet (a wallet
    is created with every user, so only rows made around user_create lack one)."""
    return Wallet.objects.filter(user=user).first() or Wallet(user=user)


def wallet_status_of(wallet: Wallet) -> dict[str, Any]:
    return {
        "balance": wallet.balance,
        "held": wallet.held,
        "available": wallet.available,
        "low_balance": is_low_balance(wallet.balance),
        "low_balance_threshold": settings.LOW_BALANCE_THRESHOLD,
        "enforcement": settings.BILLING_ENFORCEMENT,
    }


def wallet_status(*, user: User) -> dict[str, Any]:
    """balance, held, available (Decimals), low_balance, low_balance_threshold and
    enforcement: what GET users/me/wallet shows, for any code that reports it."""
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


# --- reconciliation -----------------------------------------------------------------


@dataclass(frozen=True)
class WalletDrift:
    wallet: Wallet
    ledger_sum: Decimal
    last_balance_after: Decimal | None
    holds_sum: Decimal

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
    def drifted(self) -> bool:
        return self.balance_drift != 0 or self.last_row_drift or self.held_drift != 0


def wallet_drifts() -> Iterator[WalletDrift]:
    """Every wallet whose cached balance differs from the sum of its ledger or from its
    last balance_after, or whose `held` differs from the sum of its active holds. One
    query; the comparison is made on Decimals in Python (SQLite sums in floats)."""
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
    wallets = (
        Wallet.objects.select_related("user")
        .annotate(
            ledger_sum=Coalesce(Subquery(ledger_sum, output_field=ledger), Decimal("0"), output_field=ledger),
            last_balance_after=Subquery(last_after, output_field=ledger),
            holds_sum=Coalesce(Subquery(holds_sum, output_field=ledger), Decimal("0"), output_field=ledger),
        )
        .order_by("pk")
    )
    for wallet in wallets.iterator(chunk_size=1000):
        drift = WalletDrift(
            wallet=wallet,
            ledger_sum=wallet.ledger_sum,
            last_balance_after=wallet.last_balance_after,
            holds_sum=wallet.holds_sum,
        )
        if drift.drifted:
            yield drift
