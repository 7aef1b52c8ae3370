"""Metering: what a turn's run produced (`TurnOutcome`), one metered provider call
(`llm_call_run`, priced by billing.money), and the cost bounds the hold and the
per-call ceiling check are made of."""

import logging
import time
from dataclasses import dataclass, field
from decimal import Decimal

from billing.models import ModelPrice
from billing.money import ledger_amount, usage_amount
from billing.pricing import TokenUsage, call_cost, cost_bound
from chat import metrics, streaming
from chat.engine.context import TurnContext, input_budget
from chat.leases import stop_requested
from chat.llm import CallOptions, ChatMessage, LLMResult, ProviderError, StopRequested, provider_for
from chat.llm.counting import count_output, count_prompt, count_text, count_tools
from chat.models import LLMCall, Message, Participant, ToolCall, Turn
from core.db import db_release

logger = logging.getLogger(__name__)


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
    counted_input: int | None = None,
    output_limit: int | None = None,
) -> LLMCall:
    """An unsaved LLMCall metered at `price`. A failed call (no result) has no usage
    and costs nothing; a partial one (its stream stopped after output) costs what
    came. `counted_input` is the call's input counted with the price's rule (what its
    hold reserved; billed when the provider reported no usage); `output_limit`, the
    most output it was allowed (the price's max_output_tokens when not given)."""
    usage = metered_usage(
        price=price, result=result, counted_input=counted_input or 0,
        output_limit=output_limit or price.max_output_tokens,
    )  # fmt: skip
    exact = call_cost(price, usage)
    return LLMCall(
        price=price, purpose=purpose, model_alias=price.alias, provider=price.provider,
        provider_model=price.provider_model, input_tokens=usage.input_tokens,
        cached_input_tokens=usage.cached_input_tokens, cache_write_tokens=usage.cache_write_tokens,
        output_tokens=usage.output_tokens, reasoning_tokens=usage.reasoning_tokens,
        usage_reported=result.usage_reported if result else True,
        cost=ledger_amount(exact), credits_burned=usage_amount(exact), latency_ms=latency_ms,
        status=_call_status(result), error=(error or (result.partial if result else ""))[:500],
        used_fallback=used_fallback, finish_reason=result.finish_reason if result else "",
    )  # fmt: skip


# Aliases whose provider reported no usage, warned about once per process.
_WARNED_UNREPORTED: set[str] = set()


def metered_usage(*, price: ModelPrice, result: LLMResult | None, counted_input: int, output_limit: int) -> TokenUsage:
    """What a call is billed for: the provider's report, in every class it reported.
    Where it reported nothing, the input is `counted_input`; where its report may
    lag the output (a stream that stopped early) or is missing, the output is at
    least what the price's rule counts of the text, tool calls and reasoning that
    arrived, up to `output_limit` (the provider stops there, whatever the count)."""
    if result is None:
        return TokenUsage(input_tokens=0, output_tokens=0)
    input_tokens, output_tokens, reasoning = result.input_tokens, result.output_tokens, result.reasoning_tokens
    if not result.usage_reported:
        input_tokens = max(input_tokens, counted_input)
        if not result.partial and price.alias not in _WARNED_UNREPORTED:
            _WARNED_UNREPORTED.add(price.alias)
            logger.warning("model alias %s: the provider reported no usage; billing the counted tokens", price.alias)
    if result.partial or not result.usage_reported:
        rule = price.counting
        reasoning = max(reasoning, min(count_text(result.reasoning_text, rule), output_limit))
        counted = count_output(text=result.text, tool_calls=result.tool_calls, extra=result.unkept_output, rule=rule)
        output_tokens = max(output_tokens, min(counted + reasoning, output_limit))
    # The classes are parts of the totals, never more than what is left of them.
    cached = min(result.cached_input_tokens, input_tokens)
    return TokenUsage(
        input_tokens=input_tokens, output_tokens=output_tokens, reasoning_tokens=min(reasoning, output_tokens),
        cached_input_tokens=cached, cache_write_tokens=min(result.cache_write_tokens, input_tokens - cached),
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
            # Called with "" for output that is not shown (reasoning): a Stop still ends it.
            if stop_requested(turn_id):
                raise StopRequested  # the provider ends the call with what came so far
            if text:
                streaming.publish(turn_id, "delta", {"text": text, **who})

    counted = counted_input(price=price, context=context, tools=tools)
    output_limit = max_output_tokens or price.max_output_tokens
    db_release()  # nothing holds a database connection while the model answers
    started = time.monotonic()
    try:
        result = provider_for(price.provider).complete(
            model=price.provider_model, messages=messages, max_output_tokens=output_limit, tools=tools,
            on_delta=on_delta, options=options,
        )  # fmt: skip
    except ProviderError as exc:
        latency = round((time.monotonic() - started) * 1000)
        return None, llm_call_build(price=price, purpose=purpose, latency_ms=latency, error=exc.message)
    latency = round((time.monotonic() - started) * 1000)
    llm_call = llm_call_build(
        price=price, purpose=purpose, latency_ms=latency, result=result, counted_input=counted,
        output_limit=output_limit,
    )  # fmt: skip
    overrun_check(turn=turn, llm_call=llm_call, counted_input=counted, output_limit=output_limit)
    return result, llm_call


def counted_input(*, price: ModelPrice, context: TurnContext | list[ChatMessage], tools: list[dict] | None) -> int:
    """The call's input under the price's rule: what a hold reserved for it."""
    if isinstance(context, TurnContext):
        return context.input_tokens + count_tools(tools, price.counting)
    return count_prompt(context, price.counting, tools)


def overrun_check(*, turn: Turn, llm_call: LLMCall, counted_input: int, output_limit: int) -> None:
    """A provider that reports more than the count held is charged what it reports
    (its bill is the truth); the overrun is logged and counted, since it means the
    alias's counting rule does not bound its tokenizer."""
    if llm_call.input_tokens <= counted_input and llm_call.output_tokens <= output_limit:
        return
    metrics.HOLD_OVERRUNS.labels(alias=llm_call.model_alias).inc()
    logger.warning(
        "turn %s: model alias %s reported %s input / %s output tokens, over the %s / %s held",
        turn.pk, llm_call.model_alias, llm_call.input_tokens, llm_call.output_tokens, counted_input, output_limit,
    )  # fmt: skip


# --- bounds: a call's worst case -------------------------------------------------------


def call_bound(*, price: ModelPrice, input_tokens: int) -> Decimal:
    """The most one call on `price` of `input_tokens` (counted) can cost."""
    return ledger_amount(cost_bound(price, input_tokens=input_tokens, output_tokens=price.max_output_tokens))


def window_bound(price: ModelPrice) -> Decimal:
    """The most one call on `price` can cost: a full input budget plus max output
    (context_build never sends more than the budget, counted with the price's rule)."""
    return call_bound(price=price, input_tokens=input_budget(price))
