"""Summaries: when the history does not fit, the messages that no longer fit are
folded into the session's rolling summary (F51)."""

import logging

from chat.engine.context import TurnContext, input_budget
from chat.engine.metering import window_bound
from chat.engine.run import TurnRun, run_context, system_prompt_for
from chat.llm import ChatMessage
from chat.llm.counting import MESSAGE_FRAMING_TOKENS, REPLY_FRAMING_TOKENS, count_prompt, count_text
from chat.models import LLMCall, Message, Turn
from chat.selectors import HISTORY_SCAN, session_history

logger = logging.getLogger(__name__)

SUMMARY_PROMPT = (
    "Summarise the conversation below for your own later reference: keep facts, decisions, names, numbers "
    "and open questions; drop pleasantries. Write plain prose, no preamble."
)


def summarise(run: TurnRun) -> None:
    """When the history does not fit the turn alias's budget, fold the messages that
    no longer fit into the session's rolling summary with a metered `summary` call.
    If that call fails, the context falls back to truncation (F51: `used_fallback`
    on the calls, and a warning in the log)."""
    session, price = run.turn.session, run.price
    context = run_context(run, price=price, system_prompt=system_prompt_for(run, session.system_prompt), extra=[],
                       tools=run.tools)  # fmt: skip
    if context.dropped == 0:
        return
    first_own = run.outcome.prior_messages[0].id if run.outcome.prior_messages else None
    oldest_kept = context.history_ids[0] if context.history_ids else first_own
    older = session_history(session=session, before_message_id=oldest_kept).filter(turn__status=Turn.Status.COMPLETED)
    rows = list(older.exclude(role=Message.Role.TOOL).values("id", "role", "content")[:HISTORY_SCAN])
    if not rows:
        return
    # The newest of the dropped messages that fit one summary call's input.
    rule = price.counting
    head = count_text(SUMMARY_PROMPT, rule) + count_text(session.summary, rule) + 16
    room = input_budget(price) - REPLY_FRAMING_TOKENS - 2 * MESSAGE_FRAMING_TOKENS - head
    lines: list[str] = []
    for row in rows:
        line = f"{row['role']}: {row['content']}"
        # Each line counted apart, with its newline; the call itself is counted whole
        # (count_prompt below) before the ceiling check.
        room -= count_text(line, rule) + 1
        if room < 0:
            break
        lines.insert(0, line)
    previous = f"Summary so far:\n{session.summary}\n\n" if session.summary else ""
    messages = [
        ChatMessage(role="system", content=SUMMARY_PROMPT),
        ChatMessage(role="user", content=f"{previous}Conversation:\n" + "\n".join(lines)),
    ]
    summary_context = TurnContext(messages=messages, input_tokens=count_prompt(messages, rule))
    # Keep a full window for the reply that follows.
    if not run.affordable(
        price=price, context=summary_context, tools=None, reserve=window_bound(price), exempt_first=False
    ):
        return
    result = run.call(price=price, context=summary_context, purpose=LLMCall.Purpose.SUMMARY, stream=False)
    if result is None or not result.text.strip():
        run.outcome.error = ""  # the turn goes on, on a truncated history
        run.outcome.llm_calls[-1].used_fallback = True
        run.used_fallback = True
        logger.warning("turn %s: summary call failed; the context falls back to truncation", run.turn.pk)
        return
    session.summary, session.summary_through_message_id = result.text.strip(), rows[0]["id"]
    run.outcome.summary = (session.summary, rows[0]["id"])
