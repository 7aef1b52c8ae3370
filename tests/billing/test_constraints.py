"""The database itself refuses what the ledger must never hold, even when code goes
around billing.services with a raw ORM create."""

from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction

from billing.models import CreditHold, CreditTransaction, ModelPrice, Wallet

pytestmark = pytest.mark.django_db


def raw_row(wallet: Wallet, **fields) -> CreditTransaction:
    values = {"kind": "grant", "amount": Decimal("1"), "balance_after": Decimal("1"), "reference": None, **fields}
    with transaction.atomic():
        return CreditTransaction.objects.create(wallet=wallet, **values)


@pytest.fixture
def wallet(owner) -> Wallet:  # noqa: ANN001
    return owner.wallet


@pytest.mark.parametrize(
    "fields",
    [
        {"amount": Decimal("0")},
        {"kind": "adjustment", "amount": Decimal("0")},
        {"kind": "grant", "amount": Decimal("-1")},
        {"kind": "topup", "amount": Decimal("-1"), "reference": "pi_1"},
        {"kind": "refund", "amount": Decimal("-1")},
        {"kind": "debit", "amount": Decimal("1"), "reference": "turn-1"},
        {"kind": "reversal", "amount": Decimal("1"), "reference": "re_1"},
        {"kind": "debit", "amount": Decimal("-1"), "reference": None},
        {"kind": "topup", "amount": Decimal("1"), "reference": None},
        {"kind": "grant", "amount": Decimal("1"), "reference": ""},
        {"kind": "gift", "amount": Decimal("1")},
    ],
    ids=[
        "zero",
        "zero-adjustment",
        "negative-grant",
        "negative-topup",
        "negative-refund",
        "positive-debit",
        "positive-reversal",
        "debit-without-reference",
        "topup-without-reference",
        "empty-reference",
        "unknown-kind",
    ],
)
def test_the_database_refuses_a_ledger_row_that_breaks_a_rule(wallet, fields):
    with pytest.raises(IntegrityError):
        raw_row(wallet, **fields)
    assert CreditTransaction.objects.count() == 0


def test_the_database_accepts_well_formed_rows_of_each_sign(wallet):
    raw_row(wallet, kind="adjustment", amount=Decimal("-0.5"))
    raw_row(wallet, kind="debit", amount=Decimal("-0.5"), reference="turn-ok")
    raw_row(wallet, kind="grant", amount=Decimal("1"))
    raw_row(wallet, kind="grant", amount=Decimal("1"))  # grants without a reference may repeat
    assert CreditTransaction.objects.count() == 4


def test_the_database_refuses_a_duplicate_kind_and_reference(wallet, other_user):
    raw_row(wallet, kind="debit", amount=Decimal("-1"), reference="turn-dup")
    with pytest.raises(IntegrityError):
        raw_row(other_user.wallet, kind="debit", amount=Decimal("-2"), reference="turn-dup")
    assert CreditTransaction.objects.filter(reference="turn-dup").count() == 1


def test_one_wallet_per_user(owner):
    with pytest.raises(IntegrityError), transaction.atomic():
        Wallet.objects.create(user=owner)


def test_held_never_goes_negative(wallet):
    with pytest.raises(IntegrityError), transaction.atomic():
        Wallet.objects.filter(pk=wallet.pk).update(held=Decimal("-0.00000001"))


def test_a_ledger_row_protects_its_wallet_from_deletion(wallet):
    from django.db.models import ProtectedError

    raw_row(wallet)
    with pytest.raises(ProtectedError):
        wallet.delete()


def test_a_hold_reference_is_unique_and_its_amount_not_negative(wallet):
    CreditHold.objects.create(wallet=wallet, reference="turn-h", amount=Decimal("1"))
    with pytest.raises(IntegrityError), transaction.atomic():
        CreditHold.objects.create(wallet=wallet, reference="turn-h", amount=Decimal("1"))
    with pytest.raises(IntegrityError), transaction.atomic():
        CreditHold.objects.create(wallet=wallet, reference="turn-neg", amount=Decimal("-1"))


def test_one_active_price_per_alias(db):
    values = {
        "provider": "local",
        "provider_model": "m",
        "input_credits_per_mtok": Decimal("1"),
        "output_credits_per_mtok": Decimal("2"),
    }
    ModelPrice.objects.create(alias="fast", **values)
    ModelPrice.objects.create(alias="fast", active=False, **values)
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelPrice.objects.create(alias="fast", **values)
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelPrice.objects.create(alias="neg", **{**values, "input_credits_per_mtok": Decimal("-1")})
