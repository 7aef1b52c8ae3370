"""Usage in every token class each provider bills, read from the real wire shapes of
the pinned SDKs (the fake servers of tests/fakes speak them), and what it costs.

Provider level: the LLMResult of a plain and a streamed answer (input, cached,
cache-write, output, reasoning; the reasoning text streamed), a stream stopped by
the owner or cut while the model thinks. Turn level: the stored LLMCall of a turn
through each provider, priced per class (a cached token at the cached price, a cache
write at the cache-write price, reasoning at the output price), and a turn stopped
during thinking billed at least the reasoning that came."""

import math
import time
from decimal import ROUND_CEILING, Decimal

import pytest

from billing.models import CreditTransaction, ModelPrice
from billing.services import model_price_set
from chat.llm import STOPPED_BY_OWNER, ChatMessage, LLMResult, StopRequested, provider_for
from chat.llm.counting import count_text
from chat.models import LLMCall, Message, Turn
from tests.chat.conftest import START_BALANCE, calls_stream, expected_cost, post_turn, turn_status, wait_for, wallet_of
from tests.conftest import client_for
from tests.fakes.llm_servers import CutStream, Reply

QUESTION = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Why is the sky blue?")]
REASONING = "Rayleigh scattering goes as the inverse fourth power of wavelength, so blue wins."
ANSWER = "Short wavelengths scatter most."

# One answer in every class, counted as LLMResult counts: all input (of it cached and
# written to the cache), all output (of it reasoning).
CLASSES = {"input_tokens": 2000, "cached_input_tokens": 1500, "cache_write_tokens": 100, "output_tokens": 300,
           "reasoning_tokens": 200}  # fmt: skip
# The OpenAI-compatible servers: OpenAI reports no cache writes (OpenRouter does, in
# prompt_tokens_details) and streams no reasoning text; vLLM and DeepSeek stream it as
# `reasoning_content`, OpenRouter as `reasoning`. (The Anthropic fake reports the same
# answer as input_tokens 400, the uncached part, beside its cache reads and writes.)
FLAVOURS = {
    "openai": {**CLASSES, "cache_write_tokens": 0, "reasoning": ""},
    "vllm": {**CLASSES, "cache_write_tokens": 0, "reasoning": REASONING, "reasoning_field": "reasoning_content"},
    "openrouter": {**CLASSES, "reasoning": REASONING, "reasoning_field": "reasoning"},
}


def classes_of(result: LLMResult | LLMCall) -> dict[str, int]:
    return {name: getattr(result, name) for name in CLASSES}


def pieces_of(text: str, size: int = 4) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def stop_at(n: int):  # noqa: ANN201
    """An on_delta that raises the owner's Stop at its n-th call, keeping what it saw."""
    seen: list[str] = []

    def on_delta(text: str) -> None:
        seen.append(text)
        if len(seen) == n:
            raise StopRequested

    return seen, on_delta


# --- openai: prompt_tokens(_details), completion_tokens(_details), reasoning deltas -----


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streaming"])
def test_openai_usage_is_read_in_every_class(fake_openai, flavour, stream):
    values = FLAVOURS[flavour]
    fake_openai.script(Reply(text=ANSWER, **values))
    seen: list[str] = []
    result = provider_for("openai").complete(
        model="o-test", messages=QUESTION, max_output_tokens=512, on_delta=seen.append if stream else None
    )
    assert result.text == ANSWER and result.finish_reason == "stop"
    assert (result.usage_reported, result.partial) == (True, "")
    assert classes_of(result) == {name: values[name] for name in CLASSES}
    if stream:
        # Each reasoning piece is passed on as "" (not shown; a Stop still ends it), then the text.
        assert seen == [""] * len(pieces_of(values["reasoning"])) + pieces_of(ANSWER)
        assert result.reasoning_text == values["reasoning"]
        assert fake_openai.requests[-1].body["stream_options"] == {"include_usage": True}


def test_openai_usage_without_details_has_no_cached_or_reasoning_tokens(fake_openai):
    """A compatible server that sends only the three totals (no details objects)."""
    fake_openai.script(Reply(text=ANSWER, input_tokens=40, output_tokens=9))
    result = provider_for("openai").complete(
        model="m", messages=QUESTION, max_output_tokens=64, on_delta=lambda _: None
    )
    assert classes_of(result) == {"input_tokens": 40, "cached_input_tokens": 0, "cache_write_tokens": 0,
                                  "output_tokens": 9, "reasoning_tokens": 0}  # fmt: skip


def test_openai_stream_without_usage_keeps_the_reasoning_for_the_count(fake_openai):
    fake_openai.script(Reply(text=ANSWER, reasoning=REASONING, include_usage=False))
    result = provider_for("openai").complete(
        model="m", messages=QUESTION, max_output_tokens=64, on_delta=lambda _: None
    )
    assert (result.usage_reported, result.partial, result.text) == (False, "", ANSWER)
    assert result.reasoning_text == REASONING  # metered: counted as output when usage is missing


@pytest.mark.parametrize("field_name", ["reasoning_content", "reasoning"])
def test_openai_plain_answer_without_usage_keeps_the_reasoning_for_the_count(fake_openai, field_name):
    fake_openai.script(Reply(text=ANSWER, reasoning=REASONING, reasoning_field=field_name, include_usage=False))
    result = provider_for("openai").complete(model="m", messages=QUESTION, max_output_tokens=64)
    assert (result.usage_reported, result.text) == (False, ANSWER)
    assert result.reasoning_text == REASONING


@pytest.mark.parametrize("field_name", ["reasoning_content", "reasoning"])
def test_openai_stop_while_thinking_returns_the_reasoning_that_came(fake_openai, field_name):
    fake_openai.script(Reply(text=ANSWER, reasoning=REASONING, reasoning_field=field_name, **CLASSES))
    seen, on_delta = stop_at(3)
    result = provider_for("openai").complete(
        model="o-test", messages=QUESTION, max_output_tokens=512, on_delta=on_delta
    )
    assert seen == ["", "", ""]  # nothing shown: the model was still thinking
    assert (result.partial, result.text, result.tool_calls) == (STOPPED_BY_OWNER, "", ())
    assert result.reasoning_text == REASONING[:12]  # the piece that came with the Stop included
    # OpenAI sends usage last: none came, the metering counts.
    assert result.usage_reported is False
    assert (result.input_tokens, result.output_tokens, result.reasoning_tokens) == (0, 0, 0)


def test_openai_stop_while_thinking_keeps_the_usage_reported_so_far(fake_openai):
    """A server that reports usage on every chunk (vLLM's continuous_usage_stats)."""
    reasoning = "x" * 80  # 20 pieces; 900 reasoning tokens reported over them
    usage = {**CLASSES, "reasoning_tokens": 900, "output_tokens": 1000}
    fake_openai.script(Reply(text=ANSWER, reasoning=reasoning, continuous_usage=True, **usage))
    _, on_delta = stop_at(3)
    result = provider_for("openai").complete(
        model="o-test", messages=QUESTION, max_output_tokens=2000, on_delta=on_delta
    )
    assert (result.partial, result.text, result.reasoning_text) == (STOPPED_BY_OWNER, "", "x" * 12)
    thought = math.ceil(900 * 3 / 20)  # what the server had counted at the third piece
    assert result.usage_reported is True
    assert classes_of(result) == {"input_tokens": 2000, "cached_input_tokens": 1500, "cache_write_tokens": 100,
                                  "output_tokens": thought, "reasoning_tokens": thought}  # fmt: skip


def test_openai_stream_cut_while_thinking_is_partial_not_an_error(fake_openai):
    fake_openai.script(CutStream("", reasoning=REASONING))
    result = provider_for("openai").complete(
        model="m", messages=QUESTION, max_output_tokens=64, on_delta=lambda _: None
    )
    assert "stream ended before the reply was complete" in result.partial
    assert (result.text, result.reasoning_text, result.usage_reported) == ("", REASONING, False)


def test_openai_stream_cut_after_usage_so_far_is_still_partial(fake_openai):
    fake_openai.script(CutStream("half a reply", continuous_usage=True))
    result = provider_for("openai").complete(
        model="m", messages=QUESTION, max_output_tokens=64, on_delta=lambda _: None
    )
    assert "stream ended before the reply was complete" in result.partial


# --- anthropic: input_tokens (uncached), cache reads and writes, thinking blocks ----------


@pytest.mark.parametrize(
    ("stream", "cumulative"), [(False, False), (True, False), (True, True)],
    ids=["plain", "streaming", "streaming-cumulative-delta"],
)  # fmt: skip
def test_anthropic_usage_is_read_in_every_input_class(fake_anthropic, stream, cumulative):
    fake_anthropic.script(Reply(text=ANSWER, reasoning=REASONING, cumulative_delta_usage=cumulative, **CLASSES))
    seen: list[str] = []
    result = provider_for("anthropic").complete(
        model="claude-test", messages=QUESTION, max_output_tokens=512, on_delta=seen.append if stream else None
    )
    assert result.text == ANSWER and (result.usage_reported, result.partial) == (True, "")
    # input_tokens (400 uncached) + cache reads + cache writes: all the input.
    assert (result.input_tokens, result.cached_input_tokens, result.cache_write_tokens) == (2000, 1500, 100)
    assert result.output_tokens == 300
    if stream:
        assert seen == [""] * len(pieces_of(REASONING)) + pieces_of(ANSWER)
        assert result.reasoning_text == REASONING


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streaming"])
def test_anthropic_thinking_tokens_are_the_reasoning_tokens(fake_anthropic, stream):
    fake_anthropic.script(Reply(text=ANSWER, reasoning=REASONING, **CLASSES))
    result = provider_for("anthropic").complete(
        model="claude-test", messages=QUESTION, max_output_tokens=512, on_delta=(lambda _: None) if stream else None
    )
    assert (result.output_tokens, result.reasoning_tokens) == (300, 200)


def test_anthropic_stop_while_thinking_keeps_message_starts_usage(fake_anthropic):
    fake_anthropic.script(Reply(text=ANSWER, reasoning=REASONING, **CLASSES))
    seen, on_delta = stop_at(3)
    result = provider_for("anthropic").complete(
        model="claude-test", messages=QUESTION, max_output_tokens=512, on_delta=on_delta
    )
    assert seen == ["", "", ""]
    assert (result.partial, result.text, result.reasoning_text) == (STOPPED_BY_OWNER, "", REASONING[:12])
    # message_start reported the input in its classes and one output token.
    assert result.usage_reported is True
    assert classes_of(result) == {"input_tokens": 2000, "cached_input_tokens": 1500, "cache_write_tokens": 100,
                                  "output_tokens": 1, "reasoning_tokens": 0}  # fmt: skip


def test_anthropic_stream_cut_while_thinking_is_partial_not_an_error(fake_anthropic):
    fake_anthropic.script(CutStream("", reasoning=REASONING))
    result = provider_for("anthropic").complete(
        model="claude-test", messages=QUESTION, max_output_tokens=64, on_delta=lambda _: None
    )
    assert "stream ended before the reply was complete" in result.partial
    assert (result.text, result.reasoning_text, result.input_tokens) == ("", REASONING, 11)


# --- through a turn: the stored LLMCall, priced per class -------------------------------

# 8-decimal prices, each class its own, so every cost needs the round-up.
IN_PRICE = Decimal("3.33333333")
CACHED_PRICE = Decimal("0.33333333")
WRITE_PRICE = Decimal("4.16666667")
OUT_PRICE = Decimal("7.77777777")


def class_price(provider: str) -> ModelPrice:
    return model_price_set(
        alias="classes", provider=provider, provider_model="model-x", input_credits_per_mtok=IN_PRICE,
        output_credits_per_mtok=OUT_PRICE, cached_input_credits_per_mtok=CACHED_PRICE,
        cache_write_credits_per_mtok=WRITE_PRICE, context_tokens=8192, max_output_tokens=2048,
    )  # fmt: skip


def class_cost(*, input_tokens: int, cached_input_tokens: int, cache_write_tokens: int, output_tokens: int,
               reasoning_tokens: int = 0) -> Decimal:  # fmt: skip
    """The pricing rule, computed here independently: uncached input at the input price,
    cache reads at the cached price, cache writes at the cache-write price, all output
    (reasoning included) at the output price; rounded up at the 8th place."""
    plain = input_tokens - cached_input_tokens - cache_write_tokens
    exact = (
        plain * IN_PRICE + cached_input_tokens * CACHED_PRICE + cache_write_tokens * WRITE_PRICE
        + output_tokens * OUT_PRICE
    ) / Decimal(1_000_000)  # fmt: skip
    return exact.quantize(Decimal("0.00000001"), rounding=ROUND_CEILING)


TURN_FLAVOURS = {
    "openai": ("openai", {**CLASSES, "cache_write_tokens": 0}),
    "openrouter": ("openai", {**CLASSES, "reasoning_field": "reasoning"}),
    "anthropic": ("anthropic", CLASSES),
}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("flavour", TURN_FLAVOURS)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streaming"])
def test_a_turn_stores_every_class_and_prices_each_at_its_own_rate(
    monkeypatch, owner_client, session, funded_owner, fake_openai, fake_anthropic, flavour, stream
):
    provider, values = TURN_FLAVOURS[flavour]
    published = calls_stream(monkeypatch, stream)
    server = fake_openai if provider == "openai" else fake_anthropic
    class_price(provider)
    server.script(Reply(text=ANSWER, reasoning=REASONING, **values))

    body = post_turn(owner_client, session, "Why is the sky blue?", model_alias="classes").data
    assert body["status"] == "completed", body
    assert bool(server.requests[-1].body.get("stream")) is stream
    call = LLMCall.objects.get()
    # Anthropic's thinking_tokens: test_an_anthropic_turn_stores_its_thinking_tokens_as_reasoning.
    checked = [name for name in CLASSES if provider != "anthropic" or name != "reasoning_tokens"]
    assert {name: getattr(call, name) for name in checked} == {name: values[name] for name in checked}
    assert (call.status, call.usage_reported) == ("ok", True)

    cost = class_cost(**{name: values[name] for name in CLASSES})
    assert call.cost == cost
    # Not the flat input price: the cached (and written) tokens are priced apart.
    assert cost != expected_cost(
        values["input_tokens"], values["output_tokens"], in_price=IN_PRICE, out_price=OUT_PRICE
    )
    turn = Turn.objects.get()
    assert turn.credits_charged == cost and body["credits_charged"] == f"{cost:.8f}"
    assert CreditTransaction.objects.get(kind="debit").amount == -cost
    assert wallet_of(funded_owner).balance == START_BALANCE - cost
    assert Message.objects.get(role="assistant").content == ANSWER  # the reasoning is not the reply
    if stream:
        assert "".join(data["text"] for event, data in published if event == "delta") == ANSWER


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streaming"])
def test_an_anthropic_turn_stores_its_thinking_tokens_as_reasoning(
    monkeypatch, owner_client, session, funded_owner, fake_anthropic, stream
):
    calls_stream(monkeypatch, stream)
    class_price("anthropic")
    fake_anthropic.script(Reply(text=ANSWER, reasoning=REASONING, **CLASSES))
    post_turn(owner_client, session, "Why is the sky blue?", model_alias="classes")
    call = LLMCall.objects.get()
    assert (call.output_tokens, call.reasoning_tokens) == (300, 200)
    assert call.cost == class_cost(**CLASSES)  # reasoning is output: no other price


@pytest.mark.django_db(transaction=True)
def test_a_streamed_turn_of_a_server_without_usage_is_billed_its_reasoning_counted(
    streamed, owner_client, session, funded_owner, fake_openai
):
    price = class_price("openai")
    fake_openai.script(Reply(text=ANSWER, reasoning=REASONING, include_usage=False))
    body = post_turn(owner_client, session, "Why is the sky blue?", model_alias="classes").data
    assert body["status"] == "completed"
    call = LLMCall.objects.get()
    reasoning, text = count_text(REASONING, price.counting), count_text(ANSWER, price.counting)
    assert (call.usage_reported, call.reasoning_tokens, call.output_tokens) == (False, reasoning, text + reasoning)
    assert call.input_tokens > 0 and call.cached_input_tokens == call.cache_write_tokens == 0
    assert call.cost == class_cost(input_tokens=call.input_tokens, cached_input_tokens=0, cache_write_tokens=0,
                                   output_tokens=text + reasoning)  # fmt: skip
    assert Turn.objects.get().credits_charged == call.cost


# --- through a turn: Stop while the model thinks ------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_turn_stopped_while_the_model_thinks_is_billed_the_reasoning_that_came(
    streamed, owner_stops_at, owner_client, session, funded_owner, fake_openai, fake_anthropic, provider
):
    server = fake_openai if provider == "openai" else fake_anthropic
    price = class_price(provider)
    server.script(Reply(text=ANSWER, reasoning=REASONING, **CLASSES))
    asked = owner_stops_at(3)  # the third reasoning piece: no text has come

    body = post_turn(owner_client, session, "Why is the sky blue?", model_alias="classes").data
    assert len(asked) == 3 and not [event for event, _ in streamed if event == "delta"]
    turn = Turn.objects.get()
    assert (turn.status, turn.error) == ("cancelled", "")
    call = LLMCall.objects.get()
    assert call.status == "partial" and call.error == STOPPED_BY_OWNER
    # What came: three pieces of reasoning (the one that came with the Stop included).
    thought = count_text(REASONING[:12], price.counting)
    assert (call.reasoning_tokens, call.output_tokens) == (thought, thought)
    if provider == "anthropic":
        # message_start had reported the input, in its classes, and one output token.
        assert call.usage_reported is True
        assert (call.input_tokens, call.cached_input_tokens, call.cache_write_tokens) == (2000, 1500, 100)
    else:
        # OpenAI reports usage last: the input is the count the hold reserved.
        assert call.usage_reported is False and call.input_tokens > 0
        assert call.cached_input_tokens == call.cache_write_tokens == 0
    cost = class_cost(input_tokens=call.input_tokens, cached_input_tokens=call.cached_input_tokens,
                      cache_write_tokens=call.cache_write_tokens, output_tokens=thought)  # fmt: skip
    assert call.cost == cost and turn.credits_charged == cost and body["credits_charged"] == f"{cost:.8f}"
    assert wallet_of(funded_owner).balance == START_BALANCE - cost
    assert CreditTransaction.objects.filter(kind="debit").count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_turn_stopped_while_thinking_is_billed_the_reasoning_the_server_reported(
    streamed, owner_stops_at, owner_client, session, funded_owner, fake_openai
):
    """A server reporting usage as it goes counted more reasoning than the text that
    came holds (the model thinks in more tokens than it shows): its count is billed."""
    class_price("openai")
    reasoning = "x" * 80  # 20 pieces over which the server counts 900 reasoning tokens
    fake_openai.script(Reply(text=ANSWER, reasoning=reasoning, continuous_usage=True,
                             **{**CLASSES, "reasoning_tokens": 900, "output_tokens": 1000}))  # fmt: skip
    owner_stops_at(3)

    post_turn(owner_client, session, "Why is the sky blue?", model_alias="classes")
    turn, call = Turn.objects.get(), LLMCall.objects.get()
    assert turn.status == "cancelled" and call.status == "partial"
    reported = math.ceil(900 * 3 / 20)  # at the third piece; the text of it counts 12
    assert reported > count_text("x" * 12, "bytes")
    assert call.usage_reported is True
    assert classes_of(call) == {"input_tokens": 2000, "cached_input_tokens": 1500, "cache_write_tokens": 100,
                                "output_tokens": reported, "reasoning_tokens": reported}  # fmt: skip
    cost = class_cost(input_tokens=2000, cached_input_tokens=1500, cache_write_tokens=100, output_tokens=reported)
    assert call.cost == cost and turn.credits_charged == cost
    assert wallet_of(funded_owner).balance == START_BALANCE - cost


@pytest.mark.worker
@pytest.mark.postgres
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_the_owners_stop_on_a_worker_while_the_model_thinks_bills_the_reasoning_that_came(
    provider, worker_with_env, fake_openai, fake_anthropic, session, funded_owner
):
    """The real Stop: POST turns/{id}/cancel reaches the worker's lease through Redis
    while the model is still thinking; the stream ends at the next reasoning piece."""
    server = fake_openai if provider == "openai" else fake_anthropic
    worker_with_env(
        OPENAI_BASE_URL=fake_openai.base_url, OPENAI_API_KEY="sk-test",
        ANTHROPIC_BASE_URL=fake_anthropic.base_url, ANTHROPIC_API_KEY="sk-ant-test",
    )  # fmt: skip
    price = class_price(provider)
    reasoning = "hmm " * 400  # 400 pieces 0.05 s apart: 20 s of thinking before any text
    server.script(Reply(text=ANSWER, reasoning=reasoning, chunk_delay=0.05, **CLASSES))
    client = client_for(funded_owner)
    turn_id = post_turn(client, session, "Why is the sky blue?", model_alias="classes").data["id"]
    wait_for(lambda: bool(server.requests), timeout=30)  # the model is thinking
    time.sleep(0.5)
    stopped_at = time.monotonic()
    assert client.post(f"/api/v1/turns/{turn_id}/cancel").status_code == 202
    wait_for(lambda: turn_status(turn_id) not in ("queued", "running"), timeout=30)
    assert time.monotonic() - stopped_at < 10  # at the next piece, not after the thinking

    turn, call = Turn.objects.get(pk=turn_id), LLMCall.objects.get(turn_id=turn_id)
    assert (turn.status, call.status) == ("cancelled", "partial")
    assert not Message.objects.filter(turn_id=turn_id, role="assistant").exclude(content="").exists()
    # Billed at least the reasoning that came (some pieces of it, not all).
    assert 0 < call.reasoning_tokens == call.output_tokens < count_text(reasoning, price.counting)
    if provider == "anthropic":
        assert (call.input_tokens, call.cached_input_tokens, call.cache_write_tokens) == (2000, 1500, 100)
    cost = class_cost(input_tokens=call.input_tokens, cached_input_tokens=call.cached_input_tokens,
                      cache_write_tokens=call.cache_write_tokens, output_tokens=call.output_tokens)  # fmt: skip
    assert call.cost == cost and turn.credits_charged == cost
    assert wallet_of(funded_owner).balance == START_BALANCE - cost
