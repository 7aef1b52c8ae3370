"""The real `openai` SDK against Parley's /v1 on a live server: on the embedded
default (SQLite, eager tasks, the local model) and, in the PostgreSQL run, on
PostgreSQL. Each request is a turn: held, charged once (reference = turn id),
metered, in the transactions, the usage and GET turns/{id}."""

import asyncio
import json
from decimal import Decimal

import openai
import pytest

from billing.models import CreditHold, CreditTransaction, Wallet
from chat.models import ChatSession, LLMCall, Message, Turn
from tests.chat.conftest import expected_cost, local_tokens
from tests.openai_api.conftest import START_BALANCE

pytestmark = pytest.mark.django_db(transaction=True)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def prompt_tokens(*messages: tuple[str, str]) -> int:
    """The local provider's count: 4 tokens a message plus its text at 4 characters a token."""
    return sum(4 + local_tokens(text) for _, text in messages)


def test_models_lists_the_active_aliases(sdk, fast):
    listed = sdk.models.list()
    assert [(m.id, m.object, m.owned_by) for m in listed.data] == [("fast", "model", "parley")]
    assert listed.data[0].created == int(fast.created_at.timestamp())


def test_a_plain_completion_is_one_turn_charged_once(sdk, fast, owner):
    raw = sdk.chat.completions.with_raw_response.create(
        model="fast", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    )
    completion = raw.parse()

    assert completion.object == "chat.completion" and completion.model == "fast"
    choice = completion.choices[0]
    assert (choice.message.role, choice.message.content, choice.finish_reason) == (
        "assistant",
        "Echo: Hello there",
        "stop",
    )
    prompt = prompt_tokens(("system", "Be brief."), ("user", "Hello there"))
    assert completion.usage.prompt_tokens == prompt
    assert completion.usage.completion_tokens == local_tokens("Echo: Hello there")
    assert completion.usage.total_tokens == prompt + local_tokens("Echo: Hello there")

    turn = Turn.objects.get(pk=raw.headers["X-Parley-Turn"])
    cost = expected_cost(prompt, local_tokens("Echo: Hello there"))
    assert completion.id == f"chatcmpl-{turn.pk.hex}"
    assert raw.headers["X-Parley-Credits-Charged"] == f"{cost:.8f}"
    assert turn.status == "completed" and turn.credits_charged == cost
    assert turn.session.source == ChatSession.Source.OPENAI and turn.session.api_key.user == owner
    debit = CreditTransaction.objects.get(kind="debit")
    assert debit.reference == str(turn.pk) and debit.amount == -cost
    assert Wallet.objects.get(user=owner).balance == START_BALANCE - cost
    assert not CreditHold.objects.filter(status=CreditHold.Status.ACTIVE).exists()
    assert list(Message.objects.filter(turn=turn).values_list("role", "content")) == [
        ("system", "Be brief."), ("user", "Hello there"), ("assistant", "Echo: Hello there"),
    ]  # fmt: skip
    call = LLMCall.objects.get(turn=turn)
    assert (call.input_tokens, call.output_tokens, call.finish_reason) == (prompt, 4 + 1, "stop")


def test_a_second_request_goes_to_the_same_session_and_reads_no_history(sdk, fast):
    sdk.chat.completions.create(model="fast", messages=[{"role": "user", "content": "first question"}])
    second = sdk.chat.completions.create(model="fast", messages=[{"role": "user", "content": "second"}])

    assert second.choices[0].message.content == "Echo: second"
    assert second.usage.prompt_tokens == prompt_tokens(("user", "second"))  # nothing of the first turn
    assert ChatSession.objects.filter(source="openai").count() == 1
    assert Turn.objects.count() == 2


def test_a_stream_sends_chunks_then_the_usage_chunk_last(sdk, fast, owner):
    stream = sdk.chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "stream this answer please"}], stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)

    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: stream this answer please"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(chunk.usage is None for chunk in chunks[:-1])
    turn = Turn.objects.get()
    assert chunks[-1].usage.completion_tokens == local_tokens(text)
    assert len({chunk.id for chunk in chunks}) == 1 and chunks[0].id == f"chatcmpl-{turn.pk.hex}"
    assert CreditTransaction.objects.get(kind="debit").reference == str(turn.pk)


def test_a_stream_without_include_usage_has_no_usage_chunk(sdk, fast):
    chunks = list(sdk.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert all(chunk.usage is None for chunk in chunks) and chunks[-1].choices[0].finish_reason == "stop"


def test_tools_round_trip_with_a_tool_message(sdk, fast):
    asked = [{"role": "user", "content": 'Weather? [[tool get_weather {"city": "Paris"}]]'}]
    first = sdk.chat.completions.create(model="fast", messages=asked, tools=[WEATHER])

    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert (call.type, call.function.name, json.loads(call.function.arguments)) == (
        "function", "get_weather", {"city": "Paris"},
    )  # fmt: skip

    # The client runs its own function and sends the result back.
    followup = [
        *asked,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
    ]
    second = sdk.chat.completions.create(model="fast", messages=followup, tools=[WEATHER])

    assert second.choices[0].message.content == "Tool get_weather returned: sunny, 21 C"
    assert second.choices[0].finish_reason == "stop"
    assert Turn.objects.filter(status="completed").count() == 2
    # Parley ran nothing itself: no tool call rows, and the client's messages are stored as sent.
    turn = Turn.objects.order_by("created_at").last()
    stored = list(Message.objects.filter(turn=turn).values_list("role", "tool_call_id"))
    assert stored == [("user", ""), ("assistant", ""), ("tool", call.id), ("assistant", "")]
    assert not turn.tool_calls.exists()


def test_a_streamed_tool_call_arrives_as_tool_call_chunks(sdk, fast):
    chunks = list(
        sdk.chat.completions.create(
            model="fast", messages=[{"role": "user", "content": '[[tool get_weather {"city": "Oslo"}]]'}],
            tools=[WEATHER], stream=True,
        )
    )  # fmt: skip
    calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or ()]
    assert [(c.index, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        (0, "get_weather", {"city": "Oslo"})
    ]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_choice_none_and_stop_reach_the_model(sdk, fast):
    answer = sdk.chat.completions.create(
        model="fast", messages=[{"role": "user", "content": '[[tool get_weather {"city": "Rome"}]] then STOP here'}],
        tools=[WEATHER], tool_choice="none", stop=["STOP"], temperature=0.2, top_p=0.9, user="end-user-1",
        max_tokens=50,
    )  # fmt: skip
    assert answer.choices[0].message.tool_calls is None
    assert answer.choices[0].message.content == 'Echo: [[tool get_weather {"city": "Rome"}]] then '
    options = Turn.objects.get().completion_options
    assert options["stop"] == ["STOP"] and options["temperature"] == 0.2 and options["top_p"] == 0.9
    assert options["user"] == "end-user-1" and options["max_tokens"] == 50


def test_max_tokens_bounds_the_hold_and_the_reply(sdk, fast, owner):
    answer = sdk.chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "x" * 80}], max_completion_tokens=3
    )
    assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == 3
    turn = Turn.objects.get()
    hold = CreditHold.objects.get(reference=str(turn.pk))
    # The hold counts by the price's rule (bytes): reply framing 8, the message 8 + 80.
    assert hold.amount == expected_cost(8 + 8 + 80, 3)


def test_errors_are_the_sdks_own_exception_classes(base_url, sdk, fast, settings):
    with pytest.raises(openai.AuthenticationError) as unauthorised:
        openai.OpenAI(base_url=base_url, api_key="pk_wrong", max_retries=0).models.list()
    assert unauthorised.value.code == "invalid_api_key" and unauthorised.value.status_code == 401

    with pytest.raises(openai.NotFoundError) as unknown:
        sdk.chat.completions.create(model="gpt-nope", messages=[{"role": "user", "content": "hi"}])
    assert unknown.value.code == "model_not_found" and unknown.value.param == "model"

    with pytest.raises(openai.BadRequestError) as two:
        sdk.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi"}], n=2)
    assert two.value.param == "n" and two.value.type == "invalid_request_error"

    with pytest.raises(openai.BadRequestError) as orphan:
        sdk.chat.completions.create(
            model="fast", messages=[{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"}]
        )
    assert orphan.value.param == "messages[1].tool_call_id"

    settings.BILLING_ENFORCEMENT = "block"
    Wallet.objects.all().update(balance=Decimal("0"))
    with pytest.raises(openai.RateLimitError) as broke:
        sdk.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi"}])
    assert broke.value.code == "insufficient_quota" and broke.value.type == "insufficient_quota"
    assert not Turn.objects.exists()  # nothing was written for the refused requests


def test_the_async_client_plain_and_streaming(async_sdk, fast):
    async def scenario() -> tuple:
        plain = await async_sdk.chat.completions.create(model="fast", messages=[{"role": "user", "content": "async"}])
        stream = await async_sdk.chat.completions.create(
            model="fast", messages=[{"role": "user", "content": "async stream"}], stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = [chunk async for chunk in stream]
        await async_sdk.close()
        return plain, chunks

    plain, chunks = asyncio.run(scenario())
    assert plain.choices[0].message.content == "Echo: async"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: async stream"
    assert chunks[-1].usage.total_tokens > 0
    assert Turn.objects.filter(status="completed").count() == 2
    assert CreditTransaction.objects.filter(kind="debit").count() == 2


def test_any_accept_header_gets_the_answer(base_url, raw_key, fast):
    from tests.openai_api.conftest import raw_post

    for accept in ("text/event-stream", "text/html", "*/*"):
        body = {"model": "fast", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        answer = raw_post(base_url, raw_key, body, accept=accept)
        assert answer.status_code == 200 and answer.text.rstrip().endswith("data: [DONE]"), accept
