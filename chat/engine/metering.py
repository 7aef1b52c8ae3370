"""Metering: what a turn's run produced (`TurnOutcome`), one metered provider call
(`llm_call_run`, priced by billing.money, routed over the alias's deployments with
failover), and the cost bounds the hold and the per-call ceiling check are made of."""

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal

from billing import money
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
from routing.cooldown import failure_record, slot_release, slot_take
from routing.selectors import Route, routes_for

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
    route: Route | None = None,
) -> LLMCall:
    """An unsaved LLMCall metered at `price`. A failed call (no result) has no usage
    and costs nothing; a partial one (its stream stopped after output) costs what
    came. `counted_input` is the call's input counted with the price's rule (what its
    hold reserved; billed when the provider reported no usage); `output_limit`, the
    most output it was allowed (the price's max_output_tokens when not given);
    `route`, the deployment that answered (None: the price's own provider and model)."""
    usage = metered_usage(
        price=price, result=result, counted_input=counted_input or 0,
        output_limit=output_limit or price.max_output_tokens,
    )  # fmt: skip
    exact = call_cost(price, usage)
    return LLMCall(
        price=price, purpose=purpose, model_alias=price.alias,
        provider=route.endpoint.kind if route else price.provider,
        provider_model=route.provider_model if route else price.provider_model,
        upstream=route.endpoint.name if route else price.provider,
        upstream_cost=upstream_cost(route, usage) if route and result is not None else None,
        input_tokens=usage.input_tokens,
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


def upstream_cost(route: Route, usage: TokenUsage) -> Decimal | None:
    """What the deployment's upstream charges us for `usage` (None: not recorded)."""
    if route.cost_input_credits_per_mtok is None and route.cost_output_credits_per_mtok is None:
        return None
    exact = money.call_cost(
        input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
        input_price=route.cost_input_credits_per_mtok or Decimal("0"),
        output_price=route.cost_output_credits_per_mtok or Decimal("0"),
    )  # fmt: skip
    return ledger_amount(exact)


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
) -> tuple[LLMResult | None, list[LLMCall]]:
    """One metered provider call for `turn`, tried on the alias's deployments in turn
    (routing.selectors) until one answers: (its result, or None when every one failed;
    the unsaved LLMCall of every attempt, the one that answered last). An attempt that
    fails before any output for a reason of the upstream's (ProviderError.failover) is
    recorded as a failed call costing nothing and the next deployment is tried, within
    the same hold; once output has come there is no retry (a stream cut is a partial,
    billed as it stands). Streams the reply to the turn's channel when there is one,
    with the participant's id and name in a round table, and stops it at the next
    piece once the turn's owner cancelled it (chat.leases). `max_output_tokens` (at
    most the price's) and `options` are what an OpenAI-endpoint client asked for."""
    messages = context.messages if isinstance(context, TurnContext) else context
    first_output: list[float] = []  # when this attempt's first piece came
    on_delta = None
    if stream and streaming.live():
        turn_id = turn.pk
        who = {"participant": participant.pk, "participant_name": participant.name} if participant else {}

        def on_delta(text: str) -> None:
            if not first_output:
                first_output.append(time.monotonic())
            # Called with "" for output that is not shown (reasoning): a Stop still ends it.
            if stop_requested(turn_id):
                raise StopRequested  # the provider ends the call with what came so far
            if text:
                streaming.publish(turn_id, "delta", {"text": text, **who})

    counted = counted_input(price=price, context=context, tools=tools)
    output_limit = max_output_tokens or price.max_output_tokens
    routes = routes_for(price)
    db_release()  # nothing holds a database connection while the model answers
    if not routes:
        error = f"No active upstream serves the model alias {price.alias}; an operator must enable one."
        return None, [llm_call_build(price=price, purpose=purpose, latency_ms=0, error=error)]
    calls: list[LLMCall] = []
    for route, slot in _with_slots(routes):
        started = time.monotonic()
        if route.max_concurrent and slot is None:
            busy = f"The {route.endpoint.name} provider is at its limit of {route.max_concurrent} calls at once."
            answer: LLMResult | ProviderError = ProviderError(busy, reason="busy", failover=True)
        else:
            first_output.clear()
            answer = _complete(route, slot, messages=messages, max_output_tokens=output_limit, tools=tools,
                                on_delta=on_delta, options=options)  # fmt: skip
        if isinstance(answer, LLMResult):
            result = answer
            llm_call = llm_call_build(
                price=price, purpose=purpose, latency_ms=_ms_since(started), result=result, counted_input=counted,
                output_limit=output_limit, route=route,
            )  # fmt: skip
            metrics.llm_call_observe(llm_call)
            if first_output:
                metrics.LLM_FIRST_TOKEN_SECONDS.labels(upstream=route.endpoint.name).observe(first_output[0] - started)
            overrun_check(turn=turn, llm_call=llm_call, counted_input=counted, output_limit=output_limit)
            calls.append(llm_call)
            return result, calls
        calls.append(_failed_call(price=price, purpose=purpose, route=route, started=started, error=answer))
        if not answer.failover or stop_requested(turn.pk):
            break  # the request's own fault, or the owner stopped the turn: no other deployment
    return None, calls


def _complete(route: Route, slot: str | None, **call: object) -> LLMResult | ProviderError:
    """One attempt on `route`: its result, or the ProviderError it failed with."""
    try:
        return provider_for(route.endpoint).complete(model=route.provider_model, **call)
    except ProviderError as exc:
        return exc
    finally:
        if slot is not None:
            slot_release(route.endpoint.name, slot)


def _ms_since(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


# A call slot is held at most this long: a process that dies mid-call frees it then.
SLOT_LEASE_SECONDS = 900.0
SLOT_POLL_SECONDS = 0.2


def _with_slots(routes: list[Route]) -> Iterator[tuple[Route, str | None]]:
    """The routes with a call slot where their upstream limits its calls: one at its
    limit is tried after the others, waiting up to its timeout for a place (its slot
    then None when none came)."""
    busy = []
    for route in routes:
        if not route.max_concurrent:
            yield route, None
        elif (slot := slot_take(route.endpoint.name, limit=route.max_concurrent, lease=SLOT_LEASE_SECONDS)) is not None:
            yield route, slot
        else:
            busy.append(route)
    for route in busy:
        deadline = time.monotonic() + route.endpoint.timeout
        slot = None
        while slot is None and time.monotonic() < deadline:
            time.sleep(SLOT_POLL_SECONDS)
            slot = slot_take(route.endpoint.name, limit=route.max_concurrent or 1, lease=SLOT_LEASE_SECONDS)
        yield route, slot


def _failed_call(*, price: ModelPrice, purpose: str, route: Route, started: float, error: ProviderError) -> LLMCall:
    """A failed attempt, costing nothing: counted, and kept against its upstream (a
    failure of the upstream's own counts towards its cooldown; its being busy does not)."""
    llm_call = llm_call_build(
        price=price, purpose=purpose, latency_ms=_ms_since(started), error=error.message, route=route
    )
    metrics.llm_call_observe(llm_call, reason=error.reason)
    if error.failover and error.reason != "busy":
        failure_record(route.endpoint.name, reason=error.reason, message=error.message)
    return llm_call


def attempts_error(calls: list[LLMCall]) -> str:
    """Why a call failed, every attempt told (a turn's error)."""
    failed = [call for call in calls if call.status == LLMCall.Status.FAILED]
    if len(failed) <= 1:
        return failed[0].error if failed else ""
    told = "; ".join(f"{call.upstream}: {call.error.rstrip('.')}" for call in failed)
    return f"Every deployment of {failed[0].model_alias} failed ({len(failed)} tried). {told}."[:500]


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
