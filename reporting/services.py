"""Writes of the usage rollups.

Invariant: for every (UTC day, user, model alias, source, end user, purpose, member), UsageDaily holds exactly
the count and sums (each token class, credits) of the LLMCall rows of that key (the source is the call's
session's: chat API or OpenAI-compatible endpoint; the end user and purpose its turn's). `usage_rollup_add` keeps it so inside the
transaction that records the calls (chat's turn completion); `usage_rollups_rebuild`
recomputes a date range from the raw calls.

Both aggregate the stored LLMCall rows in SQL rather than the Python objects, so the
rollup can never drift from what the database holds (a credits figure the database
rounded differently, a timestamp set after the object was built), and each turn costs
one statement: INSERT ... SELECT ... ON CONFLICT DO UPDATE with additive updates.
"""

from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta

from django.db import connection, transaction

from chat.models import ChatSession, LLMCall, Turn
from reporting.models import UsageDaily
from reporting.selectors import TOKENS

ROLLUP_TABLE = UsageDaily._meta.db_table
CALL_TABLE = LLMCall._meta.db_table
TURN_TABLE = Turn._meta.db_table
SESSION_TABLE = ChatSession._meta.db_table
# A rollup row's key (its unique constraint): the turn's end user (0: none), purpose
# and organization member (0: none).
KEY = ("day", "user_id", "model_alias", "source", "end_user_id", "purpose", "membership_id")


def _utc_day_sql() -> str:
    """The UTC calendar day of chat_llmcall.created_at, in the database's dialect."""
    if connection.vendor == "postgresql":
        return "(c.created_at AT TIME ZONE 'UTC')::date"
    if connection.vendor == "sqlite":
        return "date(c.created_at)"  # Django stores SQLite datetimes as UTC text
    raise NotImplementedError(f"usage rollups support PostgreSQL and SQLite, not {connection.vendor}")


def _insert_aggregated(*, where: str, params: list, additive: bool) -> int:
    """Aggregates the calls matching `where` into rollup rows. ORDER BY makes two
    transactions touching the same rollup rows lock them in the same order (no deadlock).
    Only table names, column names and our own fixed clauses are interpolated; values
    go in `params`."""
    # Each token figure is the SUM of the LLMCall column of the same name; calls is
    # COUNT(*), credits the SUM of credits_burned.
    figures = ("calls", *TOKENS, "credits")
    sums = ", ".join(f"SUM(c.{name})" for name in TOKENS)
    sql = (
        f"INSERT INTO {ROLLUP_TABLE} ({', '.join(KEY)}, {', '.join(figures)}) "  # noqa: S608
        f"SELECT {_utc_day_sql()}, c.user_id, c.model_alias, s.source, COALESCE(t.end_user_id, 0), t.purpose, "
        f"COALESCE(t.membership_id, 0), "
        f"COUNT(*), {sums}, SUM(c.credits_burned) FROM {CALL_TABLE} c "
        f"JOIN {TURN_TABLE} t ON t.id = c.turn_id JOIN {SESSION_TABLE} s ON s.id = t.session_id "
        f"WHERE {where} GROUP BY 1, 2, 3, 4, 5, 6, 7 ORDER BY 1, 2, 3, 4, 5, 6, 7"
    )
    if additive:
        # Increments, not overwrites: concurrent turns for the same row never lose an update.
        sql += f" ON CONFLICT ({', '.join(KEY)}) DO UPDATE SET " + ", ".join(
            f"{name} = {ROLLUP_TABLE}.{name} + excluded.{name}" for name in figures
        )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def usage_rollup_add(*, llm_calls: Iterable[LLMCall]) -> None:
    """Adds saved LLM calls to their (UTC day, user, alias, source, end user, purpose) rollup rows. Call it in the
    transaction that inserts the calls, once per call: a call added twice counts twice."""
    pks = {call.pk for call in llm_calls}
    if None in pks:
        raise ValueError("usage_rollup_add needs saved LLM calls (the rollup is computed from the stored rows).")
    if not pks:
        return
    ids = sorted(pks)
    placeholders = ", ".join(["%s"] * len(ids))
    _insert_aggregated(where=f"c.id IN ({placeholders})", params=ids, additive=True)


def _day_start(day: date) -> str | datetime:
    return connection.ops.adapt_datetimefield_value(datetime.combine(day, time.min, tzinfo=UTC))


@transaction.atomic
def usage_rollups_rebuild(*, from_date: date | None = None, to_date: date | None = None) -> int:
    """Deletes and recomputes the rollups of [from_date, to_date] (inclusive UTC days;
    open ends mean all) from the raw calls, in one transaction. Returns the rows written.

    On PostgreSQL the rollup table is locked against writers first: a turn completing
    meanwhile waits, then adds its calls on top of the rebuilt rows, so it is counted
    exactly once (its calls are either committed before the rebuild reads them and its
    rollup update is already in the table, or both come after)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {ROLLUP_TABLE} IN SHARE ROW EXCLUSIVE MODE")
    rollups = UsageDaily.objects.all()
    conditions, params = ["TRUE"], []
    if from_date is not None:
        rollups = rollups.filter(day__gte=from_date)
        conditions.append("c.created_at >= %s")
        params.append(_day_start(from_date))
    if to_date is not None:
        rollups = rollups.filter(day__lte=to_date)
        if to_date < date.max:  # the last representable day has no next day to stop before
            conditions.append("c.created_at < %s")
            params.append(_day_start(to_date + timedelta(days=1)))
    rollups.delete()
    return _insert_aggregated(where=" AND ".join(conditions), params=params, additive=False)
