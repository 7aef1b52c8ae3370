"""An embeddings request's one metered call (POST /v1/embeddings): counted with the
alias's rule before it is held, tried on the alias's deployments with failover as
`llm_call_run` tries a chat call, and metered into LLMCall rows for turn_complete.

Two ways to make the same call: `embedding_call` on a thread (WSGI, the test client),
`embedding_call_async` on the event loop (the ASGI server: no thread waits on the
model). Both return (vectors or None, the unsaved LLMCall of every attempt); an
attempt that fails for the upstream's reason (ProviderError.failover) is a failed
call costing nothing and the next deployment is tried, its failure recorded against
the upstream's cooldown (routing.cooldown)."""

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal

from billing.models import ModelPrice
from billing.money import ledger_amount
from billing.pricing import cost_bound
from chat import metrics
from chat.engine.metering import llm_call_build, overrun_check
from chat.llm import LLMResult, ProviderError, provider_for
from chat.llm.base import EmbeddingInput, EmbeddingResult
from chat.llm.counting import ENCODINGS, count_text, encoding
from chat.models import LLMCall, Turn
from routing.cooldown import failure_record, slot_release, slot_take
from routing.selectors import Route

# OpenAI's limits: at most 2048 inputs a request, each within the model's context.
MAX_INPUTS = 2048
# The longest vector a request may ask for (`dimensions`): no embedding model has
# more, and it bounds the answer (2048 inputs of 4096 floats).
MAX_DIMENSIONS = 4096
# What a text may cost beyond its own tokens where the rule is UTF-8 bytes: the
# begin and end markers an embedding model's tokenizer adds (BERT's [CLS] and
# [SEP]). OpenAI's encodings count exactly what OpenAI bills (no markers).
TEXT_FRAMING_TOKENS = 2
# The largest token id a token array may carry where the rule is not an encoding
# (bytes: the model's vocabulary is not known here); bigger than any vocabulary.
MAX_TOKEN_ID = 2**31 - 1
# Where an upstream limits its calls: how often a busy one is asked for a place.
SLOT_POLL_SECONDS = 0.2
SLOT_LEASE_SECONDS = 900.0
# Upstream kinds that have embeddings (Anthropic has none).
EMBEDDING_KINDS = ("local", "openai")


@dataclass(frozen=True)
class EmbeddingRequest:
    """A parsed embeddings request in neutral shapes (openai_api parses it)."""

    price: ModelPrice
    inputs: list[EmbeddingInput]
    dimensions: int | None = None
    user: str = ""


@dataclass(frozen=True)
class EmbeddingCount:
    """The request counted with the alias's rule: its tokens (what the hold, the tpm
    and a call without usage are made of) and the hold's amount."""

    tokens: int
    hold: Decimal

    def describe(self, request: EmbeddingRequest) -> str:
        """What the turn keeps of the request: no text, no vector."""
        count = len(request.inputs)
        shape = f", {request.dimensions} dimensions" if request.dimensions else ""
        return f"Embeddings: {count} input{'s' if count != 1 else ''}, {self.tokens} tokens counted{shape}."


def input_count(item: EmbeddingInput, rule: str) -> int:
    """One input's tokens under `rule`: a token array is its length, exactly."""
    if isinstance(item, list):
        return len(item)
    return count_text(item, rule) + (0 if rule in ENCODINGS else TEXT_FRAMING_TOKENS)


def token_id_limit(rule: str) -> int:
    """The largest token id a token array may carry for an alias counted by `rule`."""
    return encoding(rule).n_vocab - 1 if rule in ENCODINGS else MAX_TOKEN_ID


def embedding_count(request: EmbeddingRequest) -> tuple[EmbeddingCount, str | None]:
    """The request's count and hold; or, second, why an input is refused (each input
    must fit the alias's context_tokens, and a token id its vocabulary)."""
    price, total = request.price, 0
    limit = token_id_limit(price.counting) if any(isinstance(item, list) for item in request.inputs) else 0
    for index, item in enumerate(request.inputs):
        if isinstance(item, list) and any(token > limit for token in item):
            return EmbeddingCount(0, Decimal(0)), f"input[{index}] has a token id over {limit}, the vocabulary's last."
        tokens = input_count(item, price.counting)
        if tokens > price.context_tokens:
            return EmbeddingCount(0, Decimal(0)), (
                f"input[{index}] is {tokens} tokens (counted as {price.counting}); the input limit of "
                f"'{price.alias}' is {price.context_tokens}."
            )
        total += tokens
    hold = ledger_amount(cost_bound(price, input_tokens=total, output_tokens=0))
    return EmbeddingCount(total, hold), None


def embedding_routes(routes: list[Route]) -> list[Route]:
    """The deployments that can embed (an Anthropic deployment of an alias cannot)."""
    return [route for route in routes if route.endpoint.kind in EMBEDDING_KINDS]


# --- the call ----------------------------------------------------------------------------


def _call_of(*, request: EmbeddingRequest, count: EmbeddingCount, route: Route, started: float,
             answer: EmbeddingResult | ProviderError) -> LLMCall:  # fmt: skip
    """The attempt's unsaved LLMCall, metered like a chat call (llm_call_build): the
    provider's reported prompt_tokens, else the count; a failure costs nothing."""
    latency = round((time.monotonic() - started) * 1000)
    purpose, price = LLMCall.Purpose.EMBEDDING, request.price
    if isinstance(answer, ProviderError):
        call = llm_call_build(price=price, purpose=purpose, latency_ms=latency, error=answer.message, route=route)
        metrics.llm_call_observe(call, reason=answer.reason)
        return call
    result = LLMResult(text="", input_tokens=answer.input_tokens, output_tokens=0,
                       usage_reported=answer.usage_reported, finish_reason="")  # fmt: skip
    call = llm_call_build(
        price=price, purpose=purpose, latency_ms=latency, result=result, counted_input=count.tokens,
        output_limit=1, route=route,
    )  # fmt: skip
    metrics.llm_call_observe(call)
    return call


def _failed(error: ProviderError, route: Route) -> None:
    """A failure of the upstream's own counts towards its cooldown (its being busy
    does not)."""
    if error.failover and error.reason != "busy":
        failure_record(route.endpoint.name, reason=error.reason, message=error.message)


def _busy(route: Route) -> ProviderError:
    message = f"The {route.endpoint.name} provider is at its limit of {route.max_concurrent} calls at once."
    return ProviderError(message, reason="busy", failover=True)


def _in_order(routes: list[Route]) -> Iterator[tuple[Route, bool]]:
    """The routes, those at their limit of calls after the others: (route, waits for
    a place)."""
    busy = []
    for route in routes:
        if route.max_concurrent:
            busy.append(route)
        else:
            yield route, False
    for route in busy:
        yield route, True


def embedding_call(*, turn: Turn, request: EmbeddingRequest, count: EmbeddingCount,
                   routes: list[Route]) -> tuple[EmbeddingResult | None, list[LLMCall]]:  # fmt: skip
    """The call on this thread, with failover."""
    calls: list[LLMCall] = []
    for route, limited in _in_order(routes):
        started = time.monotonic()
        slot = None
        if limited:
            deadline = started + route.endpoint.timeout
            while (slot := slot_take(route.endpoint.name, limit=route.max_concurrent, lease=SLOT_LEASE_SECONDS)) is None:
                if time.monotonic() >= deadline:
                    break
                time.sleep(SLOT_POLL_SECONDS)
        answer: EmbeddingResult | ProviderError
        if limited and slot is None:
            answer = _busy(route)
        else:
            try:
                answer = provider_for(route.endpoint).embed(
                    model=route.provider_model, inputs=request.inputs, dimensions=request.dimensions, user=request.user
                )
            except ProviderError as exc:
                answer = exc
            finally:
                if slot is not None:
                    slot_release(route.endpoint.name, slot)
        calls.append(_call_of(request=request, count=count, route=route, started=started, answer=answer))
        if isinstance(answer, EmbeddingResult):
            overrun_check(turn=turn, llm_call=calls[-1], counted_input=count.tokens, output_limit=0)
            return answer, calls
        _failed(answer, route)
        if not answer.failover:
            break  # the request's own fault: no other deployment
    return None, calls


async def embedding_call_async(
    *, turn: Turn, request: EmbeddingRequest, count: EmbeddingCount, routes: list[Route],
    on_thread: Callable[..., Awaitable],
) -> tuple[EmbeddingResult | None, list[LLMCall]]:  # fmt: skip
    """The call on the event loop (the provider's `aembed`), with failover; the cache
    calls (call slots, a failure's record) go through `on_thread`, as the database's
    do (core.db.db_read)."""
    calls: list[LLMCall] = []
    for route, limited in _in_order(routes):
        started = time.monotonic()
        slot = None
        if limited:
            deadline = started + route.endpoint.timeout
            take = dict(limit=route.max_concurrent, lease=SLOT_LEASE_SECONDS)
            while (slot := await on_thread(slot_take, name=route.endpoint.name, **take)) is None:
                if time.monotonic() >= deadline:
                    break
                await asyncio.sleep(SLOT_POLL_SECONDS)
        answer: EmbeddingResult | ProviderError
        if limited and slot is None:
            answer = _busy(route)
        else:
            try:
                answer = await provider_for(route.endpoint).aembed(
                    model=route.provider_model, inputs=request.inputs, dimensions=request.dimensions, user=request.user
                )
            except ProviderError as exc:
                answer = exc
            finally:
                if slot is not None:
                    await on_thread(slot_release, name=route.endpoint.name, token=slot)
        calls.append(_call_of(request=request, count=count, route=route, started=started, answer=answer))
        if isinstance(answer, EmbeddingResult):
            overrun_check(turn=turn, llm_call=calls[-1], counted_input=count.tokens, output_limit=0)
            return answer, calls
        if answer.failover and answer.reason != "busy":
            await on_thread(_failed, error=answer, route=route)
        if not answer.failover:
            break
    return None, calls
