"""Orchestrated panels: an orchestrator call (function calling, `next_speaker`, on
the session's orchestrator alias, metered as `orchestrate`) picks who speaks next or
ends the turn, at most MAX_ORCHESTRATOR_STEPS replies; an unusable answer gets one
retry, then the turn ends with what was said. Never a crash."""

import pytest

from billing.models import CreditHold
from chat.engine.context import input_budget
from chat.models import ChatSession, LLMCall
from tests.chat.engine_support import START, balance, cost, debits, fund, panel, post_turn, price_for
from tests.fakes.llm_servers import Reply, ToolUse

pytestmark = pytest.mark.django_db(transaction=True)


def pick(participant_id, input_tokens: int = 50, output_tokens: int = 5) -> Reply:  # noqa: ANN001
    return Reply(text="", tool_calls=[ToolUse("next_speaker", {"participant_id": participant_id, "reason": "r"})],
                 input_tokens=input_tokens, output_tokens=output_tokens)  # fmt: skip


@pytest.fixture
def board(owner, fake_openai_server):  # noqa: ANN001, ANN201
    fund(owner)
    price_for("boss", "openai")
    price_for("gpt", "openai")
    session = ChatSession.objects.create(user=owner, model_alias="gpt")
    members = panel(session, ("Lawyer", "gpt"), ("Engineer", "gpt"), mode="orchestrator", orchestrator_alias="boss")
    return session, members


def test_the_orchestrator_picks_a_speaker_then_ends_early(owner, owner_client, board, fake_openai_server):
    session, (lawyer, engineer) = board
    fake_openai_server.script(
        pick(engineer.pk, 60, 6), Reply(text="Use Postgres.", input_tokens=90, output_tokens=9), pick(None, 70, 7)
    )

    body = post_turn(owner_client, session, "Which database?").data

    assert body["status"] == "completed"
    assert [(m["participant"], m["content"]) for m in body["messages"]] == [
        (None, "Which database?"), (engineer.pk, "Use Postgres."),
    ]  # fmt: skip
    assert [(c["purpose"], c["model_alias"]) for c in body["llm_calls"]] == [
        ("orchestrate", "boss"), ("reply", "gpt"), ("orchestrate", "boss"),
    ]  # fmt: skip
    total = cost(60, 6) + cost(90, 9) + cost(70, 7)
    assert body["credits_charged"] == f"{total:.8f}" and balance(owner) == START - total
    assert len(debits(owner)) == 1
    first, reply, last = (r.body for r in fake_openai_server.requests)
    assert first["model"] == "openai-boss" and [t["function"]["name"] for t in first["tools"]] == ["next_speaker"]
    enum = first["tools"][0]["function"]["parameters"]["properties"]["participant_id"]["enum"]
    assert enum == [lawyer.pk, engineer.pk, None]
    assert f"id {engineer.pk}: Engineer" in first["messages"][0]["content"]
    assert reply["model"] == "openai-gpt" and "You are Engineer" in reply["messages"][0]["content"]
    assert last["messages"][-1]["content"] == "Engineer: Use Postgres."


def test_the_step_limit_ends_the_turn(owner, owner_client, board, fake_openai_server, settings):
    settings.MAX_ORCHESTRATOR_STEPS = 2
    session, (lawyer, engineer) = board
    fake_openai_server.script(
        pick(lawyer.pk), Reply(text="Risky."), pick(engineer.pk), Reply(text="Doable."), pick(lawyer.pk)
    )

    body = post_turn(owner_client, session, "Should we ship?").data

    assert body["status"] == "completed"
    assert [m["content"] for m in body["messages"][1:]] == ["Risky.", "Doable."]
    # After two replies nobody is asked again: the fifth scripted answer is never requested.
    assert len(fake_openai_server.requests) == 4 and fake_openai_server.pending == 1
    assert [c["purpose"] for c in body["llm_calls"]] == ["orchestrate", "reply", "orchestrate", "reply"]
    # The hold covered steps + 1 orchestrator calls and a reply per step.
    boss = LLMCall.objects.filter(purpose="orchestrate").first().price
    window = cost(input_budget(boss), boss.max_output_tokens)
    assert CreditHold.objects.get(reference=body["id"]).amount == 3 * window + 2 * window


def test_garbage_gets_one_retry_then_the_turn_ends_with_what_was_said(owner, owner_client, board, fake_openai_server):
    session, (lawyer, _) = board
    fake_openai_server.script(
        Reply(text="I think the lawyer should go.", input_tokens=40, output_tokens=8),  # no function call
        pick(lawyer.pk, 41, 4),  # the retry works
        Reply(text="Read the contract.", input_tokens=80, output_tokens=8),
        Reply(
            text="", tool_calls=[ToolUse("next_speaker", {"participant_id": 999999})], input_tokens=42, output_tokens=3
        ),
    )

    body = post_turn(owner_client, session, "Can we sign?").data

    assert body["status"] == "completed" and body["error"] == ""
    assert [(m["participant"], m["content"]) for m in body["messages"][1:]] == [(lawyer.pk, "Read the contract.")]
    assert [c["purpose"] for c in body["llm_calls"]] == ["orchestrate", "orchestrate", "reply", "orchestrate"]
    # The retry carried a reminder; the second unusable answer ended the turn, unretried.
    assert "next_speaker" in fake_openai_server.requests[1].body["messages"][-1]["content"]
    assert len(fake_openai_server.requests) == 4
    total = cost(40, 8) + cost(41, 4) + cost(80, 8) + cost(42, 3)
    assert body["credits_charged"] == f"{total:.8f}" and balance(owner) == START - total


def test_unparsable_arguments_twice_end_the_turn_without_a_reply(owner, owner_client, board, fake_openai_server):
    session, _ = board
    bad = Reply(text="", tool_calls=[ToolUse("next_speaker", {"who": "the lawyer"})], input_tokens=30, output_tokens=3)
    fake_openai_server.script(bad, bad)

    body = post_turn(owner_client, session, "Anyone?").data

    assert body["status"] == "completed"
    assert [m["role"] for m in body["messages"]] == ["user"]
    assert body["credits_charged"] == f"{2 * cost(30, 3):.8f}"


def test_the_embedded_default_orchestrates_offline(owner, owner_client):
    fund(owner)
    price_for("fast")
    session = ChatSession.objects.create(user=owner, model_alias="fast")
    first, second = panel(session, ("Planner", "fast"), ("Doer", "fast"), mode="orchestrator",
                          orchestrator_alias="fast")  # fmt: skip

    body = owner_client.post(f"/api/v1/sessions/{session.pk}/turns", {"content": "Plan a trip"}, format="json").data

    assert body["status"] == "completed"
    assert [(m["participant"], m["content"]) for m in body["messages"][1:]] == [
        (first.pk, "Echo: Plan a trip"), (second.pk, "Echo: Plan a trip"),
    ]  # fmt: skip
    assert [c["purpose"] for c in body["llm_calls"]] == ["orchestrate", "reply", "orchestrate", "reply", "orchestrate"]
    total = sum(call.cost for call in LLMCall.objects.all())
    assert [d.amount for d in debits(owner)] == [-total]
