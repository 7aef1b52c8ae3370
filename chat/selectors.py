"""Reads for chat. Every query a view makes starts from the requesting user, so
someone else's session, turn or file is simply not found (404).

One function per rule: `session_get` is "this user's session" (owned, not
deleted) for every endpoint; `session_history` is "the session's history" for the
hold estimate, the context builder and the summary; the active price of an alias is
billing.selectors.model_price_for_alias."""

from uuid import UUID

from django.db.models import Prefetch, QuerySet

from accounts.models import User
from billing.models import ModelPrice
from chat import _sql
from chat.models import ChatSession, LLMCall, Message, Participant, ToolCall, Turn, UploadedFile

FINISHED = (Turn.Status.COMPLETED, Turn.Status.FAILED, Turn.Status.CANCELLED)
UNFINISHED = _sql.UNFINISHED

# How many recent messages a prompt reads at most (bounds the history query).
HISTORY_SCAN = 200


# --- sessions --------------------------------------------------------------------


# `membership_id`, everywhere below: the organization member the request's key
# belongs to (accounts.attribution.request_membership_id). An organization's account
# owns its members' sessions, turns and files, and each member sees only their own;
# a person's key passes None and sees all of theirs.


def sessions_for_user(*, user: User, membership_id: int | None = None) -> QuerySet[ChatSession]:
    """The user's sessions; a soft-deleted one (deleted_at set) is gone for its owner too."""
    sessions = ChatSession.objects.filter(user=user, deleted_at__isnull=True)
    return sessions if membership_id is None else sessions.filter(membership_id=membership_id)


def session_get(*, user: User, session_id: int, membership_id: int | None = None) -> ChatSession | None:
    """The user's session (not deleted): one of sessions_for_user."""
    return _sql.session_get(user_id=user.pk, session_id=session_id, membership_id=membership_id)


def session_history(*, session: ChatSession, before_message_id: int | None = None) -> QuerySet[Message]:
    """The session's history, newest first: its messages after its rolling summary,
    before `before_message_id` (a turn's first message). The hold estimate counts
    all of them; a prompt keeps those of completed turns (see chat.engine.context)."""
    history = Message.objects.filter(session=session)
    if session.summary_through_message_id:
        history = history.filter(id__gt=session.summary_through_message_id)
    if before_message_id is not None:
        history = history.filter(id__lt=before_message_id)
    return history.order_by("-id")


def session_history_size(*, session: ChatSession, scan: int = HISTORY_SCAN) -> tuple[int, int]:
    """(messages, UTF-8 bytes) of the newest `scan` messages of session_history: the
    history part of a turn's hold, asked on every turn request. No counting rule
    makes more tokens of a text than its bytes."""
    return _sql.session_history_size(session=session, scan=scan)


def history_completed(
    *, session: ChatSession, before_message_id: int | None, names: tuple[str, ...], scan: int = HISTORY_SCAN
) -> list[dict]:
    """`names` of the newest `scan` messages of session_history that belong to
    completed turns (a prompt's history), as QuerySet.values() gives them."""
    return _sql.completed_history(session=session, before_message_id=before_message_id, names=names, scan=scan)


def turn_messages(*, turn: Turn) -> list[Message]:
    """The turn's stored messages, oldest first."""
    return _sql.turn_messages(turn_id=turn.pk)


def price_default() -> ModelPrice | None:
    """The alias a new session gets when it names none: the first one configured
    (a different rule from an alias's active price, billing.selectors)."""
    return ModelPrice.objects.filter(active=True).order_by("created_at", "id").first()


# --- turns -----------------------------------------------------------------------


def turns_for_session(*, session: ChatSession) -> QuerySet[Turn]:
    return Turn.objects.filter(session=session)


def turn_get(*, user: User, turn_id: UUID, membership_id: int | None = None) -> Turn | None:
    """The user's turn with what GET turns/{id} shows; None for anyone else's."""
    turns = Turn.objects.filter(pk=turn_id, user=user, session__deleted_at__isnull=True)
    if membership_id is not None:
        turns = turns.filter(membership_id=membership_id)
    return (
        turns
        .prefetch_related(
            Prefetch("messages", queryset=Message.objects.order_by("id")),
            Prefetch("llm_calls", queryset=LLMCall.objects.order_by("id")),
            Prefetch("tool_calls", queryset=ToolCall.objects.order_by("id")),
        )
        .first()
    )


def turn_brief(*, user: User, turn_id: UUID, membership_id: int | None = None) -> Turn | None:
    """The user's turn with only its id and status (a stream opening needs no more)."""
    return _sql.turn_brief(user_id=user.pk, turn_id=turn_id, membership_id=membership_id)


def turns_in_flight(*, user: User, membership_id: int | None = None) -> int:
    """The user's turns queued or running (fair use counts them); of an
    organization's account, with `membership_id`, only that member's."""
    return _sql.turns_in_flight(user_id=user.pk, membership_id=membership_id)


def turn_for_idempotency_key(*, user: User, key: str) -> Turn | None:
    return Turn.objects.filter(user=user, idempotency_key=key).first()


def turn_status(*, turn_id: UUID | str, lock: bool = False) -> str | None:
    """The turn's status (None when there is no such turn): a waiting request and
    every completion ask it. With `lock`, the row stays locked until the transaction
    ends (SQLite: the transaction itself holds the write lock)."""
    return _sql.turn_status(turn_id=turn_id, lock=lock)


# --- participants ----------------------------------------------------------------


def participants_for_session(*, session: ChatSession) -> QuerySet[Participant]:
    """In speaking order: position, then creation."""
    return Participant.objects.filter(session=session).order_by("position", "id")


def participant_get(*, session: ChatSession, participant_id: int) -> Participant | None:
    return participants_for_session(session=session).filter(pk=participant_id).first()


# --- files -----------------------------------------------------------------------
# Every read filters by owner (F58: the owner index serves it). Someone else's file
# looks exactly like a file that does not exist.


def files_for_user(*, user: User, membership_id: int | None = None) -> QuerySet[UploadedFile]:
    """The owner's files, newest first, without the (possibly large) extracted text."""
    files = UploadedFile.objects.filter(owner=user)
    if membership_id is not None:
        files = files.filter(membership_id=membership_id)
    return files.defer("extracted_text")


def file_get_for_user(*, user: User, file_id: int, membership_id: int | None = None) -> UploadedFile | None:
    return files_for_user(user=user, membership_id=membership_id).filter(pk=file_id).first()


def user_has_files(*, user_id: int, membership_id: int | None = None) -> bool:
    """Asked on every turn, and most users have no files (served by chat_file_owner_created)."""
    return _sql.user_has_files(user_id=user_id, membership_id=membership_id)
