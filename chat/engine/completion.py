"""A turn of the OpenAI-compatible endpoint (openai_api): ONE metered call on the
request's own messages, which are stored as the turn's messages, with the client's
tools and options (Turn.completion_options). No session history, summary or system
prompt of the session takes part, and Parley runs none of its own tools: the tool
calls the model asks for go back to the client, which runs them and sends their
results in its next request.

Its hold (chat.services.completions) is this one call's worst case, so the call
needs no ceiling check. A stream stopped by its owner (the client went away, or
POST turns/{id}/cancel) or cut by the provider keeps and charges what was said, as
chat.engine.run does."""

from billing.models import ModelPrice
from chat import leases
from chat.engine.context import TurnContext, to_chat_messages
from chat.engine.metering import TurnOutcome, attempts_error, llm_call_run
from chat.llm import STOPPED_BY_OWNER, CallOptions
from chat.llm.counting import count_prompt
from chat.models import Message, Turn


def call_options(options: dict) -> CallOptions:
    """The stored request options as the providers take them."""
    return CallOptions(
        temperature=options.get("temperature"),
        top_p=options.get("top_p"),
        stop=tuple(options.get("stop") or ()),
        tool_choice=options.get("tool_choice"),
        tool_name=options.get("tool_name") or "",
        user=options.get("user") or "",
    )


def completion_outcome(*, turn: Turn, price: ModelPrice) -> TurnOutcome:
    options = turn.completion_options or {}
    rows = list(Message.objects.filter(turn=turn).order_by("id"))
    messages = to_chat_messages(rows)
    context = TurnContext(messages=messages, input_tokens=count_prompt(messages, price.counting), own_rows=rows)
    outcome = TurnOutcome(prior_messages=rows)
    if leases.stop_requested(turn.pk):  # cancelled before the call started (or the lease is gone)
        outcome.cancelled = not leases.lease_lost(turn.pk)
        return outcome
    result, llm_calls = llm_call_run(
        turn=turn, price=price, context=context, tools=options.get("tools") or None,
        max_output_tokens=options.get("max_tokens"), options=call_options(options),
    )  # fmt: skip
    outcome.llm_calls.extend(llm_calls)
    if result is None:
        outcome.error = attempts_error(llm_calls)
        return outcome
    if result.partial == STOPPED_BY_OWNER:
        outcome.cancelled = True
    elif result.partial:
        outcome.error = result.partial
    outcome.messages.append(
        Message(
            role=Message.Role.ASSISTANT, content=result.text,
            tool_calls=[call.as_dict() for call in result.tool_calls] or None,
        )
    )  # fmt: skip
    return outcome
