"""Metering: what a turn's run produced (`TurnOutcome`), one metered provider call
(`llm_call_run`, priced by billing.money), and the cost bounds the hold and the
per-call ceiling check are made of."""

import json
import time
from dataclasses import dataclass, field
from decimal import Decimal

from billing.models import ModelPrice
from billing.money import call_cost, ledger_amount, usage_amount
from chat import streaming
from chat.engine.context import TurnContext, input_budget
from chat.leases import stop_requested
from chat.llm import CallOptions, ChatMessage, LLMResult, ProviderError, StopRequested, estimate_tokens, provider_for
from chat.models import LLMCall, Message, Participant, ToolCall, Turn
from core.db import db_release


@dataclass
class TurnOutcome:
    """What running a turn produced, unsaved, for `turn_complete` to write at once.
    `error` set means the turn failed (calls with usage are still charged);
    `cancelled`, that its owner stopped it (what was said is kept and charged)."""

    messages: list[Message] = field(default_factory=list)
    llm_calls: list[LLMCall] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    error: str = ""
    cancelled: bool = False
    # The turn's messages stored before it ran (its question), when already read;
    # they complete the turn published with `done`.
    prior_messages: list[Message] | None = None
    # A new rolling summary: (text, id of the newest message it covers).
    summary: tuple[str, int] | None = None


def llm_call_build(
    *,
    price: ModelPrice,
    purpose: str,
    latency_ms: int,
    result: LLMResult | None = None,
    error: str = "",
    used_fallback: bool = False,
) -> LLMCall:
    """An unsaved LLMCall metered at `price`. A failed call (no result) has no usage
    and costs nothing; a partial one (its stream stopped after output) costs what
    came."""
    tokens_in = result.input_tokens if result else 0
    tokens_out = result.output_tokens if result else 0
    exact = call_cost(
        input_tokens=tokens_in, output_tokens=tokens_out,
        input_price=price.input_credits_per_mtok, output_price=price.output_credits_per_mtok,
    )  # fmt: skip
    return LLMCall(
        price=price, purpose=purpose, model_alias=price.alias, provider=price.provider,
        provider_model=price.provider_model, input_tokens=tokens_in, output_tokens=tokens_out,
        cost=ledger_amount(exact), credits_burned=usage_amount(exact), latency_ms=latency_ms,
        status=_call_status(result), error=(error or (result.partial if result else ""))[:500],
        used_fallback=used_fallback, finish_reason=result.finish_reason if result else "",
    )  # fmt: skip


def _call_status(result: LLMResult | None) -> str:
    if result is None:
        return LLMCall.Status.FAILED
    return LLMCall.Status.PARTIAL if result.partial else LLMCall.Status.OK


def llm_call_run(
    *,
    turn: Turn,
    price: ModelPrice,
    context: TurnContext | list[ChatMessage],
    purpose: str = LLMCall.Purpose.REPLY,
    tools: list[dict] | None = None,
    stream: bool = True,
    participant: Participant | None = None,
    max_output_tokens: int | None = None,
    options: CallOptions | None = None,
) -> tuple[LLMResult | None, LLMCall]:
    """One metered provider call for `turn`: (result or None when it failed for good,
    the unsaved LLMCall). Streams the reply to the turn's channel when there is one,
    with the participant's id and name in a round table, and stops it at the next
    piece once the turn's owner cancelled it (chat.leases). `max_output_tokens` (at
    most the price's) and `options` are what an OpenAI-endpoint client asked for."""
    messages = context.messages if isinstance(context, TurnContext) else context
    on_delta = None
    if stream and streaming.enabled():
        turn_id = turn.pk
        who = {"participant": participant.pk, "participant_name": participant.name} if participant else {}

        def on_delta(text: str) -> None:
            if stop_requested(turn_id):
                raise StopRequested  # the provider ends the call with what came so far
            streaming.publish(turn_id, "delta", {"text": text, **who})

    db_release()  # nothing holds a database connection while the model answers
    started = time.monotonic()
    try:
        result = provider_for(price.provider).complete(
            model=price.provider_model, messages=messages, max_output_tokens=max_output_tokens or price.max_output_tokens,
            tools=tools, on_delta=on_delta, options=options,
        )  # fmt: skip
    except ProviderError as exc:
        latency = round((time.monotonic() - started) * 1000)
        return None, llm_call_build(price=price, purpose=purpose, latency_ms=latency, error=exc.message)
    latency = round((time.monotonic() - started) * 1000)
    return result, llm_call_build(price=price, purpose=purpose, latency_ms=latency, result=result)


# --- bounds: a call's worst case -------------------------------------------------------


def tools_tokens(tools: list[dict] | None) -> int:
    """What offering `tools` adds to a prompt (the local provider counts exactly this)."""
    return estimate_tokens(json.dumps(list(tools))) if tools else 0


def call_bound(*, price: ModelPrice, input_tokens: int) -> Decimal:
    return ledger_amount(
        call_cost(
            input_tokens=input_tokens, output_tokens=price.max_output_tokens,
            input_price=price.input_credits_per_mtok, output_price=price.output_credits_per_mtok,
        )
    )  # fmt: skip


def window_bound(price: ModelPrice) -> Decimal:
    """The most one call on `price` can cost: a full input budget plus max output
    (context_build never sends more than the budget)."""
    return call_bound(price=price, input_tokens=input_budget(price))
