"""What the model sees (chat.engine.context): system prompt and summary first, then the
newest history that fits the alias's input budget, then the turn's own message."""

import pytest

from chat.engine.context import context_build, input_budget
from chat.llm.counting import MESSAGE_FRAMING_TOKENS, REPLY_FRAMING_TOKENS
from chat.models import Message, Turn
from tests.chat.conftest import make_price

pytestmark = pytest.mark.django_db


def add_turn(session, status: str, *pairs: tuple[str, str], **fields) -> Turn:  # noqa: ANN001
    turn = Turn.objects.create(session=session, user=session.user, model_alias="fast", status=status)
    for role, content in pairs:
        Message.objects.create(session=session, turn=turn, role=role, content=content, **fields)
    return turn


def test_budget_is_the_window_minus_the_reply(price):
    assert input_budget(price) == 8192 - 256
    assert input_budget(make_price("odd", context_tokens=100, max_output_tokens=400)) == 50


def test_system_prompt_summary_history_and_the_new_message_in_order(session, price):
    session.system_prompt = "Be terse."
    session.summary = "They talked about ledgers."
    session.save()
    add_turn(session, "completed", ("user", "Q1"), ("assistant", "A1"))
    add_turn(session, "failed", ("user", "lost question"))
    current = add_turn(session, "running", ("user", "Q2"))
    context = context_build(turn=current, price=price)
    assert [(m.role, m.content) for m in context.messages] == [
        ("system", "Be terse."),
        ("system", "Summary of the conversation so far:\nThey talked about ledgers."),
        ("user", "Q1"),
        ("assistant", "A1"),
        ("user", "Q2"),
    ]
    # Counted with the price's rule (bytes): every byte of content, each message framed.
    framing = MESSAGE_FRAMING_TOKENS
    assert context.input_tokens == REPLY_FRAMING_TOKENS + sum(framing + len(m.content.encode()) for m in context.messages)
    assert context.dropped == 0


def test_older_messages_are_dropped_first_when_over_budget(session):
    tiny = make_price("tiny", context_tokens=450, max_output_tokens=100)  # 350 tokens (bytes) for the prompt
    for n in range(5):
        add_turn(session, "completed", ("user", f"{n}" * 200), ("assistant", f"{n}" * 40))
    current = add_turn(session, "running", ("user", "now"))
    context = context_build(turn=current, price=tiny)
    # 8 for the reply, "now" 8 + 3, each reply 8 + 40, each question 8 + 200: newest
    # first, until the next one overflows.
    assert [m.content for m in context.messages] == ["3" * 40, "4" * 200, "4" * 40, "now"]
    assert context.input_tokens == 8 + 48 + 208 + 48 + 11 <= 450 - 100
    assert context.dropped == 7


def test_messages_after_the_turn_was_asked_are_not_its_history(session, price):
    current = add_turn(session, "running", ("user", "mine"))
    add_turn(session, "completed", ("user", "later"), ("assistant", "later reply"))
    assert [m.content for m in context_build(turn=current, price=price).messages] == ["mine"]


def test_a_turn_overtaken_by_many_later_messages_still_sees_its_history(session, price):
    """History is read from before the turn's question, however many messages came
    after it (a slow turn while the session went on)."""
    from chat.selectors import HISTORY_SCAN

    add_turn(session, "completed", ("user", "before"), ("assistant", "before reply"))
    current = add_turn(session, "running", ("user", "mine"))
    for n in range(HISTORY_SCAN // 2 + 1):
        add_turn(session, "completed", ("user", f"later {n}"), ("assistant", "ok"))
    assert [m.content for m in context_build(turn=current, price=price).messages] == ["before", "before reply", "mine"]


def test_tool_exchanges_round_trip_and_orphan_results_are_dropped(session):
    calls = [{"id": "c1", "name": "web_search", "arguments": {"query": "x" * 200}}]
    old = add_turn(session, "completed", ("user", "search please"))
    Message.objects.create(session=session, turn=old, role="assistant", content="", tool_calls=calls)
    Message.objects.create(session=session, turn=old, role="tool", content="r" * 40, tool_call_id="c1")
    Message.objects.create(session=session, turn=old, role="assistant", content="done")
    current = add_turn(session, "running", ("user", "next"))

    roomy = make_price("roomy")
    messages = context_build(turn=current, price=roomy).messages
    assert [m.role for m in messages] == ["user", "assistant", "tool", "assistant", "user"]
    assert messages[1].tool_calls[0].arguments == {"query": "x" * 200}
    assert (messages[2].tool_call_id, messages[2].name) == ("c1", "web_search")

    # Room for the tool result but not the (long) call that asked for it: the result goes too.
    tight = make_price("tight", context_tokens=200, max_output_tokens=100)
    messages = context_build(turn=current, price=tight).messages
    assert [m.role for m in messages] == ["assistant", "user"]
