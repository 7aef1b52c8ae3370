"""Each raw statement in billing/_sql.py writes what the ORM path it replaces writes:
both run against the same inputs on twin wallets, and the ledger rows, holds and
balances must come out identical."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from billing import _sql, services
from billing.models import CreditGrant, CreditHold, CreditTransaction, ModelPrice, TransactionKind, Wallet
from billing.selectors import hold_amount, model_price_for_alias
from core.exceptions import InsufficientCredits
from tests.billing.factories import ModelPriceFactory
from tests.conftest import make_user


def _post(path: str, user_id: int, **kwargs) -> None:  # noqa: ANN003
    kwargs.setdefault("reason", "")
    kwargs.setdefault("release_hold", None)
    if path == "raw":
        actor = kwargs.pop("actor", None)
        _sql.ledger_post(user_id=user_id, actor_id=actor.pk if actor else None, **kwargs)
    else:
        kwargs.setdefault("actor", None)
        services._post_orm(user_id=user_id, **kwargs)  # noqa: SLF001


def _hold(path: str, user_id: int, **kwargs) -> CreditHold | None:  # noqa: ANN003
    with transaction.atomic():
        if path == "raw":
            return _sql.hold_place(user_id=user_id, **kwargs)
        return services._hold_place_orm(user_id=user_id, **kwargs)  # noqa: SLF001


def _state(user, path: str) -> tuple:  # noqa: ANN001
    """The wallet's figures, ledger rows and holds, references without the path's prefix."""

    def unprefixed(reference: str | None) -> str | None:
        return None if reference is None else reference.removeprefix(f"{path}-")

    wallet = Wallet.objects.get(user=user)
    ledger = CreditTransaction.objects.filter(wallet=wallet).order_by("id")
    holds = CreditHold.objects.filter(wallet=wallet).order_by("id")
    return (
        wallet.balance,
        wallet.held,
        [(r.kind, r.amount, r.balance_after, unprefixed(r.reference), r.reason, r.actor_id) for r in ledger],
        [(unprefixed(h.reference), h.amount, h.status, h.closed_at is None) for h in holds],
    )


@pytest.mark.postgres
@pytest.mark.django_db
def test_raw_ledger_and_hold_statements_write_what_the_orm_paths_write(grant_staff):
    users = {path: make_user(f"{path}@example.com") for path in ("raw", "orm")}
    for path, user in users.items():
        uid = user.pk

        def ref(name: str, path: str = path) -> str:  # references are unique across wallets
            return f"{path}-{name}"

        _post(
            path, uid, kind=TransactionKind.GRANT, amount=Decimal("10"), reference=None, reason="r", actor=grant_staff
        )
        _post(path, uid, kind=TransactionKind.DEBIT, amount=Decimal("-0.12345678"), reference=ref("turn-1"))
        assert _hold(path, uid, amount=Decimal("2.5"), reference=ref("turn-2"), overdraft=Decimal("0")) is not None
        assert _hold(path, uid, amount=Decimal("1"), reference=ref("turn-3"), overdraft=Decimal("1")) is not None
        # Warn mode's overdraft: available 6.37654322 may go to -0.62345678 (within 1), not past -1.
        assert _hold(path, uid, amount=Decimal("7"), reference=ref("turn-5"), overdraft=Decimal("1")) is not None
        if path == "raw":
            assert _hold(path, uid, amount=Decimal("0.5"), reference=ref("turn-6"), overdraft=Decimal("1")) is None
        else:
            with pytest.raises(InsufficientCredits):
                _hold(path, uid, amount=Decimal("0.5"), reference=ref("turn-6"), overdraft=Decimal("1"))
        _post(
            path,
            uid,
            kind=TransactionKind.DEBIT,
            amount=Decimal("-1.00000001"),
            reference=ref("turn-2"),
            release_hold=ref("turn-2"),
        )
        # Settling a hold that is not there (already settled) leaves `held` alone.
        _post(
            path,
            uid,
            kind=TransactionKind.DEBIT,
            amount=Decimal("-0.5"),
            reference=ref("turn-4"),
            release_hold=ref("turn-2"),
        )
        _post(path, uid, kind=TransactionKind.REVERSAL, amount=Decimal("-20"), reference=ref("re_1"), reason="refund")
        with pytest.raises(IntegrityError):  # a repeated reference writes nothing
            _post(path, uid, kind=TransactionKind.DEBIT, amount=Decimal("-3"), reference=ref("turn-1"))

    # Not covered in block mode: the raw statement places nothing, the ORM path refuses;
    # neither writes.
    assert _hold("raw", users["raw"].pk, amount=Decimal("1"), reference="raw-turn-7", overdraft=Decimal("0")) is None
    with pytest.raises(InsufficientCredits):
        _hold("orm", users["orm"].pk, amount=Decimal("1"), reference="orm-turn-7", overdraft=Decimal("0"))

    raw, orm = _state(users["raw"], "raw"), _state(users["orm"], "orm")
    assert raw == orm
    assert raw[:2] == (Decimal("-11.62345679"), Decimal("8.00000000"))


@pytest.mark.django_db
def test_the_price_of_an_alias_is_its_active_row_or_none():
    old = ModelPriceFactory(alias="fast", active=False)
    current = ModelPriceFactory(alias="fast", provider_model=old.provider_model)
    ModelPriceFactory(alias="smart")

    assert model_price_for_alias(alias="fast") == current
    assert model_price_for_alias(alias="fast") == _sql.model_price_active(alias="fast")
    fields = [field.attname for field in ModelPrice._meta.concrete_fields]
    found, expected = model_price_for_alias(alias="fast"), ModelPrice.objects.get(pk=current.pk)
    assert [getattr(found, name) for name in fields] == [getattr(expected, name) for name in fields]
    assert model_price_for_alias(alias="gone") is None
    assert model_price_for_alias(alias="") is None


@pytest.mark.django_db
def test_the_amount_of_a_hold_is_what_the_orm_reads(owner):
    services.wallet_grant(user=owner, amount=Decimal("10"), reason="credits")
    services.wallet_hold_place(user=owner, amount=Decimal("1.23456789"), reference="turn-1")
    services.wallet_hold_place(user=owner, amount=Decimal("2"), reference="turn-2")
    services.wallet_hold_release(user=owner, reference="turn-2")
    for reference in ("turn-1", "turn-2", "turn-3"):
        expected = CreditHold.objects.filter(reference=reference).values_list("amount", flat=True).first()
        assert hold_amount(reference=reference) == expected
    assert hold_amount(reference="turn-1") == Decimal("1.23456789")
    assert hold_amount(reference="turn-3") is None


@pytest.mark.postgres
@pytest.mark.django_db
def test_the_raw_debit_leaves_a_wallet_with_grants_to_the_orm_path(owner):
    """A debit must use the wallet's grants first: the one statement declines (writes
    nothing) when grants_remaining > 0, and billing.services then runs the ORM path."""
    services.wallet_grant(user=owner, amount=Decimal("2"), reason="r", expires_at=timezone.now() + timedelta(days=1))
    services.wallet_hold_place(user=owner, amount=Decimal("1"), reference="turn-h")
    for release_hold in (None, "turn-h"):
        kwargs = {"kind": TransactionKind.DEBIT, "amount": Decimal("-1"), "reason": "", "actor_id": None}
        assert _sql.ledger_post(user_id=owner.pk, reference="turn-x", release_hold=release_hold, **kwargs) is None
    assert CreditTransaction.objects.filter(kind="debit").count() == 0
    assert CreditHold.objects.get(reference="turn-h").status == "active"

    services.wallet_debit(user=owner, amount=Decimal("1.5"), reference="turn-h", release_hold="turn-h")
    wallet = Wallet.objects.get(user=owner)
    assert (wallet.balance, wallet.held, wallet.grants_remaining) == (Decimal("0.5"), Decimal("0"), Decimal("0.5"))
    assert CreditGrant.objects.get().remaining == Decimal("0.5")
    # Other kinds never touch grants: still one statement.
    assert _sql.ledger_post(
        user_id=owner.pk, kind=TransactionKind.TOPUP, amount=Decimal("3"), reference="pi_9", reason="", actor_id=None,
        release_hold=None,
    ) is not None  # fmt: skip


@pytest.mark.postgres
@pytest.mark.django_db
def test_the_raw_settling_debit_moves_spend_counters_as_the_orm_path_does():
    from billing.limits import SpendLimit, spend_limits_hold
    from billing.models import SpendCounter

    users = {path: make_user(f"{path}@example.com") for path in ("raw", "orm")}
    for path, user in users.items():
        uid = user.pk
        _post(path, uid, kind=TransactionKind.GRANT, amount=Decimal("10"), reference=None, reason="r")
        cap = [SpendLimit(uid, None, "Account spending cap", Decimal("5"), "day")]
        for number, charge in ((1, Decimal("-0.75")), (2, Decimal("-1.00000001"))):
            with transaction.atomic():
                placed = _hold(path, uid, amount=Decimal("2"), reference=f"{path}-turn-{number}", overdraft=Decimal("0"))
                spend_limits_hold(hold=placed, limits=cap)
            _post(path, uid, kind=TransactionKind.DEBIT, amount=charge, reference=f"{path}-turn-{number}",
                  release_hold=f"{path}-turn-{number}")  # fmt: skip
        with transaction.atomic():
            placed = _hold(path, uid, amount=Decimal("2"), reference=f"{path}-turn-3", overdraft=Decimal("0"))
            spend_limits_hold(hold=placed, limits=cap)

    counters = {
        path: list(SpendCounter.objects.filter(user=user).values_list("window", "spent", "held"))
        for path, user in users.items()
    }
    assert counters["raw"] == counters["orm"] == [("day", Decimal("1.75000001"), Decimal("2"))]
    assert _state(users["raw"], "raw") == _state(users["orm"], "orm")
