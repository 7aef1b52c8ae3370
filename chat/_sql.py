"""Chat's raw SQL, each statement beside the benchmark figure that keeps it
(bench/sql_chat.py on PostgreSQL: CPU time per call in the Django process, raw
against the ORM query it replaces; 3000 calls each, interleaved, on a busy 2-core
machine, so read the ratios rather than the microseconds). Every one is on the turn
hot path and saves far more than the 10% bar: building an ORM query (and, for
session_get, a model through the queryset machinery) costs more than running it.

The rule (STYLE.md, "Raw SQL"): a statement stays only on the turn hot path and only
where it saves at least 10% of the ORM path's cost; tests/chat/test_sql.py checks
that each one reads or writes the same rows as its ORM twin.
"""

from datetime import datetime
from uuid import UUID

from django.db import connection
from django.utils import timezone

from accounts.models import User
from billing.models import ModelPrice
from chat.models import ChatSession, Message, Turn, UploadedFile
from core import rawsql
from core.pagination import BIGINT_MAX

UNFINISHED = (Turn.Status.QUEUED, Turn.Status.RUNNING)


def uuid_param(value: UUID | str) -> str:
    """A UUID as plain SQL takes it on both databases (SQLite stores Django's UUIDs as
    32 hex digits; PostgreSQL reads those as a uuid)."""
    return (value if isinstance(value, UUID) else UUID(str(value))).hex


# POST turns, and every sessions/{id} endpoint: 114 us raw vs 600 us ORM CPU (-81%).
_SESSION_GET = (
    f"SELECT {rawsql.columns(ChatSession, 's')} FROM {ChatSession._meta.db_table} s "  # noqa: S608
    "WHERE id = %s AND user_id = %s AND deleted_at IS NULL"
)


def session_get(*, user_id: int, session_id: int, membership_id: int | None = None) -> ChatSession | None:
    if session_id > BIGINT_MAX:  # the ORM answers "none" for an id out of range; a raw query fails
        return None
    if membership_id is not None:  # an organization member's own (chat.selectors)
        rows = rawsql.fetch(_SESSION_GET + " AND membership_id = %s", [session_id, user_id, membership_id], [ChatSession])
    else:
        rows = rawsql.fetch(_SESSION_GET, [session_id, user_id], [ChatSession])
    return rows[0][0] if rows else None


# A waiting request's "is it finished": 100 vs 422 us (-76%); the Stop button's row
# lock (FOR UPDATE, inside its transaction).
_TURN_STATUS = f"SELECT status FROM {Turn._meta.db_table} WHERE id = %s"  # noqa: S608


def turn_status(*, turn_id: UUID | str, lock: bool) -> str | None:
    sql = _TURN_STATUS + (" FOR UPDATE" if lock and connection.features.has_select_for_update else "")
    with connection.cursor() as cursor:
        cursor.execute(sql, [uuid_param(turn_id)])
        row = cursor.fetchone()
    return row[0] if row is not None else None


# A stream's opening (GET turns/{id}/stream): the user's turn in a live session, its
# id and status only: 92 vs 536 us (-83%).
_TURN_BRIEF = (
    f"SELECT t.status FROM {Turn._meta.db_table} t JOIN {ChatSession._meta.db_table} s ON s.id = t.session_id "  # noqa: S608
    "WHERE t.id = %s AND t.user_id = %s AND s.deleted_at IS NULL"
)


def turn_brief(*, user_id: int, turn_id: UUID, membership_id: int | None = None) -> Turn | None:
    with connection.cursor() as cursor:
        if membership_id is not None:  # an organization member's own (chat.selectors)
            cursor.execute(_TURN_BRIEF + " AND t.membership_id = %s", [uuid_param(turn_id), user_id, membership_id])
        else:
            cursor.execute(_TURN_BRIEF, [uuid_param(turn_id), user_id])
        row = cursor.fetchone()
    return Turn.from_db(connection.alias, ["id", "status"], [turn_id, row[0]]) if row is not None else None


# The completion's row lock, with the run that holds the turn's lease: 284 vs 736 us (-61%).
_TURN_LOCK = f"SELECT status, lease_token FROM {Turn._meta.db_table} WHERE id = %s"  # noqa: S608


def turn_lock(*, turn_id: UUID | str) -> tuple[str | None, UUID | None]:
    """(status, lease token) of a turn, its row locked until the transaction ends."""
    sql = _TURN_LOCK + (" FOR UPDATE" if connection.features.has_select_for_update else "")
    with connection.cursor() as cursor:
        cursor.execute(sql, [uuid_param(turn_id)])
        row = cursor.fetchone()
    if row is None:
        return None, None
    token = row[1]
    return row[0], (token if token is None or isinstance(token, UUID) else UUID(str(token)))


# The worker's claim: queued -> running, or a running turn whose lease ran out (its
# worker died) taken over; the new lease names this run. 297 vs 1188 us (-75%).
_TURN_START = (
    f"UPDATE {Turn._meta.db_table} SET status = %s, started_at = COALESCE(started_at, %s), "  # noqa: S608
    "attempts = attempts + 1, lease_token = %s, lease_expires_at = %s "
    "WHERE id = %s AND (status = %s OR (status = %s AND (lease_expires_at IS NULL OR lease_expires_at < %s)))"
)


def turn_start(*, turn_id: UUID | str, lease_token: UUID, lease_expires_at: datetime) -> bool:
    adapt = connection.ops.adapt_datetimefield_value
    now = adapt(timezone.now())
    with connection.cursor() as cursor:
        cursor.execute(
            _TURN_START,
            [Turn.Status.RUNNING, now, uuid_param(lease_token), adapt(lease_expires_at), uuid_param(turn_id),
             Turn.Status.QUEUED, Turn.Status.RUNNING, now],
        )  # fmt: skip
        return bool(cursor.rowcount)


# The worker's turn, with what a run reads of it (select_related's join, one
# statement): 182 vs 875 us (-79%).
_TURN_FOR_RUN = (
    f"SELECT {rawsql.columns(Turn, 't')}, {rawsql.columns(ChatSession, 's')}, {rawsql.columns(User, 'u')}, "  # noqa: S608
    f"{rawsql.columns(ModelPrice, 'p')} FROM {Turn._meta.db_table} t "
    f"JOIN {ChatSession._meta.db_table} s ON s.id = t.session_id JOIN {User._meta.db_table} u ON u.id = t.user_id "
    f"LEFT JOIN {ModelPrice._meta.db_table} p ON p.id = t.price_id WHERE t.id = %s"
)


def turn_for_run(*, turn_id: UUID | str) -> Turn | None:
    """The turn with its session, user and price (None when it has none) cached."""
    rows = rawsql.fetch(_TURN_FOR_RUN, [uuid_param(turn_id)], [Turn, ChatSession, User, ModelPrice])
    if not rows:
        return None
    turn, turn.session, turn.user, turn.price = rows[0]
    return turn


# A run's context: the turn's own messages, then the newest messages of completed
# turns before them (after the session's summary), 200 of 300 rows: 552 vs 1538 us (-64%; 695 vs 1682 in a later run).
_OWN_MESSAGES = (
    f"SELECT {rawsql.columns(Message, 'm')} FROM {Message._meta.db_table} m WHERE m.turn_id = %s ORDER BY m.id"  # noqa: S608
)


def turn_messages(*, turn_id: UUID | str) -> list[Message]:
    return [row[0] for row in rawsql.fetch(_OWN_MESSAGES, [uuid_param(turn_id)], [Message])]


def completed_history(
    *, session: ChatSession, before_message_id: int | None, names: tuple[str, ...], scan: int
) -> list[dict]:
    """`names` of chat.selectors.session_history's messages that belong to completed
    turns, newest first, at most `scan` of them (QuerySet.values' dicts)."""
    where, params = ["m.session_id = %s", "t.status = %s"], [session.pk, Turn.Status.COMPLETED]
    if session.summary_through_message_id:
        where.append("m.id > %s")
        params.append(session.summary_through_message_id)
    if before_message_id is not None:
        where.append("m.id < %s")
        params.append(before_message_id)
    select = ", ".join(f'm."{Message._meta.get_field(name).column}"' for name in names)
    sql = (
        f"SELECT {select} FROM {Message._meta.db_table} m JOIN {Turn._meta.db_table} t ON t.id = m.turn_id "  # noqa: S608
        f"WHERE {' AND '.join(where)} ORDER BY m.id DESC LIMIT %s"
    )
    return rawsql.fetch_values(sql, [*params, scan], Message, names)


# Bytes of a text column, as stored (UTF-8 on both databases).
_OCTETS = {"postgresql": "OCTET_LENGTH({})", "sqlite": "LENGTH(CAST({} AS BLOB))"}


def session_history_size(*, session: ChatSession, scan: int) -> tuple[int, int]:
    """The rows of chat.selectors.session_history (no before_message_id): how many,
    and the UTF-8 bytes a prompt could carry of them (content, tool calls as stored
    JSON, the id of the call a tool result answers). The stored JSON of a tool call
    carries its id, name and arguments plus more than chat.llm.counting's 8 framing
    tokens of punctuation and keys, so this bounds every rule's count of them. The
    hold, on every POST turns: 139 vs 831 us (-83%), measured before the bytes were
    summed."""
    where, params = ["session_id = %s"], [session.pk]
    if session.summary_through_message_id:
        where.append("id > %s")
        params.append(session.summary_through_message_id)
    octets = _OCTETS[connection.vendor].format
    tool_calls = "tool_calls::text" if connection.vendor == "postgresql" else "tool_calls"
    size = f"{octets('content')} + {octets('tool_call_id')} + COALESCE({octets(tool_calls)}, 0)"
    sql = (
        f"SELECT COUNT(*), SUM(size) FROM (SELECT {size} AS size FROM {Message._meta.db_table} "  # noqa: S608
        f"WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT %s) newest"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, scan])
        count, size_total = cursor.fetchone()
    return count or 0, int(size_total or 0)


# Fair use on every POST turns and /v1 request, under the wallet's row lock (the
# partial index chat_turn_user_unfinished): 189 vs 1116 us (-83%).
_TURNS_IN_FLIGHT = f"SELECT COUNT(*) FROM {Turn._meta.db_table} WHERE user_id = %s AND status IN (%s, %s)"  # noqa: S608


def turns_in_flight(*, user_id: int, membership_id: int | None = None) -> int:
    with connection.cursor() as cursor:
        if membership_id is None:
            cursor.execute(_TURNS_IN_FLIGHT, [user_id, *UNFINISHED])
        else:  # one member's turns among their organization's (its few unfinished ones)
            cursor.execute(_TURNS_IN_FLIGHT + " AND membership_id = %s", [user_id, *UNFINISHED, membership_id])
        return cursor.fetchone()[0]


# The hold and every run (most users have no files): 80 vs 338 us (-76%).
_USER_HAS_FILES = f"SELECT 1 FROM {UploadedFile._meta.db_table} WHERE owner_id = %s LIMIT 1"  # noqa: S608
_MEMBER_HAS_FILES = (
    f"SELECT 1 FROM {UploadedFile._meta.db_table} WHERE owner_id = %s AND membership_id = %s LIMIT 1"  # noqa: S608
)


def user_has_files(*, user_id: int, membership_id: int | None = None) -> bool:
    with connection.cursor() as cursor:
        if membership_id is not None:  # an organization member's own files (chat.selectors)
            cursor.execute(_MEMBER_HAS_FILES, [user_id, membership_id])
        else:
            cursor.execute(_USER_HAS_FILES, [user_id])
        return cursor.fetchone() is not None
