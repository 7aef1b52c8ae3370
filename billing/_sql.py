"""Billing's raw SQL, all of it: PostgreSQL statements that replace an ORM path on a
hot path, each kept only because bench/sql_billing.py measured it saving at least
10% of the cost of the ORM path it replaces (figures beside each statement: mean
per call in one process on the 2-core dev machine, client CPU time and wall time).
Each has a test that runs it and the ORM path on PostgreSQL against the same inputs
and requires identical ledger rows, holds and balances
(tests/billing/test_sql.py). Everything is parameterised; table and column names
come from the models.

billing.services runs the ledger and hold statements on PostgreSQL only and keeps
the ORM path for every other database; the price lookup and a turn's hold amount
are plain SQL that every database runs (core.rawsql), so they have no ORM twin left.
"""

from decimal import Decimal

from django.db import connection, transaction
from django.utils import timezone

from billing.models import CreditHold, CreditTransaction, ModelPrice, SpendCounter, TransactionKind, Wallet
from core import rawsql

_LEDGER_FIELDS = [field.attname for field in CreditTransaction._meta.concrete_fields]
_HOLD_FIELDS = [field.attname for field in CreditHold._meta.concrete_fields]

# --- posting a ledger row ----------------------------------------------------------
#
# services._post_orm does it in five statements in one transaction (SELECT ... FOR
# UPDATE of the wallet, [hold SELECT + UPDATE], INSERT, UPDATE of the wallet).
# PostgreSQL does the same in one: the wallet UPDATE takes the row lock and returns
# the new balance, the INSERT writes the ledger row with it. Outside a transaction
# the statement is its own transaction, so the hot wallet's row lock is held for one
# statement and its commit, not for several round trips. A duplicate reference fails
# the whole statement: nothing is written. (Numbers stay NUMERIC.)
# Measured (bench/sql_billing.py, 2000 calls per path in 10 interleaved rounds on a loaded
# 2-core machine; mean per call), a debit: raw 399 us CPU / 5238 us wall, ORM 1902 us
# CPU / 9951 us wall: raw saves 79% CPU, 47% wall.
_POST = """
WITH {hold_cte}
wallet AS (
    UPDATE {wallet_table}
       SET balance = balance + %(amount)s, {held_set} updated_at = %(now)s
     WHERE {wallet_match}
 RETURNING id, balance
)
INSERT INTO {ledger_table} (wallet_id, kind, amount, balance_after, reference, actor_id, reason, created_at)
SELECT wallet.id, %(kind)s, %(amount)s, wallet.balance, %(reference)s, %(actor_id)s, %(reason)s, %(now)s FROM wallet
RETURNING {columns}
"""
_TABLES = {
    "wallet_table": Wallet._meta.db_table,
    "ledger_table": CreditTransaction._meta.db_table,
    "columns": ", ".join(field.column for field in CreditTransaction._meta.concrete_fields),
}
_POST_PLAIN = _POST.format(**_TABLES, hold_cte="", held_set="", wallet_match="user_id = %(user_id)s")
# A debit moves the wallet only when it has no grants left (promotional or expiring
# lots, which a debit must use first: services._post_orm does that, under the lock).
# Most wallets have none, and then a debit costs one more comparison on the row it
# locks anyway (bench/ledger.py before/after: no difference beyond the noise of a
# loaded 2-core machine; service/bare ratios hot 66-68% -> 66-75%, spread 51-65% ->
# 47-65%); otherwise no row comes back and services runs the ORM path (measured
# single-threaded: 8 statements, ~7.1 ms wall / 4.3 ms CPU against 1.1 ms / 0.35 ms).
_POST_PLAIN_DEBIT = _POST.format(
    **_TABLES, hold_cte="", held_set="", wallet_match="user_id = %(user_id)s AND grants_remaining = 0"
)
# Settling a hold (a turn's debit): the wallet row is locked first (the lock order of
# every hold write: wallet, then hold); the hold's amount leaves `held` in the same
# statement. Measured, a debit settling its hold: raw 674 us CPU / 6788 us wall, ORM
# 3058 us CPU / 14766 us wall: raw saves 78% CPU, 54% wall.
# The spend limits the hold counted against (billing.limits; none for most turns:
# the UPDATE then matches no row) lose the hold and gain the charge, in the same
# statement; the wallet lock taken before it keeps the lock order wallet, counters.
_HOLD_CTE = """hold AS (
    UPDATE {hold_table}
       SET status = %(settled)s, closed_at = %(now)s
     WHERE wallet_id = %(wallet_id)s AND reference = %(hold)s AND status = %(active)s
 RETURNING amount, end_user_counter_id, member_counter_id, key_counter_id, cap_counter_id
),
counters AS (
    UPDATE {counter_table} AS counter
       SET held = counter.held - hold.amount, spent = counter.spent - %(amount)s
      FROM hold
     WHERE counter.id IN (hold.end_user_counter_id, hold.member_counter_id, hold.key_counter_id, hold.cap_counter_id)
),"""
_POST_SETTLING = _POST.format(
    **_TABLES,
    hold_cte=_HOLD_CTE.format(hold_table=CreditHold._meta.db_table, counter_table=SpendCounter._meta.db_table),
    held_set="held = held - COALESCE((SELECT SUM(amount) FROM hold), 0),",
    wallet_match="id = %(wallet_id)s",
)
_WALLET_LOCK = f"SELECT id, grants_remaining FROM {Wallet._meta.db_table} WHERE user_id = %s FOR UPDATE"  # noqa: S608


def _fetch(sql: str, params: dict | list) -> tuple | None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


def _wallet_lock(user_id: int) -> tuple[int, Decimal] | None:
    """Locks the user's wallet row until the transaction ends: its id and
    grants_remaining, or None when the user has no wallet row yet."""
    return _fetch(_WALLET_LOCK, [user_id])


def ledger_post(
    *,
    user_id: int,
    kind: TransactionKind,
    amount: Decimal,
    reference: str | None,
    reason: str,
    actor_id: int | None,
    release_hold: str | None,
    savepoint: bool = True,
) -> CreditTransaction | None:
    """services._post_orm in one statement: the ledger row of a validated, signed
    `amount`, the wallet's cached balance (and with `release_hold`, that hold settled
    and `held`). A repeated reference raises IntegrityError and writes nothing. None,
    having written nothing, when the user has no wallet row yet or for a debit of a
    wallet with grants left: services._post_orm does those. Inside the caller's
    transaction, a savepoint unless the caller knows the reference is new."""
    params = {
        "user_id": user_id,
        "kind": str(kind),
        "amount": amount,
        "reference": reference,
        "actor_id": actor_id,
        "reason": reason,
        "now": timezone.now(),
    }

    plain = _POST_PLAIN_DEBIT if kind == TransactionKind.DEBIT else _POST_PLAIN

    def fetch_plain() -> tuple | None:
        if connection.get_autocommit():
            return _fetch(plain, params)  # the statement is its own transaction
        # Inside the caller's transaction: a savepoint, so a refused statement (a
        # repeated reference) does not poison the caller's transaction.
        with transaction.atomic(savepoint=savepoint):
            return _fetch(plain, params)

    if release_hold is not None:
        with transaction.atomic(savepoint=savepoint):
            if (locked := _wallet_lock(user_id)) is None or (kind == TransactionKind.DEBIT and locked[1] > 0):
                return None
            params.update(
                wallet_id=locked[0],
                hold=release_hold,
                settled=str(CreditHold.Status.SETTLED),
                active=str(CreditHold.Status.ACTIVE),
            )
            values = _fetch(_POST_SETTLING, params)
    elif (values := fetch_plain()) is None:
        return None
    return CreditTransaction.from_db(connection.alias, _LEDGER_FIELDS, values)


# --- placing a hold ------------------------------------------------------------------
#
# One statement: the wallet UPDATE takes the row lock (the lock order of every hold
# write: wallet, then hold) and moves only when the available balance, less the
# amount, stays at or above -overdraft (0 in `block` mode, BILLING_OVERDRAFT_LIMIT in
# `warn` mode), re-checked on the locked row, so concurrent holds can never go past
# it; the INSERT writes the hold. No row back: no wallet yet, or not covered; the ORM
# path then finds out which.
# Measured, in block mode: raw 573 us CPU / 5595 us wall, ORM 1791 us CPU / 9258 us
# wall: raw saves 68% CPU, 40% wall.
_HOLD_PLACE = f"""
WITH wallet AS (
    UPDATE {Wallet._meta.db_table}
       SET held = held + %(amount)s, updated_at = %(now)s
     WHERE user_id = %(user_id)s AND balance - held + %(overdraft)s >= %(amount)s
 RETURNING id
)
INSERT INTO {CreditHold._meta.db_table} (wallet_id, reference, amount, status, created_at, closed_at)
SELECT wallet.id, %(reference)s, %(amount)s, %(active)s, %(now)s, NULL FROM wallet
RETURNING {", ".join(field.column for field in CreditHold._meta.concrete_fields)}
"""  # noqa: S608


def hold_place(*, user_id: int, amount: Decimal, reference: str, overdraft: Decimal) -> CreditHold | None:
    """The hold, placed; None when the wallet is missing or the available balance less
    `amount` would fall below -`overdraft`. Run it in the caller's savepoint: a
    repeated reference raises IntegrityError."""
    params = {
        "user_id": user_id,
        "amount": amount,
        "reference": reference,
        "overdraft": overdraft,
        "active": str(CreditHold.Status.ACTIVE),
        "now": timezone.now(),
    }
    values = _fetch(_HOLD_PLACE, params)
    return None if values is None else CreditHold.from_db(connection.alias, _HOLD_FIELDS, values)


# --- the active price of an alias ------------------------------------------------------
#
# Read for every turn (and every participant of a roundtable). The queryset it
# replaces, ModelPrice.objects.filter(alias=..., active=True).first(), spends most of
# its time building and compiling the query (and adds an ORDER BY); one row at most is
# active per alias (billing_modelprice_one_active_per_alias). Measured: raw 105 us CPU
# / 190 us wall, ORM 483 us CPU / 588 us wall: raw saves 78% CPU, 68% wall.
_PRICE_ACTIVE = (
    f"SELECT {rawsql.columns(ModelPrice, 'p')} FROM {ModelPrice._meta.db_table} p WHERE alias = %s AND active = %s"  # noqa: S608
)


def model_price_active(*, alias: str) -> ModelPrice | None:
    rows = rawsql.fetch(_PRICE_ACTIVE, [alias, True], [ModelPrice])
    return rows[0][0] if rows else None


# --- a turn's hold ------------------------------------------------------------------
#
# Read by every run of a chat turn (its spending ceiling): 80 us raw vs 362 us ORM CPU
# (-78%), 163 vs 454 us wall.
_HOLD_AMOUNT = f"SELECT amount FROM {CreditHold._meta.db_table} WHERE reference = %s"  # noqa: S608


def hold_amount(*, reference: str) -> Decimal | None:
    rows = rawsql.fetch_values(_HOLD_AMOUNT, [reference], CreditHold, ("amount",))
    return rows[0]["amount"] if rows else None
