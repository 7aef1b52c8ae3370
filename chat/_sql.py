"""Chat's raw SQL, each statement beside the benchmark figure that keeps it
(bench/sql_chat.py: CPU time per call, raw against the ORM query it replaces).

The rule (STYLE.md, "Raw SQL"): a statement stays only on the turn hot path and only
where it saves at least 10% of the ORM path's cost; tests/chat/test_sql.py checks
that each one reads or writes the same rows as its ORM twin.
"""

from uuid import UUID

from django.db import connection
from django.utils import timezone

from chat.models import ChatSession, Message, Turn, UploadedFile


def uuid_param(value: UUID | str) -> str:
    """A UUID as plain SQL takes it on both databases (SQLite stores Django's UUIDs as
    32 hex digits; PostgreSQL reads those as a uuid)."""
    return (value if isinstance(value, UUID) else UUID(str(value))).hex


_SESSION_GET = f"SELECT * FROM {ChatSession._meta.db_table} WHERE id = %s AND user_id = %s AND deleted_at IS NULL"  # noqa: S608

BIGINT_MAX = 2**63 - 1


def session_get(*, user_id: int, session_id: int) -> ChatSession | None:
    if session_id > BIGINT_MAX:  # the ORM answers "none" for an id out of range; a raw query fails
        return None
    return next(iter(ChatSession.objects.raw(_SESSION_GET, [session_id, user_id])), None)


_TURN_STATUS = f"SELECT status FROM {Turn._meta.db_table} WHERE id = %s"  # noqa: S608


def turn_status(*, turn_id: UUID | str, lock: bool) -> str | None:
    sql = _TURN_STATUS + (" FOR UPDATE" if lock and connection.features.has_select_for_update else "")
    with connection.cursor() as cursor:
        cursor.execute(sql, [uuid_param(turn_id)])
        row = cursor.fetchone()
    return row[0] if row is not None else None


_TURN_START = (
    f"UPDATE {Turn._meta.db_table} SET status = %s, started_at = COALESCE(started_at, %s), "  # noqa: S608
    "attempts = attempts + 1 WHERE id = %s AND status IN (%s, %s)"
)


def turn_start(*, turn_id: UUID | str) -> bool:
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    with connection.cursor() as cursor:
        cursor.execute(_TURN_START, [Turn.Status.RUNNING, now, uuid_param(turn_id), *UNFINISHED])
        return bool(cursor.rowcount)


UNFINISHED = (Turn.Status.QUEUED, Turn.Status.RUNNING)


def session_history_size(*, session: ChatSession, scan: int) -> tuple[int, int]:
    # LENGTH counts characters on PostgreSQL and SQLite.
    where, params = ["session_id = %s"], [session.pk]
    if session.summary_through_message_id:
        where.append("id > %s")
        params.append(session.summary_through_message_id)
    sql = (
        f"SELECT COUNT(*), SUM(LENGTH(content)) FROM (SELECT content FROM {Message._meta.db_table} "  # noqa: S608
        f"WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT %s) newest"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, scan])
        count, chars = cursor.fetchone()
    return count or 0, chars or 0


_USER_HAS_FILES = f"SELECT 1 FROM {UploadedFile._meta.db_table} WHERE owner_id = %s LIMIT 1"  # noqa: S608


def user_has_files(*, user_id: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(_USER_HAS_FILES, [user_id])
        return cursor.fetchone() is not None
