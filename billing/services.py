"""The only code that moves credits, places holds and changes prices.

Every balance change runs in one transaction that locks the wallet row, writes one
ledger row with its balance_after and updates the cached balance. The lock is
`select_for_update`, or on PostgreSQL the UPDATE of the wallet row itself (one
statement does it all, see billing/_sql.py, with the figures that keep it). Holds
take the same lock first, so every write to a wallet and its holds is serialised in
one order: wallet, then hold.

A repeated (kind, reference) returns the row already written and changes nothing,
so a retried request, a redelivered task or a replayed webhook applies once. The
unique constraint on (kind, reference) decides it: a new reference (the common
case) costs no extra lookup, and two racing writers of one reference cannot both
succeed; the loser's transaction rolls back and it returns the winner's row.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.models import User
from billing import _sql, limits
from billing.dispatch import auto_top_up_send
from billing.metrics import ledger_debit_observe
from billing.models import CreditGrant, CreditHold, CreditTransaction, ModelPrice, TransactionKind, Wallet
from billing.money import format_ledger, ledger_amount, ledger_exact, to_decimal
from billing.selectors import grants_in_order
from core.exceptions import InsufficientCredits, StateConflict, field_error
from notifications.services import low_balance_notify

ZERO = Decimal("0")
REASON_MAX = CreditTransaction._meta.get_field("reason").max_length
REFERENCE_MAX = CreditTransaction._meta.get_field("reference").max_length


def wallet_create(*, user: User) -> Wallet:
    wallet, _ = Wallet.objects.get_or_create(user=user)
    return wallet


# --- validation -------------------------------------------------------------------


def _number(value: Decimal | int | str, field: str = "amount") -> Decimal:
    try:
        return to_decimal(value)
    except ValueError:
        raise field_error(field, "A valid number is required.")


def _exact_amount(value: Decimal | int | str) -> Decimal:
    """An amount someone stated (a grant, a top-up, a refund, an adjustment): exact at
    ledger precision, never rounded behind the caller's back."""
    try:
        return ledger_exact(_number(value))
    except ValueError as exc:
        raise field_error("amount", str(exc))


def _positive_amount(value: Decimal | int | str) -> Decimal:
    amount = _exact_amount(value)
    if amount <= 0:
        raise field_error("amount", "Amount must be greater than zero.")
    return amount


def _charge_amount(value: Decimal | int | str, *, allow_zero: bool = False) -> Decimal:
    """A charge's magnitude (a debit, a take-back, a hold), rounded up at the 8th place."""
    amount = _number(value)
    if amount < 0 or (amount == 0 and not allow_zero):
        raise field_error("amount", "Amount must be greater than zero.")
    try:
        return ledger_exact(ledger_amount(amount))
    except ValueError as exc:
        raise field_error("amount", str(exc))


def _reference(reference: str | None, *, required: bool) -> str | None:
    if reference is None:
        if required:
            raise field_error("reference", "A reference is required.")
        return None
    if not reference.strip() or len(reference) > REFERENCE_MAX:
        raise field_error("reference", f"A reference is 1 to {REFERENCE_MAX} characters.")
    return reference


def _reason(reason: str, *, required: bool = False) -> str:
    if required and not reason.strip():
        raise field_error("reason", "A reason is required.")
    return reason.strip()[:REASON_MAX]


# --- the ledger -------------------------------------------------------------------


def _locked_wallet(user_id: int) -> Wallet:
    """The user's wallet row, locked until the transaction ends."""
    query = Wallet.objects.select_for_update().only("id", "balance", "held", "grants_remaining")
    try:
        return query.get(user_id=user_id)
    except Wallet.DoesNotExist:
        # A user created outside accounts.services.user_create gets a wallet on first use.
        Wallet.objects.get_or_create(user_id=user_id)
        return query.get(user_id=user_id)


def _wallet_save(wallet: Wallet, *, balance: Decimal, held: Decimal, grants_remaining: Decimal | None = None) -> None:
    values = {"balance": balance, "held": held, "updated_at": timezone.now()}
    if grants_remaining is not None:
        values["grants_remaining"] = grants_remaining
    Wallet.objects.filter(pk=wallet.pk).update(**values)
    wallet.balance, wallet.held = balance, held
    if grants_remaining is not None:
        wallet.grants_remaining = grants_remaining


def _replayed(*, kind: str, reference: str | None, user_id: int) -> CreditTransaction | None:
    """The row an earlier call with this (kind, reference) wrote, if any."""
    if reference is None:
        return None
    row = CreditTransaction.objects.select_related("wallet").filter(kind=kind, reference=reference).first()
    if row is not None and row.wallet.user_id != user_id:
        raise StateConflict(f"Reference {reference!r} was already used for another wallet.")
    return row


def _post(
    *,
    user_id: int,
    kind: str,
    amount: Decimal,
    reference: str | None,
    reason: str = "",
    actor: User | None = None,
    release_hold: str | None = None,
    reference_is_new: bool = False,
) -> CreditTransaction:
    """Writes one ledger row of a validated, signed `amount` and moves the cached
    balance with it; with `release_hold`, settles that hold in the same transaction.
    A debit also takes its share from the wallet's grants (promotional or expiring
    credits, used first), in the same transaction. `reference_is_new`: see
    wallet_debit."""
    try:
        row = None
        if connection.vendor == "postgresql":
            row = _sql.ledger_post(
                user_id=user_id,
                kind=kind,
                amount=amount,
                reference=reference,
                reason=reason,
                actor_id=actor.pk if actor is not None else None,
                release_hold=release_hold,
                savepoint=not reference_is_new,
            )
        if row is None:
            # Any other database; and on PostgreSQL a wallet with no row yet, or a debit
            # of a wallet that has grants left (the one-statement path leaves those here).
            row = _post_orm(
                user_id=user_id,
                kind=kind,
                amount=amount,
                reference=reference,
                reason=reason,
                actor=actor,
                release_hold=release_hold,
                savepoint=not reference_is_new,
            )
    except IntegrityError:
        if reference_is_new:  # no savepoint: the caller's transaction is spoilt, and no replay is possible
            raise
        # Nothing was written. The usual cause: this reference was applied before.
        if (found := _replayed(kind=kind, reference=reference, user_id=user_id)) is not None:
            return found
        raise
    if kind == TransactionKind.DEBIT:  # a new row (a replay returned above), counted once it commits
        transaction.on_commit(partial(ledger_debit_observe, -amount))
    if amount < 0:
        _balance_fell(user_id=user_id, kind=kind, before=row.balance_after - amount, after=row.balance_after)
    return row


def _balance_fell(*, user_id: int, kind: str, before: Decimal, after: Decimal) -> None:
    """Inside the transaction of a new ledger row that lowered a balance: the rules
    that watch a balance fall. Each acts once per crossing (a replayed row never gets
    here), and anything slow runs after commit, never under the wallet lock."""
    if before >= settings.LOW_BALANCE_THRESHOLD > after:
        low_balance_notify(user_id=user_id, balance=after)
    if kind == TransactionKind.DEBIT:  # auto top-up: the task decides, after commit (billing.dispatch)
        # A lambda, not a partial: a robust on_commit that raises logs the callback's
        # __qualname__, which a partial lacks (the log line itself would raise).
        transaction.on_commit(lambda: auto_top_up_send(user_id=user_id, after=after), robust=True)


def _post_orm(
    *,
    user_id: int,
    kind: str,
    amount: Decimal,
    reference: str | None,
    reason: str,
    actor: User | None,
    release_hold: str | None,
    savepoint: bool = True,
) -> CreditTransaction:
    """Any database but PostgreSQL (which runs billing._sql.ledger_post, the same rule
    in one statement): lock the wallet row, write the ledger row, update the caches.
    (SQLite also keeps the arithmetic in Python: it would do it in floats.) A debit
    of a wallet with grants left comes here on every database: it expires the lots
    past their expires_at first (their `expiry` rows come before the debit's), then
    takes from the others in order."""
    # A savepoint when the caller is already in a transaction (the turn completion):
    # a repeated reference then rolls back only this write.
    with transaction.atomic(savepoint=savepoint):
        wallet = _locked_wallet(user_id)
        held = wallet.held
        if release_hold is not None:
            held -= _hold_close_locked(
                wallet=wallet, reference=release_hold, status=CreditHold.Status.SETTLED, charge=-amount
            )
        grants_remaining = None
        if kind == TransactionKind.DEBIT and wallet.grants_remaining > 0:
            # Lots past their expires_at are expired first (whether or not the sweep
            # ran): an expired credit is never spent. A wallet without grants (the
            # common case, and on PostgreSQL the one-statement path) asks nothing more.
            lots, now = _open_grants_locked(wallet), timezone.now()
            if due := [lot for lot in lots if _lot_due(lot, now)]:
                _lots_expire_locked(wallet=wallet, user_id=user_id, lots=due, now=now)
                lots = [lot for lot in lots if lot.remaining > 0]
            grants_remaining = wallet.grants_remaining - _grants_consume(lots=lots, amount=-amount)
        balance = wallet.balance + amount
        row = CreditTransaction.objects.create(
            wallet=wallet,
            kind=kind,
            amount=amount,
            balance_after=balance,
            reference=reference,
            reason=reason,
            actor=actor,
        )
        _wallet_save(wallet, balance=balance, held=held, grants_remaining=grants_remaining)
        return row


def wallet_grant(
    *,
    user: User,
    amount: Decimal | int | str,
    reason: str,
    actor: User | None = None,
    reference: str | None = None,
    promotional: bool = False,
    expires_at: datetime | None = None,
) -> CreditTransaction:
    """Staff (admin page, API, `grant_credits`) or the system (seed data, signup) gives
    credits. At most ADMIN_GRANT_MAX at once; a reason is required and the actor
    recorded. A `promotional` grant, or one with `expires_at` (in the future), is also
    a lot that debits use first and the expiry sweep ends (see grants_in_order)."""
    reason = _reason(reason, required=True)
    amount = _positive_amount(amount)
    if amount > settings.ADMIN_GRANT_MAX:
        raise field_error("amount", f"Amount must be at most {settings.ADMIN_GRANT_MAX}.")
    expires_at = _grant_expires_at(expires_at)
    reference = _reference(reference, required=False)
    if promotional or expires_at is not None:
        row = _grant_lot_post(
            user=user, amount=amount, reason=reason, actor=actor, reference=reference,
            promotional=promotional, expires_at=expires_at,
        )  # fmt: skip
    else:
        row = _post(
            user_id=user.pk,
            kind=TransactionKind.GRANT,
            amount=amount,
            reference=reference,
            reason=reason,
            actor=actor,
        )
    # A replayed reference answers the first grant; a different amount under the same
    # key is a client mistake, not a retry, and must not look like success.
    if row.amount != amount:
        raise StateConflict(f"Reference {reference!r} was already used for a grant of {row.amount}.")
    return row


def _grant_lot_post(
    *,
    user: User,
    amount: Decimal,
    reason: str,
    actor: User | None,
    reference: str | None,
    promotional: bool,
    expires_at: datetime | None,
) -> CreditTransaction:
    """The `grant` row and its lot, in one transaction under the wallet lock (taken by
    the ledger write)."""
    if (found := _replayed(kind=TransactionKind.GRANT, reference=reference, user_id=user.pk)) is not None:
        return found
    with transaction.atomic():
        row = _post(
            user_id=user.pk, kind=TransactionKind.GRANT, amount=amount, reference=reference, reason=reason, actor=actor
        )
        try:
            with transaction.atomic():
                CreditGrant.objects.create(
                    wallet_id=row.wallet_id,
                    transaction=row,
                    amount=amount,
                    remaining=amount,
                    promotional=promotional,
                    expires_at=expires_at,
                )
        except IntegrityError:
            # A racing call with the same reference wrote the row and its lot first;
            # _post answered that row, which already has its lot.
            return row
        Wallet.objects.filter(pk=row.wallet_id).update(grants_remaining=F("grants_remaining") + amount)
    return row


def wallet_topup(
    *, user: User, amount: Decimal | int | str, reference: str, reason: str = "Stripe top-up"
) -> CreditTransaction:
    """Credits bought (reference: the PaymentIntent id)."""
    return _post(
        user_id=user.pk,
        kind=TransactionKind.TOPUP,
        amount=_positive_amount(amount),
        reference=_reference(reference, required=True),
        reason=_reason(reason),
    )


def wallet_debit(
    *,
    user: User,
    amount: Decimal | int | str,
    reference: str,
    reason: str = "",
    release_hold: str | None = None,
    reference_is_new: bool = False,
) -> CreditTransaction | None:
    """Charges `amount` (a positive magnitude, rounded up at the 8th place; reference:
    the turn id). Never refused for lack of credits: enforcement happens when the hold
    is placed, and what was used is owed. With `release_hold`, that hold is settled in
    the same transaction. A zero amount (a free turn) writes no ledger row, settles the
    hold and returns None. `reference_is_new`: inside its own transaction, the caller
    has made sure no debit can have this reference yet (a turn locked unfinished:
    every debit of a turn is written in the transaction that finishes it), so no
    savepoint guards a replay: it saves two statements, and a repeated reference
    fails the caller's transaction instead of answering the first row."""
    magnitude = _charge_amount(amount, allow_zero=True)
    reference = _reference(reference, required=True)
    if magnitude == 0:
        if release_hold is not None:
            _hold_close(user=user, reference=release_hold, status=CreditHold.Status.SETTLED)
        return None
    return _post(
        user_id=user.pk,
        kind=TransactionKind.DEBIT,
        amount=-magnitude,
        reference=reference,
        reason=_reason(reason),
        release_hold=release_hold,
        reference_is_new=reference_is_new,
    )


def wallet_refund(
    *, user: User, amount: Decimal | int | str, reason: str, reference: str | None = None
) -> CreditTransaction:
    """Gives credits back to the user (e.g. a charge made in error)."""
    return _post(
        user_id=user.pk,
        kind=TransactionKind.REFUND,
        amount=_positive_amount(amount),
        reference=_reference(reference, required=False),
        reason=_reason(reason, required=True),
    )


def wallet_reverse(*, user: User, amount: Decimal | int | str, reference: str, reason: str) -> CreditTransaction:
    """Takes credits back (a refunded or disputed payment; reference: the refund or
    dispute id). The amount is rounded up at the 8th place. May leave the balance
    negative: a take-back is never skipped."""
    return _post(
        user_id=user.pk,
        kind=TransactionKind.REVERSAL,
        amount=-_charge_amount(amount),
        reference=_reference(reference, required=True),
        reason=_reason(reason),
    )


def wallet_adjust(
    *,
    user: User,
    amount: Decimal | int | str,
    reason: str,
    reference: str | None = None,
    actor: User | None = None,
) -> CreditTransaction:
    """A signed correction (a dispute won, a goodwill fix); never zero, reason required."""
    value = _exact_amount(amount)
    if value == 0:
        raise field_error("amount", "An adjustment must not be zero.")
    return _post(
        user_id=user.pk,
        kind=TransactionKind.ADJUSTMENT,
        amount=value,
        reference=_reference(reference, required=False),
        reason=_reason(reason, required=True),
        actor=actor,
    )


# --- grants: promotional and expiring credits ------------------------------------------
#
# A grant that is promotional or expires is a lot (CreditGrant) besides its ledger
# row. Debits take from the lots first, in CreditGrant.consumption_key order, then
# from the rest of the balance. Nothing else touches a lot: a top-up, a refund, an
# adjustment adds to (or takes from) the rest of the balance, and so does a Stripe
# take-back (wallet_reverse): it takes back paid credits, never promotional ones.
# Every lot write happens under the wallet lock (lock order: wallet, then lots).


def _open_grants_locked(wallet: Wallet) -> list[CreditGrant]:
    """The wallet's lots with credits left, in the order they are used (the caller
    holds the wallet lock)."""
    return grants_in_order(CreditGrant.objects.filter(wallet_id=wallet.pk, remaining__gt=0))


def _grant_set_remaining(lot: CreditGrant, remaining: Decimal, **extra: Any) -> None:
    CreditGrant.objects.filter(pk=lot.pk).update(remaining=remaining, **extra)
    lot.remaining = remaining


def _grants_consume(*, lots: list[CreditGrant], amount: Decimal) -> Decimal:
    """Takes up to `amount` from the wallet's open lots, in order and none of them due
    to expire (the caller holds the wallet lock, has expired the due ones, writes the
    debit's ledger row in the same transaction and lowers grants_remaining by what this
    returns: what the lots gave). The rest of the debit falls on the rest of the
    balance."""
    taken = ZERO
    for lot in lots:
        if taken == amount:
            break
        share = min(lot.remaining, amount - taken)
        _grant_set_remaining(lot, lot.remaining - share)
        taken += share
    return taken


def _lot_due(lot: CreditGrant, now: datetime) -> bool:
    return lot.expires_at is not None and lot.expires_at <= now and lot.remaining > 0


def _expiry_reference(lot: CreditGrant) -> str:
    # The first expiry row of a lot (expired_at is set with it) is keyed by its id. A
    # lot expired before expiry took everything left kept the part turns in flight
    # held; its later row is also keyed by what was left before it, which only goes
    # down: the same pass run twice has the same key, two passes never do.
    return str(lot.pk) if lot.expired_at is None else f"{lot.pk}:{lot.remaining}"


def _lots_expire_locked(
    *, wallet: Wallet, user_id: int, lots: list[CreditGrant], now: datetime
) -> list[CreditTransaction]:
    """Expires everything left of each of `lots` (all due; the caller holds the wallet
    lock, and saves the wallet row after: this moves wallet.balance and
    wallet.grants_remaining in memory only): one `expiry` ledger row (negative) each,
    the lot's remaining to zero. What turns in flight hold of an expired lot is not kept for
    them: an expired credit is never spent, so those turns are paid from the rest of
    the balance (a debit is never refused; the overdraft rules bound it). Returns the
    rows written."""
    rows = []
    for lot in lots:
        expiring, reference = lot.remaining, _expiry_reference(lot)
        before, after = wallet.balance, wallet.balance - expiring
        try:
            with transaction.atomic():
                row = CreditTransaction.objects.create(
                    wallet=wallet,
                    kind=TransactionKind.EXPIRY,
                    amount=-expiring,
                    balance_after=after,
                    reference=reference,
                    reason=f"Grant {lot.pk} expired ({format_ledger(expiring)} of {format_ledger(lot.amount)} unused)",
                )
        except IntegrityError:
            # The lot says this expiry has not happened, the ledger says it has: never twice.
            raise StateConflict(f"Expiry {reference!r} is already on the ledger but grant {lot.pk} disagrees.")
        first_row = {"expired_at": now} if lot.expired_at is None else {}
        _grant_set_remaining(lot, ZERO, **first_row)
        wallet.balance, wallet.grants_remaining = after, wallet.grants_remaining - expiring
        _balance_fell(user_id=user_id, kind=TransactionKind.EXPIRY, before=before, after=after)
        rows.append(row)
    return rows


def grant_expire(*, grant_id: int, now: datetime | None = None) -> CreditTransaction | None:
    """Expires everything left of a lot whose expires_at has passed: one `expiry`
    ledger row (negative) and the lot's remaining to zero, in one transaction under
    the wallet lock. Returns the row, or None when there was nothing to expire (used
    up, expired already, by this sweep or by a debit of the wallet, or not yet due).
    Safe to run twice or at once: everything is re-read under the lock, and the
    reference is unique. A debit does the same first for the lots it finds due
    (_post_orm), so the sweep only makes the balance say it sooner."""
    now = now or timezone.now()
    user_id = CreditGrant.objects.filter(pk=grant_id).values_list("wallet__user_id", flat=True).first()
    if user_id is None:
        return None
    with transaction.atomic():
        wallet = _locked_wallet(user_id)
        lot = CreditGrant.objects.filter(pk=grant_id, wallet_id=wallet.pk).first()
        if lot is None or not _lot_due(lot, now):
            return None
        [row] = _lots_expire_locked(wallet=wallet, user_id=user_id, lots=[lot], now=now)
        _wallet_save(wallet, balance=wallet.balance, held=wallet.held, grants_remaining=wallet.grants_remaining)
        return row


def grants_expire_due(*, now: datetime | None = None) -> int:
    """The sweep (Celery beat: billing.expire_grants; `manage.py expire_grants`):
    expires every lot whose time has come, one transaction per lot, earliest first.
    Returns the number of `expiry` rows written."""
    now = now or timezone.now()
    due = CreditGrant.objects.filter(remaining__gt=0, expires_at__lte=now).order_by("expires_at", "pk")
    return sum(grant_expire(grant_id=grant_id, now=now) is not None for grant_id in due.values_list("pk", flat=True))


def _grant_expires_at(expires_at: datetime | None) -> datetime | None:
    if expires_at is None:
        return None
    if timezone.is_naive(expires_at):
        raise field_error("expires_at", "A time with a time zone is required (e.g. 2027-01-31T00:00:00Z).")
    if expires_at <= timezone.now():
        raise field_error("expires_at", "Must be in the future.")
    return expires_at


# --- holds ------------------------------------------------------------------------


def _hold_close_locked(*, wallet: Wallet, reference: str, status: str, charge: Decimal = ZERO) -> Decimal:
    """Closes the wallet's active hold of `reference` (the caller holds the wallet
    lock, which every hold write takes first) and returns the amount it held. The
    spend limits it counted against (billing.limits) lose the hold and gain `charge`."""
    hold = (
        CreditHold.objects.filter(wallet=wallet, reference=reference, status=CreditHold.Status.ACTIVE)
        .only("id", "amount", "end_user_counter_id", "member_counter_id", "key_counter_id", "cap_counter_id")
        .first()
    )
    if hold is None:
        return ZERO
    CreditHold.objects.filter(pk=hold.pk).update(status=status, closed_at=timezone.now())
    counter_ids = (hold.end_user_counter_id, hold.member_counter_id, hold.key_counter_id, hold.cap_counter_id)
    if any(counter_ids):
        limits.spend_counters_settle(counter_ids=counter_ids, held=hold.amount, charge=charge)
    return hold.amount


def _hold_close(*, user: User, reference: str, status: str) -> None:
    # A retried release or settle finds the hold already closed (or never placed):
    # answer it without taking the wallet lock.
    if not CreditHold.objects.filter(
        reference=reference, wallet__user_id=user.pk, status=CreditHold.Status.ACTIVE
    ).exists():
        return
    with transaction.atomic():
        wallet = _locked_wallet(user.pk)
        released = _hold_close_locked(wallet=wallet, reference=reference, status=status)
        if released:
            _wallet_save(wallet, balance=wallet.balance, held=wallet.held - released)


def hold_overdraft() -> Decimal:
    """How far below zero a hold may take the available balance: nothing in `block`
    mode; BILLING_OVERDRAFT_LIMIT in `warn` mode, so warn-only never means unbounded
    (an account given nothing can be owed at most this much)."""
    return ZERO if settings.BILLING_ENFORCEMENT == "block" else settings.BILLING_OVERDRAFT_LIMIT


def wallet_hold_place(
    *,
    user: User,
    amount: Decimal | int | str,
    reference: str,
    spend_limits: Sequence[limits.SpendLimit] = (),
    now: datetime | None = None,
    reference_is_new: bool = False,
) -> CreditHold:
    """Reserves the worst-case cost of a turn (reference: the turn id; rounded up at
    the 8th place). Refuses (402) when the available balance less `amount` would fall
    below -hold_overdraft(): below 0 in `block` mode, below -BILLING_OVERDRAFT_LIMIT
    in `warn` mode. The check runs on the locked wallet row, so concurrent holds of
    one wallet cannot pass it together. With `spend_limits` (billing.limits: a key's
    budget, the account's cap), the same amount is held against each of them under
    the same lock and in the same transaction, or refused (402, naming the limit).
    Placing a reference again returns the first hold, whatever its state, unless
    `reference_is_new`: the caller made the reference inside its own transaction (a
    turn it just inserted), so no hold can have it and no savepoint guards a replay
    (two statements fewer on every turn request)."""
    amount = _charge_amount(amount, allow_zero=True)
    reference = _reference(reference, required=True)
    overdraft = hold_overdraft()
    # A new reference (every turn) costs no lookup: the unique reference decides a
    # replay, whose INSERT fails and rolls back this block's savepoint only.
    try:
        with transaction.atomic(savepoint=not reference_is_new):
            hold, placed = None, True
            if connection.vendor == "postgresql":
                hold = _sql.hold_place(user_id=user.pk, amount=amount, reference=reference, overdraft=overdraft)
            if hold is None:
                hold, placed = _hold_place_checked(
                    user_id=user.pk, amount=amount, reference=reference, overdraft=overdraft
                )
            if placed and spend_limits:
                # The wallet row is locked (placing the hold took it): counters next.
                limits.spend_limits_hold(hold=hold, limits=spend_limits, now=now)
            return hold
    except IntegrityError:
        if reference_is_new:  # no savepoint: the caller's transaction is spoilt
            raise
        if (hold := _hold_replayed(reference=reference, user_id=user.pk)) is not None:
            return hold
        raise


def _hold_place_orm(*, user_id: int, amount: Decimal, reference: str, overdraft: Decimal) -> CreditHold:
    return _hold_place_checked(user_id=user_id, amount=amount, reference=reference, overdraft=overdraft)[0]


def _hold_place_checked(
    *, user_id: int, amount: Decimal, reference: str, overdraft: Decimal
) -> tuple[CreditHold, bool]:
    """Any database (and PostgreSQL when billing._sql.hold_place placed nothing: no
    wallet yet, or not covered): lock the wallet, check, write the hold and `held`.
    (hold, True) when placed now; (the earlier hold, False) for a replay."""
    wallet = _locked_wallet(user_id)
    available = wallet.balance - wallet.held
    if available + overdraft < amount:
        # A replay must not be refused because its own first hold uses the credits.
        if (hold := _hold_replayed(reference=reference, user_id=user_id)) is not None:
            return hold, False
        raise InsufficientCredits(_not_covered(available=available, amount=amount, overdraft=overdraft))
    hold = CreditHold.objects.create(wallet=wallet, reference=reference, amount=amount)
    _wallet_save(wallet, balance=wallet.balance, held=wallet.held + amount)
    return hold, True


def _not_covered(*, available: Decimal, amount: Decimal, overdraft: Decimal) -> str:
    available, amount = format_ledger(available), format_ledger(amount)
    if not overdraft:
        return f"Available balance {available} does not cover this turn's worst-case cost {amount}."
    return (
        f"This turn could cost up to {amount} credits; your available balance is {available} and may go at most "
        f"{format_ledger(overdraft)} credits below zero (the overdraft limit). Top up, or ask for a grant, to continue."
    )


def _hold_replayed(*, reference: str, user_id: int) -> CreditHold | None:
    """The hold placed earlier with this reference, whatever its state, if any."""
    hold = CreditHold.objects.select_related("wallet").filter(reference=reference).first()
    if hold is not None and hold.wallet.user_id != user_id:
        raise StateConflict(f"Hold reference {reference!r} was already used for another wallet.")
    return hold


def wallet_hold_release(*, user: User, reference: str) -> None:
    """Releases a hold without charging (the turn failed). Safe to call twice, and
    after the hold was settled (then it does nothing)."""
    _hold_close(user=user, reference=reference, status=CreditHold.Status.RELEASED)


# --- reconciliation -----------------------------------------------------------------


@dataclass(frozen=True)
class WalletFix:
    adjustment: CreditTransaction | None
    held_before: Decimal
    held_after: Decimal


def wallet_reconcile(*, wallet: Wallet) -> WalletFix:
    """Repairs a wallet whose caches drifted from its ledger and holds (something wrote
    around this module). The cached balance is what the user has been shown and spent
    against, so the ledger is brought to it with an `adjustment` row that records the
    unexplained difference (balance unchanged, and now equal to the ledger sum and the
    last balance_after). `held` is a cache of the active holds and is recomputed."""
    with transaction.atomic():
        locked = _locked_wallet(wallet.user_id)
        ledger_sum = CreditTransaction.objects.filter(wallet=locked).aggregate(total=Coalesce(Sum("amount"), ZERO))[
            "total"
        ]
        holds_sum = CreditHold.objects.filter(wallet=locked, status=CreditHold.Status.ACTIVE).aggregate(
            total=Coalesce(Sum("amount"), ZERO)
        )["total"]
        held_before = locked.held
        adjustment = None
        difference = locked.balance - ledger_sum
        if difference != 0:
            adjustment = CreditTransaction.objects.create(
                wallet=locked,
                kind=TransactionKind.ADJUSTMENT,
                amount=difference,
                balance_after=locked.balance,
                reason=(
                    f"reconcile_wallets: cached balance {locked.balance} differed from the ledger sum "
                    f"{ledger_sum} by {difference}"
                ),
            )
        if holds_sum != locked.held:
            _wallet_save(locked, balance=locked.balance, held=holds_sum)
        # grants_remaining is a cache of the lots' remaining, recomputed like `held`. A
        # lot the ledger does not explain is reported by reconcile_wallets, never
        # rewritten here: which side is wrong needs a person.
        grants_sum = CreditGrant.objects.filter(wallet=locked).aggregate(total=Coalesce(Sum("remaining"), ZERO))[
            "total"
        ]
        if grants_sum != locked.grants_remaining:
            Wallet.objects.filter(pk=locked.pk).update(grants_remaining=grants_sum)
        return WalletFix(adjustment=adjustment, held_before=held_before, held_after=holds_sum)


# --- prices -----------------------------------------------------------------------

PRICE_FIELDS = (
    "provider",
    "provider_model",
    "input_credits_per_mtok",
    "output_credits_per_mtok",
    "cached_input_credits_per_mtok",
    "cache_write_credits_per_mtok",
    "tier_threshold_tokens",
    "tier_input_credits_per_mtok",
    "tier_output_credits_per_mtok",
    "context_tokens",
    "max_output_tokens",
    "counting",
    "kind",
)
# Prices that may be left empty (None): the class prices default to the input price,
# and a row without a tier has none of the tier's three fields.
OPTIONAL_PRICES = (
    "cached_input_credits_per_mtok",
    "cache_write_credits_per_mtok",
    "tier_input_credits_per_mtok",
    "tier_output_credits_per_mtok",
)
TIER_FIELDS = ("tier_threshold_tokens", "tier_input_credits_per_mtok", "tier_output_credits_per_mtok")


def model_price_values_clean(values: dict[str, Any]) -> dict[str, Any]:
    """A price row's values checked and normalised by the pricing rules (400 naming the
    first bad field): what create and change write, and what the admin form checks."""
    cleaned = dict(values)
    cleaned["kind"] = cleaned.get("kind") or ModelPrice.Kind.CHAT
    if cleaned["kind"] not in ModelPrice.Kind.values:
        raise field_error("kind", f"One of: {', '.join(ModelPrice.Kind.values)}.")
    if cleaned.get("provider") not in ModelPrice.Provider.values:
        raise field_error("provider", f"One of: {', '.join(ModelPrice.Provider.values)}.")
    if not str(cleaned.get("provider_model") or "").strip():
        raise field_error("provider_model", "A provider model is required.")
    for name in ("input_credits_per_mtok", "output_credits_per_mtok", *OPTIONAL_PRICES):
        if name in OPTIONAL_PRICES and cleaned.get(name) in (None, ""):
            cleaned[name] = None
            continue
        try:
            cleaned[name] = ledger_exact(_number(cleaned[name], name))
        except ValueError as exc:
            raise field_error(name, str(exc))
        if cleaned[name] < 0:
            raise field_error(name, "A price must not be negative.")
    for name in ("context_tokens", "max_output_tokens"):
        if not isinstance(cleaned.get(name), int) or cleaned[name] <= 0:
            raise field_error(name, "A positive number of tokens is required.")
    threshold = cleaned.get("tier_threshold_tokens")
    if threshold is not None and (not isinstance(threshold, int) or isinstance(threshold, bool) or threshold <= 0):
        raise field_error("tier_threshold_tokens", "A positive number of tokens, or empty for no tier.")
    tier = [cleaned.get(name) is not None for name in TIER_FIELDS]
    if any(tier) and not all(tier):
        missing = next(name for name, given in zip(TIER_FIELDS, tier, strict=True) if not given)
        raise field_error(missing, "A tier needs its threshold and both its prices.")
    cleaned["counting"] = cleaned.get("counting") or ModelPrice.Counting.BYTES
    if cleaned["counting"] not in ModelPrice.Counting.values:
        raise field_error("counting", f"One of: {', '.join(ModelPrice.Counting.values)}.")
    return cleaned


def model_price_create(
    *,
    alias: str,
    provider: str,
    provider_model: str,
    input_credits_per_mtok: Decimal | int | str,
    output_credits_per_mtok: Decimal | int | str,
    context_tokens: int = 8192,
    max_output_tokens: int = 1024,
    cached_input_credits_per_mtok: Decimal | int | str | None = None,
    cache_write_credits_per_mtok: Decimal | int | str | None = None,
    tier_threshold_tokens: int | None = None,
    tier_input_credits_per_mtok: Decimal | int | str | None = None,
    tier_output_credits_per_mtok: Decimal | int | str | None = None,
    counting: str = ModelPrice.Counting.BYTES,
    kind: str = ModelPrice.Kind.CHAT,
) -> ModelPrice:
    """The first active price of an alias (to change one, use model_price_change).
    The cached and cache-write prices default to the input price; a tier is its
    threshold and both its prices, or none; `counting` is how input is counted
    (ModelPrice.Counting); `kind`, what it serves (chat, or embeddings)."""
    alias = alias.strip()
    if not alias:
        raise field_error("alias", "An alias is required.")
    values = model_price_values_clean(
        {
            "provider": provider,
            "provider_model": provider_model,
            "input_credits_per_mtok": input_credits_per_mtok,
            "output_credits_per_mtok": output_credits_per_mtok,
            "cached_input_credits_per_mtok": cached_input_credits_per_mtok,
            "cache_write_credits_per_mtok": cache_write_credits_per_mtok,
            "tier_threshold_tokens": tier_threshold_tokens,
            "tier_input_credits_per_mtok": tier_input_credits_per_mtok,
            "tier_output_credits_per_mtok": tier_output_credits_per_mtok,
            "context_tokens": context_tokens,
            "max_output_tokens": max_output_tokens,
            "counting": counting,
            "kind": kind,
        }
    )
    try:
        with transaction.atomic():
            return ModelPrice.objects.create(alias=alias, active=True, **values)
    except IntegrityError:
        if ModelPrice.objects.filter(alias=alias, active=True).exists():
            raise field_error("alias", f"{alias!r} already has an active price; change that one instead.")
        raise


@transaction.atomic
def model_price_change(*, price: ModelPrice, **changes: Any) -> ModelPrice:
    """A new price for an alias: a new active row with `changes` applied, and the old
    row deactivated in the same transaction. Rows are never rewritten, so every LLM
    call keeps the price it was charged at. No change returns the row as it is."""
    unknown = set(changes) - set(PRICE_FIELDS)
    if unknown:
        raise field_error(sorted(unknown)[0], "This field cannot be changed.")
    current = ModelPrice.objects.select_for_update().get(pk=price.pk)
    if not current.active:
        raise StateConflict("An inactive price is history and cannot be changed.")
    values = model_price_values_clean({name: changes.get(name, getattr(current, name)) for name in PRICE_FIELDS})
    if all(values[name] == getattr(current, name) for name in PRICE_FIELDS):
        return current
    # Deactivate first: at most one active row per alias (a partial unique index).
    ModelPrice.objects.filter(pk=current.pk).update(active=False)
    return ModelPrice.objects.create(alias=current.alias, active=True, **values)


def model_price_deactivate(*, price: ModelPrice) -> ModelPrice:
    """Withdraws an alias (no active price any more). The row itself is kept."""
    ModelPrice.objects.filter(pk=price.pk, active=True).update(active=False)
    price.refresh_from_db(fields=["active"])
    return price


def model_price_set(*, alias: str, **values: Any) -> ModelPrice:
    """Makes the alias's active price these values (create or change, with the same
    fields as model_price_create); for seed data and scripts, safe to run again."""
    current = ModelPrice.objects.filter(alias=alias, active=True).first()
    if current is None:
        return model_price_create(alias=alias, **values)
    return model_price_change(price=current, **values)


__all__ = [
    "model_price_change",
    "model_price_values_clean",
    "model_price_create",
    "model_price_deactivate",
    "model_price_set",
    "wallet_adjust",
    "wallet_create",
    "wallet_debit",
    "wallet_grant",
    "grant_expire",
    "grants_expire_due",
    "wallet_hold_place",
    "wallet_hold_release",
    "wallet_refund",
    "wallet_reconcile",
    "wallet_reverse",
    "wallet_topup",
    "hold_overdraft",
]
