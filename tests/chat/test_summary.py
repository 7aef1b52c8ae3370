"""Rolling summaries (F51): when the history no longer fits the
alias's budget, the messages that do not fit are folded into the session's summary by
a metered `summary` call; when that call fails the context falls back to truncation,
the turn still completes, and `used_fallback` is recorded and logged."""

import logging

import pytest

from billing.models import CreditHold
from chat.models import ChatSession, LLMCall, Message, Turn
from tests.chat.engine_support import START, balance, cost, debits, fund, post_turn, price_for, sent_text
from tests.fakes.llm_servers import Error, Reply

pytestmark = pytest.mark.django_db(transaction=True)


def padded(label: str) -> str:
    return (label + " ") * (200 // (len(label) + 1)) + "." * (200 % (len(label) + 1))


@pytest.fixture
def long_chat(owner, fake_openai_server):  # noqa: ANN001, ANN201
    """Three finished exchanges of 208 counted tokens a message (200 bytes, framed):
    1,248 against a 1,000-token budget, so the oldest exchange does not fit."""
    fund(owner)
    price_for("tiny", "openai", context_tokens=1050, max_output_tokens=50)
    session = ChatSession.objects.create(user=owner, model_alias="tiny")
    for n in range(3):
        turn = Turn.objects.create(session=session, user=owner, model_alias="tiny", status="completed")
        Message.objects.create(session=session, turn=turn, role="user", content=padded(f"question{n}"))
        Message.objects.create(session=session, turn=turn, role="assistant", content=padded(f"answer{n}"))
    return session


def test_older_messages_are_summarised_and_the_summary_is_kept(owner, owner_client, long_chat, fake_openai_server):
    fake_openai_server.script(
        Reply(text="They asked question0; answer0 followed.", input_tokens=150, output_tokens=20),
        Reply(text="Next answer.", input_tokens=240, output_tokens=10),
    )

    body = post_turn(owner_client, long_chat, "Next?").data

    assert body["status"] == "completed" and body["messages"][-1]["content"] == "Next answer."
    assert [(c["purpose"], c["model_alias"], c["used_fallback"]) for c in body["llm_calls"]] == [
        ("summary", "tiny", False), ("reply", "tiny", False),
    ]  # fmt: skip
    long_chat.refresh_from_db()
    first_exchange = list(Message.objects.order_by("id")[:2])
    assert long_chat.summary == "They asked question0; answer0 followed."
    assert long_chat.summary_through_message_id == first_exchange[1].pk
    summary_request, reply_request = fake_openai_server.requests
    assert "stream" not in summary_request.body  # a summary is not streamed to the user
    assert "question0" in sent_text(summary_request) and "answer0" in sent_text(summary_request)
    assert "question1" not in sent_text(summary_request)
    assert "Summary of the conversation so far:\\nThey asked question0" in sent_text(reply_request)
    assert "question0 question0" not in sent_text(reply_request) and "question1" in sent_text(reply_request)
    total = cost(150, 20) + cost(240, 10)
    assert body["credits_charged"] == f"{total:.8f}" and balance(owner) == START - total
    assert len(debits(owner)) == 1
    # The hold covered a summary call on top of the reply: two full windows.
    assert CreditHold.objects.get(reference=body["id"]).amount == 2 * cost(1000, 50)


def test_a_failed_summary_falls_back_to_truncation(owner, owner_client, long_chat, fake_openai_server, caplog):
    fake_openai_server.script(
        Error(500, "summariser down"), Reply(text="Still here.", input_tokens=230, output_tokens=5)
    )

    with caplog.at_level(logging.WARNING, logger="chat.engine"):
        body = post_turn(owner_client, long_chat, "Next?").data

    assert body["status"] == "completed" and body["error"] == ""
    assert body["messages"][-1]["content"] == "Still here."
    assert [(c["purpose"], c["status"], c["used_fallback"]) for c in body["llm_calls"]] == [
        ("summary", "failed", True), ("reply", "ok", True),
    ]  # fmt: skip
    assert LLMCall.objects.filter(used_fallback=True).count() == 2
    assert "summary call failed; the context falls back to truncation" in caplog.text
    long_chat.refresh_from_db()
    assert (long_chat.summary, long_chat.summary_through_message_id) == ("", None)
    reply_request = fake_openai_server.requests[1]
    assert "question0" not in sent_text(reply_request) and "answer2" in sent_text(reply_request)
    # The failed call is free; only the reply is charged.
    assert body["credits_charged"] == f"{cost(230, 5):.8f}" and balance(owner) == START - cost(230, 5)


def test_a_history_that_fits_needs_no_summary(owner, owner_client, fake_openai_server):
    fund(owner)
    price_for("roomy", "openai")
    session = ChatSession.objects.create(user=owner, model_alias="roomy")
    body = post_turn(owner_client, session, "Hi").data
    assert [c["purpose"] for c in body["llm_calls"]] == ["reply"]
    session.refresh_from_db()
    assert session.summary == ""
