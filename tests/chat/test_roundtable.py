"""Round tables: one user turn, every participant answers in position
order with its own system prompt and alias, seeing the question and the replies
before it; each answer is its own message and LLM call; the turn is ONE debit."""

import json
from decimal import Decimal

import pytest
from django.db import transaction

from billing.models import CreditHold, CreditTransaction
from chat.engine.context import input_budget
from chat.models import ChatSession, LLMCall, Message
from chat.services import turn_create
from tests.chat.engine_support import (
    START,
    balance,
    cost,
    debits,
    fund,
    panel,
    post_turn,
    price_for,
)
from tests.chat.sse import SyncStream
from tests.conftest import client_for, make_user
from tests.fakes.llm_servers import Reply

pytestmark = pytest.mark.django_db(transaction=True)
ONE_UNIT = Decimal("0.00000001")


@pytest.fixture
def remote(db, fake_openai_server, fake_anthropic_server):  # noqa: ANN001, ANN201
    return {"gpt": price_for("gpt", "openai"), "claude": price_for("claude", "anthropic"),
            "gpt2": price_for("gpt2", "openai")}  # fmt: skip


def test_three_participants_answer_in_order_billed_as_one_debit(
    owner, owner_client, remote, fake_openai_server, fake_anthropic_server
):
    fund(owner)
    session = ChatSession.objects.create(user=owner, model_alias="gpt", system_prompt="Session prompt.")
    a, b, c = panel(session, ("Analyst", "gpt"), ("Critic", "claude"), ("Judge", "gpt2"))
    fake_openai_server.script(
        Reply(text="Revenue grew.", input_tokens=101, output_tokens=21),
        Reply(text="Growth it is.", input_tokens=303, output_tokens=43),
    )
    fake_anthropic_server.script(Reply(text="Margins fell.", input_tokens=202, output_tokens=32))

    answer = post_turn(owner_client, session, "How did we do?")

    assert answer.status_code == 201, answer.content
    body = answer.data
    assert body["status"] == "completed"
    assert [(m["role"], m["participant"], m["content"]) for m in body["messages"]] == [
        ("user", None, "How did we do?"),
        ("assistant", a.pk, "Revenue grew."),
        ("assistant", b.pk, "Margins fell."),
        ("assistant", c.pk, "Growth it is."),
    ]
    assert [(c_["purpose"], c_["model_alias"]) for c_ in body["llm_calls"]] == [
        ("reply", "gpt"), ("reply", "claude"), ("reply", "gpt2"),
    ]  # fmt: skip
    total = cost(101, 21) + cost(202, 32) + cost(303, 43)
    assert body["credits_charged"] == f"{total:.8f}"
    [debit] = debits(owner)
    assert (debit.amount, debit.reference) == (-total, body["id"])
    assert balance(owner) == START - total
    assert sum(call.cost for call in LLMCall.objects.all()) == total
    assert CreditHold.objects.get(reference=body["id"]).status == "settled"

    # Each speaker got its own system prompt and model, and saw the replies before it.
    first, third = (r.body for r in fake_openai_server.requests)
    [second] = (r.body for r in fake_anthropic_server.requests)
    assert (first["model"], second["model"], third["model"]) == ("openai-gpt", "anthropic-claude", "openai-gpt2")
    assert "You are Analyst" in first["messages"][0]["content"]
    assert first["messages"][-1] == {"role": "user", "content": "How did we do?"}
    assert "You are the Critic." in second["system"] and "Analyst" not in second["system"]
    assert "Analyst: Revenue grew." in json.dumps(second["messages"])
    assert [m["content"] for m in third["messages"][-3:]] == [
        "How did we do?", "Analyst: Revenue grew.", "Critic: Margins fell.",
    ]  # fmt: skip
    # No files and no search configured: no tools are offered.
    assert "tools" not in first and "tools" not in second


def test_a_failing_participant_fails_the_turn_and_bills_only_the_answers(
    owner, owner_client, remote, fake_openai_server, fake_anthropic_server
):
    from tests.fakes.llm_servers import Error

    fund(owner)
    session = ChatSession.objects.create(user=owner, model_alias="gpt")
    panel(session, ("Analyst", "gpt"), ("Critic", "claude"), ("Judge", "gpt2"))
    fake_openai_server.script(Reply(text="Revenue grew.", input_tokens=100, output_tokens=20))
    fake_anthropic_server.script(Error(500, "critic is down"))

    body = post_turn(owner_client, session, "How did we do?").data

    assert body["status"] == "failed" and "HTTP 500" in body["error"]
    assert [c["status"] for c in body["llm_calls"]] == ["ok", "failed"]
    assert len(fake_openai_server.requests) == 1  # the judge never spoke
    assert body["credits_charged"] == f"{cost(100, 20):.8f}"
    assert balance(owner) == START - cost(100, 20) and len(debits(owner)) == 1


def test_the_hold_covers_every_participant_and_block_mode_refuses_less(owner, settings):
    settings.BILLING_ENFORCEMENT = "block"
    local = price_for("fast")
    window = cost(input_budget(local), local.max_output_tokens)
    short = make_user("short@example.com")
    for user, granted, expected in ((owner, 3 * window, "accepted"), (short, 3 * window - ONE_UNIT, "refused")):
        fund(user, granted)
        session = ChatSession.objects.create(user=user, model_alias="fast")
        panel(session, ("A", "fast"), ("B", "fast"), ("C", "fast"))
        answer = post_turn(client_for(user), session, "Go")
        if expected == "accepted":
            assert answer.status_code == 201 and answer.data["status"] == "completed"
            assert CreditHold.objects.get(reference=answer.data["id"]).amount == 3 * window
        else:
            assert answer.status_code == 402 and answer.data["error"]["code"] == "insufficient_credits"
            assert not Message.objects.filter(session=session).exists()


def test_the_embedded_default_runs_a_round_table_offline(owner, owner_client):
    fund(owner)
    price_for("fast")
    session = ChatSession.objects.create(user=owner, model_alias="fast")
    a, b = panel(session, ("Optimist", "fast"), ("Pessimist", "fast"))

    body = post_turn(owner_client, session, "Will it rain?").data

    assert body["status"] == "completed"
    assert [(m["participant"], m["content"]) for m in body["messages"][1:]] == [
        (a.pk, "Echo: Will it rain?"), (b.pk, "Echo: Will it rain?"),
    ]  # fmt: skip
    calls = list(LLMCall.objects.order_by("id"))
    # The second speaker's prompt also carries the first one's reply.
    assert calls[1].input_tokens > calls[0].input_tokens
    total = sum(call.cost for call in calls)
    assert CreditTransaction.objects.get(kind="debit").amount == -total
    assert balance(owner) == START - total


def test_the_hold_is_placed_for_the_session_mode_at_acceptance(owner):
    fund(owner)
    local = price_for("fast")
    session = ChatSession.objects.create(user=owner, model_alias="fast")
    panel(session, ("A", "fast"), ("B", "fast"))
    with transaction.atomic():
        turn, _ = turn_create(user=owner, session=session, content="hold me")
        assert CreditHold.objects.get(reference=str(turn.pk)).amount == 2 * cost(
            input_budget(local), local.max_output_tokens
        )


@pytest.mark.worker
@pytest.mark.postgres
def test_a_round_table_turn_runs_on_a_real_worker(celery_worker, owner, owner_client):
    fund(owner)
    price_for("fast")
    session = ChatSession.objects.create(user=owner, model_alias="fast")
    a, b, c = panel(session, ("One", "fast"), ("Two", "fast"), ("Three", "fast"))

    answer = post_turn(owner_client, session, "All of you, please", HTTP_PREFER="wait=30")

    assert answer.status_code == 201, answer.content
    body = owner_client.get(f"/api/v1/turns/{answer.data['id']}").data
    assert body["status"] == "completed"
    assert [m["participant"] for m in body["messages"]] == [None, a.pk, b.pk, c.pk]
    total = sum(call.cost for call in LLMCall.objects.filter(turn_id=body["id"]))
    assert body["credits_charged"] == f"{total:.8f}" and len(body["llm_calls"]) == 3
    [debit] = debits(owner)
    assert debit.amount == -total and balance(owner) == START - total


@pytest.mark.redis
def test_a_round_table_streams_each_reply_with_its_speaker(owner, owner_client, settings):
    import threading

    from django.db import connection

    from chat.models import Turn
    from chat.services import turn_run

    settings.LOCAL_LLM_LATENCY_MS = 600  # long enough to be read while it is produced
    fund(owner)
    price_for("fast")
    session = ChatSession.objects.create(user=owner, model_alias="fast")
    a, b = panel(session, ("Ann", "fast"), ("Bob", "fast"))
    turn = Turn.objects.create(session=session, user=owner, model_alias="fast")
    Message.objects.create(session=session, turn=turn, role="user", content="one two three four five six")

    def work() -> None:
        try:
            turn_run(turn_id=turn.pk)
        finally:
            connection.close()

    stream = SyncStream(owner_client.get(f"/api/v1/turns/{turn.pk}/stream"))
    assert next(stream).decode().startswith("event: status")
    worker = threading.Thread(target=work)
    worker.start()
    body = b"".join(stream).decode()
    worker.join()
    received = []
    for block in body.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        received.append((lines["event"], json.loads(lines["data"])))
    deltas = [(d["participant"], d["participant_name"], d["text"]) for name, d in received if name == "delta"]
    by_speaker = {who: "".join(t for p, _, t in deltas if p == who) for who in (a.pk, b.pk)}
    assert by_speaker == {a.pk: "Echo: one two three four five six", b.pk: "Echo: one two three four five six"}
    assert {(p, n) for p, n, _ in deltas} == {(a.pk, "Ann"), (b.pk, "Bob")}
    assert [p for p, _, _ in deltas] == sorted(p for p, _, _ in deltas)  # Ann's pieces all come before Bob's
    assert received[-1][0] == "done" and received[-1][1]["status"] == "completed"


def test_the_ledger_and_the_admin_name_every_alias_of_a_round_table(owner, owner_client, panel_session, console):
    fund(owner)
    panel(panel_session, ("Ann", "fast"), ("Bob", "smart"), ("Cid", "fast"))
    answer = post_turn(owner_client, panel_session, "Hello all")
    assert answer.status_code == 201, answer.content

    [debit] = debits(owner)
    assert debit.reason == f"Turn {answer.data['id']} (fast, smart)"
    page = console.get("/admin/chat/turn/").content.decode()
    assert (
        '<td class="field-models"><span class="clip" style="max-width: 9em" title="fast, smart">fast, smart</span>'
        in page
    )
