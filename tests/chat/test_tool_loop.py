"""The tool loop (F53): the model asks for tools by function calling through the real
SDKs; each runs outside the completion transaction and becomes a ToolCall row;
follow-up calls are metered as `tool_followup`; at most MAX_TOOL_ROUNDS rounds."""

import json

import pytest
from django.db import transaction

from billing.models import CreditHold
from chat.engine.context import input_budget
from chat.models import ChatSession, Message, ToolCall
from chat.services import turn_create
from chat.services.files import file_create
from tests.chat.engine_support import START, balance, cost, debits, fund, post_turn, price_for, sent_text
from tests.fakes.llm_servers import Reply, ToolUse

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def chat(owner):  # noqa: ANN001, ANN201
    fund(owner)
    for provider in ("openai", "anthropic"):
        price_for(provider, provider)
    return ChatSession.objects.create(user=owner, model_alias="openai")


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_file_read_on_own_and_someone_elses_file(request, owner, other_user, owner_client, chat, provider):
    server = request.getfixturevalue(f"fake_{provider}_server")
    mine = file_create(owner=owner, name="plan.md", declared_type="text/markdown", data=b"Ship it on Friday.")
    theirs = file_create(owner=other_user, name="s.txt", declared_type="text/plain", data=b"TOP-SECRET-42")
    server.script(
        Reply(text="", tool_calls=[ToolUse("file_read", {"file_id": mine.pk}, id="call_a"),
                                   ToolUse("file_read", {"file_id": theirs.pk}, id="call_b")],
              input_tokens=120, output_tokens=30),
        Reply(text="Friday.", input_tokens=260, output_tokens=4),
    )  # fmt: skip

    answer = owner_client.post(
        f"/api/v1/sessions/{chat.pk}/turns", {"content": "When do we ship?", "model_alias": provider}, format="json"
    )

    body = answer.data
    assert answer.status_code == 201 and body["status"] == "completed", body
    assert [(m["role"], m["content"]) for m in body["messages"]][-1] == ("assistant", "Friday.")
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "tool", "tool", "assistant"]
    assert [c["purpose"] for c in body["llm_calls"]] == ["reply", "tool_followup"]
    shown = [{k: t[k] for k in ("tool", "arguments", "status")} for t in body["tool_calls"]]
    assert shown == [
        {"tool": "file_read", "arguments": {"file_id": mine.pk}, "status": "ok"},
        {"tool": "file_read", "arguments": {"file_id": theirs.pk}, "status": "error"},
    ]
    assert {"id", "latency_ms"} <= set(body["tool_calls"][0])
    assert all(t["llm_call"] == body["llm_calls"][0]["id"] for t in body["tool_calls"])
    assert "TOP-SECRET-42" not in ToolCall.objects.get(status="error").result_excerpt

    first, follow_up = server.requests
    # The model was told which files exist (its own only) and offered file_read.
    assert json.dumps(f'id {mine.pk}: "plan.md"')[1:-1] in sent_text(first) and "s.txt" not in sent_text(first)
    tool_names = [t.get("name") or t["function"]["name"] for t in first.body["tools"]]
    assert tool_names == ["file_read"]  # no WEB_SEARCH_URL: no web_search
    assert "Ship it on Friday." in sent_text(follow_up) and "No file with id" in sent_text(follow_up)
    assert "TOP-SECRET-42" not in sent_text(follow_up)

    total = cost(120, 30) + cost(260, 4)
    assert body["credits_charged"] == f"{total:.8f}"
    assert [d.amount for d in debits(owner)] == [-total] and balance(owner) == START - total


def test_web_search_against_searxng(owner_client, chat, fake_openai_server, searxng):
    searxng.results = [{"title": "Parley", "url": "https://example.org/p", "content": "A chat service."}]
    fake_openai_server.script(
        Reply(text="", tool_calls=[ToolUse("web_search", {"query": "what is parley"})]),
        Reply(text="A chat service."),
    )

    body = post_turn(owner_client, chat, "What is Parley?").data

    assert body["status"] == "completed" and body["messages"][-1]["content"] == "A chat service."
    assert searxng.queries == ["what is parley"]
    assert [(t["tool"], t["status"]) for t in body["tool_calls"]] == [("web_search", "ok")]
    follow_up = fake_openai_server.requests[1].body["messages"]
    assert follow_up[-1]["role"] == "tool" and "1. Parley" in follow_up[-1]["content"]


def test_the_tool_round_limit_ends_the_turn_with_what_was_said(
    owner, owner_client, chat, fake_openai_server, searxng, settings
):
    settings.MAX_TOOL_ROUNDS = 2
    searxng.results = [{"title": "r", "url": "https://example.org", "content": "c"}]
    ask = [Reply(text="", tool_calls=[ToolUse("web_search", {"query": f"q{n}"})], input_tokens=100 + n,
                 output_tokens=10) for n in range(2)]  # fmt: skip
    still = Reply(text="Still looking.", tool_calls=[ToolUse("web_search", {"query": "q2"})], input_tokens=300,
                  output_tokens=12)  # fmt: skip
    fake_openai_server.script(*ask, still, Reply(text="never asked"))

    body = post_turn(owner_client, chat, "Search hard").data

    assert body["status"] == "completed"
    assert searxng.queries == ["q0", "q1"]  # the third request was not run
    assert len(fake_openai_server.requests) == 3 and fake_openai_server.pending == 1
    assert all("tools" in r.body for r in fake_openai_server.requests)
    assert [c["purpose"] for c in body["llm_calls"]] == ["reply", "tool_followup", "tool_followup"]
    assert ToolCall.objects.count() == 2
    last = Message.objects.filter(role="assistant").last()
    assert (last.content, last.tool_calls) == ("Still looking.", None)
    total = cost(100, 10) + cost(101, 10) + cost(300, 12)
    assert body["credits_charged"] == f"{total:.8f}" and balance(owner) == START - total
    price = chat.turns.get().price
    assert CreditHold.objects.get(reference=body["id"]).amount == 3 * cost(input_budget(price), 256)

    # The stored history stays valid for the next turn (no unanswered tool call).
    fake_openai_server.reset()
    fake_openai_server.script(Reply(text="Done."))
    assert post_turn(owner_client, chat, "And now?").data["status"] == "completed"
    sent = fake_openai_server.requests[0].body["messages"]
    asked = {c["id"] for m in sent if m.get("tool_calls") for c in m["tool_calls"]}
    assert asked == {m["tool_call_id"] for m in sent if m["role"] == "tool"}


def test_a_turn_never_spends_past_its_hold(owner, chat, fake_openai_server):
    """Accepted without files (a one-call hold), a file appears before it runs: the
    model asks for it, but a follow-up could cost more than the hold, so the turn
    ends with what was said."""
    fake_openai_server.script(
        Reply(text="Let me read it.", tool_calls=[ToolUse("file_read", {"file_id": 1})], input_tokens=20,
              output_tokens=5),
        Reply(text="never asked"),
    )  # fmt: skip
    with transaction.atomic():
        turn, _ = turn_create(user=owner, session=chat, content="Read my file")
        file_create(owner=owner, name="late.txt", declared_type="text/plain", data=b"late")
    turn.refresh_from_db()
    hold = CreditHold.objects.get(reference=str(turn.pk)).amount
    assert turn.status == "completed" and len(fake_openai_server.requests) == 1
    assert turn.credits_charged == cost(20, 5) <= hold


def test_the_local_provider_asks_for_tools_offline(owner, owner_client):
    fund(owner)
    price_for("fast")
    session = ChatSession.objects.create(user=owner, model_alias="fast")
    notes = file_create(owner=owner, name="notes.txt", declared_type="text/plain", data=b"Buy milk.")

    body = post_turn(owner_client, session, f'[[tool file_read {{"file_id": {notes.pk}}}]]').data

    assert body["status"] == "completed"
    assert body["messages"][-1]["content"].startswith("Tool file_read returned: File")
    assert body["messages"][-1]["content"].endswith("Buy milk.")
    assert [(t["tool"], t["status"], t["arguments"]) for t in body["tool_calls"]] == [
        ("file_read", "ok", {"file_id": notes.pk})
    ]
    assert [c["purpose"] for c in body["llm_calls"]] == ["reply", "tool_followup"]


def test_the_hold_is_read_only_by_a_turn_that_makes_a_second_call(owner, owner_client, monkeypatch):
    """The ceiling guards calls after the first: a turn of one call never reads it."""
    import chat.engine

    reads = []

    def hold_amount(*, reference: str):  # noqa: ANN202
        reads.append(reference)
        return real_hold_amount(reference=reference)

    real_hold_amount = chat.engine.hold_amount
    monkeypatch.setattr(chat.engine, "hold_amount", hold_amount)
    fund(owner)
    price_for("fast")
    session = ChatSession.objects.create(user=owner, model_alias="fast")
    notes = file_create(owner=owner, name="notes.txt", declared_type="text/plain", data=b"Buy milk.")

    one_call = post_turn(owner_client, session, "Just answer").data
    assert one_call["status"] == "completed" and reads == []

    two_calls = post_turn(owner_client, session, f'[[tool file_read {{"file_id": {notes.pk}}}]]').data
    assert [c["purpose"] for c in two_calls["llm_calls"]] == ["reply", "tool_followup"]
    assert reads == [two_calls["id"]]
