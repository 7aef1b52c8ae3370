"""Reads for chat: every query a view makes starts from the requesting user, so
someone else's session or turn is simply not found (404)."""

from uuid import UUID

from django.db import connection
from django.db.models import Prefetch, QuerySet

from accounts.models import User
from billing.models import ModelPrice
from chat.models import ChatSession, LLMCall, Message, ToolCall, Turn

FINISHED = (Turn.Status.COMPLETED, Turn.Status.FAILED)
UNFINISHED = (Turn.Status.QUEUED, Turn.Status.RUNNING)


def sessions_for_user(*, user: User) -> QuerySet[ChatSession]:
    return ChatSession.objects.filter(user=user, deleted_at__isnull=True)


# The two lookups every turn request makes use Model.objects.raw: building the ORM's
# query cost about three times what running it does (bench/turns.py).
_SESSION_GET = f"SELECT * FROM {ChatSession._meta.db_table} WHERE id = %s AND user_id = %s AND deleted_at IS NULL"  # noqa: S608
_PRICE_ACTIVE = f"SELECT * FROM {ModelPrice._meta.db_table} WHERE alias = %s AND active = %s"  # noqa: S608


def session_get(*, user: User, session_id: int) -> ChatSession | None:
    """The user's session (not deleted); the same rows as sessions_for_user."""
    return next(iter(ChatSession.objects.raw(_SESSION_GET, [session_id, user.pk])), None)


def turns_for_session(*, session: ChatSession) -> QuerySet[Turn]:
    return Turn.objects.filter(session=session)


def turn_get(*, user: User, turn_id: UUID) -> Turn | None:
    """The user's turn with what GET turns/{id} shows; None for anyone else's."""
    return (
        Turn.objects.filter(pk=turn_id, user=user, session__deleted_at__isnull=True)
        .prefetch_related(
            Prefetch("messages", queryset=Message.objects.order_by("id")),
            Prefetch("llm_calls", queryset=LLMCall.objects.order_by("id")),
            Prefetch("tool_calls", queryset=ToolCall.objects.order_by("id")),
        )
        .first()
    )


def turn_for_idempotency_key(*, user: User, key: str) -> Turn | None:
    return Turn.objects.filter(user=user, idempotency_key=key).first()


def turn_status(*, turn_id: UUID | str, lock: bool = False) -> str | None:
    """The turn's status (None when there is no such turn). Plain SQL: a waiting
    request and every completion ask it. With `lock`, the row stays locked until the
    transaction ends (SQLite: the transaction itself holds the write lock)."""
    sql = f"SELECT status FROM {Turn._meta.db_table} WHERE id = %s"  # noqa: S608
    if lock and connection.features.has_select_for_update:
        sql += " FOR UPDATE"
    with connection.cursor() as cursor:
        cursor.execute(sql, [uuid_param(turn_id)])
        row = cursor.fetchone()
    return row[0] if row is not None else None


def turn_is_finished(*, turn_id: UUID | str) -> bool:
    return turn_status(turn_id=turn_id) in FINISHED


def uuid_param(value: UUID | str) -> str:
    """A UUID as plain SQL takes it on both databases (SQLite stores Django's UUIDs as
    32 hex digits; PostgreSQL reads those as a uuid)."""
    return (value if isinstance(value, UUID) else UUID(str(value))).hex


def price_active(*, alias: str) -> ModelPrice | None:
    if not alias:
        return None
    # One active row per alias (billing_modelprice_one_active_per_alias).
    return next(iter(ModelPrice.objects.raw(_PRICE_ACTIVE, [alias, True])), None)


def price_default() -> ModelPrice | None:
    """The alias a new session gets when it names none: the first one configured."""
    return ModelPrice.objects.filter(active=True).order_by("created_at", "id").first()


def session_history_size(*, session: ChatSession, before_message_id: int | None, scan: int) -> tuple[int, int]:
    """(messages, characters) of the newest `scan` messages of the session (after its
    summary, before `before_message_id`): the history part of a prompt estimate."""
    # Plain SQL: this runs on every turn request, and building the ORM's subquery
    # cost more than running it. LENGTH counts characters on PostgreSQL and SQLite.
    where, params = ["session_id = %s"], [session.pk]
    if session.summary_through_message_id:
        where.append("id > %s")
        params.append(session.summary_through_message_id)
    if before_message_id is not None:
        where.append("id < %s")
        params.append(before_message_id)
    sql = (
        f"SELECT COUNT(*), SUM(LENGTH(content)) FROM (SELECT content FROM {MESSAGE_TABLE} "  # noqa: S608
        f"WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT %s) newest"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, scan])
        count, chars = cursor.fetchone()
    return count or 0, chars or 0


MESSAGE_TABLE = Message._meta.db_table
