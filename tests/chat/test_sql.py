"""Each raw statement in chat/_sql.py reads or writes the same rows as the ORM query
it replaces (bench/sql_chat.py times the two)."""

import uuid
from datetime import timedelta

import pytest
from django.db import transaction
from django.db.models import F, Q, TextField, Value
from django.db.models.functions import Cast, Coalesce
from django.utils import timezone

from chat import _sql
from chat.models import ChatSession, Message, Turn, UploadedFile
from chat.selectors import HISTORY_SCAN, session_history

pytestmark = pytest.mark.django_db


def _turn(session: ChatSession, **fields) -> Turn:  # noqa: ANN003
    return Turn.objects.create(session=session, user=session.user, model_alias=session.model_alias, **fields)


def test_session_get_finds_exactly_the_owners_live_sessions(session, other_user):
    deleted = ChatSession.objects.create(user=session.user, deleted_at=timezone.now())
    for user, session_id in [(session.user, session.pk), (other_user, session.pk), (session.user, deleted.pk)]:
        expected = ChatSession.objects.filter(pk=session_id, user=user, deleted_at__isnull=True).first()
        assert _sql.session_get(user_id=user.pk, session_id=session_id) == expected
    assert _sql.session_get(user_id=session.user.pk, session_id=2**63) is None


def test_turn_status_reads_the_orms_status_with_and_without_the_lock(session):
    turn = _turn(session, status=Turn.Status.RUNNING)
    with transaction.atomic():
        assert _sql.turn_status(turn_id=turn.pk, lock=True) == Turn.Status.RUNNING
    assert _sql.turn_status(turn_id=str(turn.pk), lock=False) == Turn.objects.get(pk=turn.pk).status
    assert _sql.turn_status(turn_id="00000000-0000-0000-0000-000000000000", lock=False) is None


def test_turn_brief_finds_exactly_the_owners_turns_in_live_sessions(session, other_user):
    turn = _turn(session, status=Turn.Status.RUNNING)
    gone = _turn(ChatSession.objects.create(user=session.user, deleted_at=timezone.now()), status=Turn.Status.QUEUED)
    for user, turn_id in [(session.user, turn.pk), (other_user, turn.pk), (session.user, gone.pk)]:
        expected = Turn.objects.filter(pk=turn_id, user=user, session__deleted_at__isnull=True).first()
        found = _sql.turn_brief(user_id=user.pk, turn_id=turn_id)
        assert (found and (found.pk, found.status)) == (expected and (expected.pk, expected.status))
    assert _sql.turn_brief(user_id=session.user.pk, turn_id=uuid.uuid4()) is None


def test_turns_in_flight_counts_the_users_queued_and_running_turns(session, other_user):
    for status in (*Turn.Status.values, Turn.Status.QUEUED, Turn.Status.RUNNING):
        _turn(session, status=status)
    other = ChatSession.objects.create(user=other_user)
    _turn(other, status=Turn.Status.QUEUED)
    for user in (session.user, other_user):
        expected = Turn.objects.filter(user=user, status__in=[Turn.Status.QUEUED, Turn.Status.RUNNING]).count()
        assert _sql.turns_in_flight(user_id=user.pk) == expected
    assert _sql.turns_in_flight(user_id=session.user.pk) == 4


@pytest.mark.parametrize("lease", ["none", "live", "expired"])
@pytest.mark.parametrize("status", [*Turn.Status.values])
def test_turn_start_writes_what_the_orm_update_writes(session, status, lease):
    started, now = timezone.now() - timedelta(minutes=5), timezone.now()
    expires = {"none": None, "live": now + timedelta(seconds=20), "expired": now - timedelta(seconds=1)}[lease]
    raw, orm = (
        _turn(session, status=status, started_at=started, attempts=1, lease_expires_at=expires) for _ in range(2)
    )
    token, until = uuid.uuid4(), now + timedelta(seconds=30)
    takeable = Q(status=Turn.Status.QUEUED) | Q(
        Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=timezone.now()), status=Turn.Status.RUNNING
    )
    assert _sql.turn_start(turn_id=raw.pk, lease_token=token, lease_expires_at=until) == bool(
        Turn.objects.filter(takeable, pk=orm.pk).update(
            status=Turn.Status.RUNNING,
            started_at=Coalesce("started_at", Value(timezone.now())),
            attempts=F("attempts") + 1,
            lease_token=token,
            lease_expires_at=until,
        )  # fmt: skip
    )
    raw.refresh_from_db()
    orm.refresh_from_db()
    fields = ("status", "started_at", "attempts", "lease_token", "lease_expires_at")
    assert [getattr(raw, f) for f in fields] == [getattr(orm, f) for f in fields]


def test_turn_start_sets_started_at_once(session):
    turn = _turn(session)
    past = timezone.now() - timedelta(seconds=1)
    assert _sql.turn_start(turn_id=turn.pk, lease_token=uuid.uuid4(), lease_expires_at=past)
    first = Turn.objects.get(pk=turn.pk).started_at
    assert first is not None
    assert _sql.turn_start(turn_id=turn.pk, lease_token=uuid.uuid4(), lease_expires_at=past)
    assert Turn.objects.get(pk=turn.pk).started_at == first


def test_turn_lock_reads_the_status_and_the_lease_holder(session):
    turn = _turn(session, status=Turn.Status.RUNNING, lease_token=uuid.uuid4())
    with transaction.atomic():
        assert _sql.turn_lock(turn_id=turn.pk) == (Turn.Status.RUNNING, turn.lease_token)
    assert _sql.turn_lock(turn_id=uuid.uuid4()) == (None, None)


def test_history_size_counts_the_rows_of_session_history(session):
    turn = _turn(session)
    rows = Message.objects.bulk_create(
        Message(session=session, turn=turn, role=Message.Role.USER, content="é" * (n % 7 + 1))
        for n in range(HISTORY_SCAN + 20)
    )
    calls = [{"id": "c1", "name": "web_search", "arguments": {"query": "中文 😀"}}]
    rows += [
        Message.objects.create(session=session, turn=turn, role="assistant", content="", tool_calls=calls),
        Message.objects.create(session=session, turn=turn, role="tool", content="résultat", tool_call_id="c1"),
    ]
    for through in (None, rows[30].pk):
        session.summary_through_message_id = through
        newest = session_history(session=session).annotate(calls_text=Cast("tool_calls", TextField()))
        newest = newest.values("content", "tool_call_id", "calls_text")[:HISTORY_SCAN]
        size = sum(
            len(row["content"].encode()) + len(row["tool_call_id"].encode()) + len((row["calls_text"] or "").encode())
            for row in newest
        )
        assert _sql.session_history_size(session=session, scan=HISTORY_SCAN) == (len(newest), size)


def test_history_size_of_an_empty_session_is_zero(session):
    assert _sql.session_history_size(session=session, scan=HISTORY_SCAN) == (0, 0)


def test_user_has_files_answers_what_the_orm_answers(owner, other_user):
    UploadedFile.objects.create(owner=owner, name="a.txt", content_type="text/plain", size=1, sha256="0" * 64)
    for user in (owner, other_user):
        assert _sql.user_has_files(user_id=user.pk) == UploadedFile.objects.filter(owner=user).exists()


def _fields(instance) -> dict:  # noqa: ANN001
    return {field.attname: getattr(instance, field.attname) for field in type(instance)._meta.concrete_fields}


@pytest.mark.parametrize("priced", [True, False])
def test_turn_for_run_reads_what_select_related_reads(session, price, priced):
    turn = _turn(
        session, price=price if priced else None, status=Turn.Status.RUNNING, started_at=timezone.now(),
        lease_token=uuid.uuid4(), completion_options={"stop": ["\n"], "temperature": 0.5},
    )  # fmt: skip
    expected = Turn.objects.select_related("session", "user", "price").get(pk=turn.pk)
    found = _sql.turn_for_run(turn_id=str(turn.pk))
    assert _fields(found) == _fields(expected)
    assert found.completion_options == {"stop": ["\n"], "temperature": 0.5}
    assert _fields(found.session) == _fields(expected.session)
    assert _fields(found.user) == _fields(expected.user)
    if priced:
        assert _fields(found.price) == _fields(expected.price)
    else:
        assert found.price is None
    assert _sql.turn_for_run(turn_id=uuid.uuid4()) is None


def test_turn_messages_reads_the_turns_messages_oldest_first(session):
    turn, other = _turn(session), _turn(session)
    call = {"id": "call_1", "type": "function", "function": {"name": "file_read", "arguments": "{}"}}
    Message.objects.create(session=session, turn=other, role=Message.Role.USER, content="not this turn's")
    for role, tool_calls in [(Message.Role.USER, None), (Message.Role.ASSISTANT, [call])]:
        Message.objects.create(session=session, turn=turn, role=role, content=f"{role} says", tool_calls=tool_calls)
    found = _sql.turn_messages(turn_id=turn.pk)
    assert [_fields(m) for m in found] == [_fields(m) for m in Message.objects.filter(turn=turn).order_by("id")]
    assert found[1].tool_calls == [call]


def test_completed_history_reads_what_the_orm_reads(session):
    names = ("id", "turn_id", "role", "content", "tool_calls", "tool_call_id")
    call = {"id": "call_1", "type": "function", "function": {"name": "file_read", "arguments": "{}"}}
    rows = []
    for n in range(40):
        turn = _turn(session, status=Turn.Status.FAILED if n % 5 == 0 else Turn.Status.COMPLETED)
        rows += [
            Message.objects.create(session=session, turn=turn, role=Message.Role.USER, content=f"question {n}"),
            Message.objects.create(
                session=session, turn=turn, role=Message.Role.ASSISTANT, content="", tool_calls=[call] if n % 3 else None
            ),
        ]  # fmt: skip
    elsewhere = ChatSession.objects.create(user=session.user)
    Message.objects.create(session=elsewhere, turn=_turn(elsewhere, status=Turn.Status.COMPLETED), content="other")
    for through, before, scan in [(None, None, 200), (rows[9].pk, rows[70].pk, 200), (None, rows[50].pk, 7)]:
        session.summary_through_message_id = through
        history = session_history(session=session, before_message_id=before).filter(turn__status=Turn.Status.COMPLETED)
        expected = list(history.values(*names)[:scan])
        found = _sql.completed_history(session=session, before_message_id=before, names=names, scan=scan)
        assert found == expected
        assert found and len(found) <= scan
    assert any(row["tool_calls"] == [call] for row in found)
