"""core.rawsql writes and reads what the ORM writes and reads: the same rows through
Model.save/bulk_create and through plain statements, on whichever database the suite
runs (PostgreSQL in CI, SQLite by default)."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from chat.models import ChatSession, LLMCall, Message, ToolCall, Turn
from core import rawsql
from tests.chat.conftest import make_price

pytestmark = pytest.mark.django_db


def _row(obj, *, skip: tuple[str, ...] = ("id", "created_at")) -> dict:  # noqa: ANN001
    """The stored row of `obj`, read back through the ORM."""
    stored = type(obj).objects.get(pk=obj.pk)
    return {f.attname: getattr(stored, f.attname) for f in type(obj)._meta.concrete_fields if f.attname not in skip}


def _turns(owner) -> tuple[ChatSession, Turn, Turn]:  # noqa: ANN001
    price = make_price()
    session = ChatSession.objects.create(user=owner, model_alias=price.alias)
    made = [
        Turn(session=session, user=owner, model_alias="fast", price=price, idempotency_key=f"key-{n}",
             dispatched_at=timezone.now(), completion_options={"stop": ["\n"]})
        for n in range(2)
    ]  # fmt: skip
    Turn.objects.bulk_create(made[:1])
    rawsql.insert(made[1:])
    return session, *made


def test_insert_writes_what_bulk_create_writes(owner):
    session, orm_turn, raw_turn = _turns(owner)
    skip = ("id", "created_at", "idempotency_key", "dispatched_at")
    assert _row(raw_turn, skip=skip) == _row(orm_turn, skip=skip)
    assert Turn.objects.get(pk=raw_turn.pk).completion_options == {"stop": ["\n"]}
    assert not raw_turn._state.adding

    def outcome(turn: Turn) -> tuple[list, list, list]:
        call = LLMCall(
            turn=turn, user=owner, price=turn.price, model_alias="fast", provider="local", provider_model="echo",
            input_tokens=12, output_tokens=7, cost=Decimal("0.00001234"), credits_burned=Decimal("0.0123"),
        )  # fmt: skip
        messages = [
            Message(session=session, turn=turn, role=Message.Role.USER, content="ünïcode ✓"),
            Message(session=session, turn=turn, role=Message.Role.ASSISTANT, content="", tool_calls=[{"id": "c1"}]),
        ]
        tools = [ToolCall(turn=turn, llm_call=call, tool="file_read", arguments={"file_id": 1}, status="ok")]
        return messages, [call], tools

    orm, raw = outcome(orm_turn), outcome(raw_turn)
    for rows in orm:
        type(rows[0]).objects.bulk_create(rows)
    for rows in raw:
        rawsql.insert(rows)  # the tool call's llm_call was saved after it was set: its key is taken then
    for orm_rows, raw_rows in zip(orm, raw, strict=True):
        assert all(obj.pk is not None for obj in raw_rows)
        assert [obj.pk for obj in raw_rows] == sorted(obj.pk for obj in raw_rows)
        skip = ("id", "created_at", "turn_id", "llm_call_id")
        assert [_row(obj, skip=skip) for obj in raw_rows] == [_row(obj, skip=skip) for obj in orm_rows]
    assert ToolCall.objects.get(pk=raw[2][0].pk).llm_call_id == raw[1][0].pk
    assert abs(Message.objects.get(pk=raw[0][0].pk).created_at - timezone.now()) < timedelta(minutes=1)
    rawsql.insert([])  # nothing to write, no statement


def test_insert_refuses_what_the_database_refuses(owner):
    session, orm_turn, _ = _turns(owner)
    duplicate = Turn(session=session, user=owner, model_alias="fast", idempotency_key=orm_turn.idempotency_key)
    with pytest.raises(IntegrityError), transaction.atomic():
        rawsql.insert([duplicate])
    assert Turn.objects.filter(idempotency_key=orm_turn.idempotency_key).count() == 1


def test_update_writes_only_the_named_fields(owner):
    _, orm_turn, raw_turn = _turns(owner)
    for turn in (orm_turn, raw_turn):
        turn.status, turn.error = Turn.Status.FAILED, "provider said no"
        turn.credits_charged, turn.balance_after = Decimal("0.12345678"), Decimal("-1.5")
        turn.finished_at, turn.low_balance = timezone.now(), True
        turn.model_alias = "not saved"
    names = ["status", "error", "credits_charged", "balance_after", "low_balance", "finished_at"]
    orm_turn.save(update_fields=names)
    rawsql.update(raw_turn, names)
    skip = ("id", "created_at", "idempotency_key", "dispatched_at", "finished_at")
    assert _row(raw_turn, skip=skip) == _row(orm_turn, skip=skip)
    stored = Turn.objects.get(pk=raw_turn.pk)
    assert (stored.model_alias, stored.credits_charged, stored.low_balance) == ("fast", Decimal("0.12345678"), True)
    assert stored.finished_at == raw_turn.finished_at


def test_insert_splits_what_one_statement_cannot_hold(owner, monkeypatch):
    session, turn, _ = _turns(owner)
    monkeypatch.setattr(connection.ops, "bulk_batch_size", lambda fields, objs: 3)
    messages = [Message(session=session, turn=turn, content=f"message {n}") for n in range(8)]
    rawsql.insert(messages)
    stored = list(Message.objects.filter(turn=turn).order_by("id").values_list("pk", "content"))
    assert stored == [(message.pk, f"message {n}") for n, message in enumerate(messages)]
