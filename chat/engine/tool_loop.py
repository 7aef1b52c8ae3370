"""The tool loop (F53): one speaker's answer. The model is offered the run's tools
and asks by function calling; each requested tool runs through `tool_dispatch` and
its result goes back. At most MAX_TOOL_ROUNDS rounds of tools run: when the model
still asks for tools after that, the answer ends with what it said (no further
call), and the unanswered requests are not stored, so later contexts stay valid
for every provider."""

import logging

from django.conf import settings

from billing.models import ModelPrice
from chat.engine.run import TurnRun, run_context
from chat.llm import ChatMessage
from chat.models import LLMCall, Message, Participant
from chat.tools import tool_call_build, tool_dispatch

logger = logging.getLogger(__name__)


def answer(
    run: TurnRun, *, price: ModelPrice, system_prompt: str, extra: list[ChatMessage],
    participant: Participant | None = None,
) -> str | None:  # fmt: skip
    """One speaker's answer with the tool loop. Appends its messages, calls and tool
    calls to the outcome; returns its final text, or None when nothing was said."""
    loop: list[ChatMessage] = []  # this answer's tool requests and results, not yet stored
    tools = run.tools
    for round_number in range(settings.MAX_TOOL_ROUNDS + 1):
        context = run_context(run, price=price, system_prompt=system_prompt, extra=[*extra, *loop], tools=tools)
        if not run.affordable(price=price, context=context, tools=tools):
            return None
        purpose = LLMCall.Purpose.REPLY if round_number == 0 else LLMCall.Purpose.TOOL_FOLLOWUP
        result = run.call(price=price, context=context, purpose=purpose, tools=tools, participant=participant)
        if result is None:
            return None
        llm_call = run.outcome.llm_calls[-1]
        requests = result.tool_calls if tools else ()
        if requests and round_number == settings.MAX_TOOL_ROUNDS:
            # The limit: the requests are not run, and not stored (they would have no result).
            logger.info("turn %s reached the tool-round limit (%s)", run.turn.pk, settings.MAX_TOOL_ROUNDS)
            text = result.text or f"[Stopped: the limit of {settings.MAX_TOOL_ROUNDS} tool rounds was reached.]"
            run.outcome.messages.append(Message(role=Message.Role.ASSISTANT, content=text, participant=participant))
            return text
        run.outcome.messages.append(
            Message(
                role=Message.Role.ASSISTANT, content=result.text, participant=participant,
                tool_calls=[c.as_dict() for c in requests] or None,
            )
        )  # fmt: skip
        if not requests:
            return result.text
        loop.append(ChatMessage(role="assistant", content=result.text, tool_calls=tuple(requests)))
        for request in requests:
            # Outside any transaction: a slow search holds no lock.
            outcome = tool_dispatch(
                user=run.turn.user, name=request.name, arguments=request.raw_arguments,
                membership_id=run.turn.membership_id,
            )
            run.outcome.tool_calls.append(
                tool_call_build(
                    turn=run.turn, llm_call=llm_call, name=request.name, arguments=request.raw_arguments,
                    result=outcome,
                )
            )  # fmt: skip
            run.outcome.messages.append(
                Message(role=Message.Role.TOOL, content=outcome.content, tool_call_id=request.id,
                        participant=participant)
            )  # fmt: skip
            loop.append(ChatMessage(role="tool", content=outcome.content, tool_call_id=request.id, name=request.name))
    return None  # not reached: the last round always returns
