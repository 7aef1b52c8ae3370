"""/v1/chat/completions through the `openai` and `anthropic` providers, against the
fake model servers (tests/fakes): what the client sends reaches the model in each
provider's own shape (the openai provider passes it through, the anthropic provider
translates messages, tools, tool calls, stop sequences, tool choice and the user; it
has no sampling parameters to send), and the model's tool calls come back to the
client. The real SDK is the client."""

import json

import pytest

from billing.models import CreditTransaction
from chat.models import LLMCall, Turn
from tests.chat.conftest import expected_cost, make_price
from tests.fakes.llm_servers import Reply, ToolUse

pytestmark = pytest.mark.django_db(transaction=True)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    {"role": "user", "content": "And in Oslo?"},
]


def test_the_openai_provider_passes_the_request_through(sdk, fake_openai_server):
    make_price("gpt", provider="openai", provider_model="gpt-test", max_output_tokens=256)
    fake_openai_server.script(
        Reply(text="", tool_calls=[ToolUse("get_weather", {"city": "Oslo"}, id="call_2")], input_tokens=40,
              output_tokens=9)
    )  # fmt: skip

    answer = sdk.chat.completions.create(
        model="gpt", messages=CONVERSATION, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stop=["\n\n"], temperature=0.3, top_p=0.8, user="u-42", max_tokens=100,
    )  # fmt: skip

    sent = fake_openai_server.requests[-1].body
    assert sent["model"] == "gpt-test"
    assert sent["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "user", "content": "And in Oslo?"},
    ]  # fmt: skip
    assert sent["tools"] == [WEATHER]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert (sent["stop"], sent["temperature"], sent["top_p"], sent["user"]) == (["\n\n"], 0.3, 0.8, "u-42")
    assert sent.get("max_tokens", sent.get("max_completion_tokens")) == 100

    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls] == [
        ("call_2", "get_weather", {"city": "Oslo"})
    ]
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (40, 9)
    turn = Turn.objects.get()
    assert turn.credits_charged == expected_cost(40, 9)
    assert CreditTransaction.objects.get(kind="debit").amount == -expected_cost(40, 9)


def test_the_openai_provider_stops_where_the_model_stopped(sdk, fake_openai_server):
    make_price("gpt", provider="openai", provider_model="gpt-test")
    fake_openai_server.script(Reply(text="one two END three"))
    chunks = list(
        sdk.chat.completions.create(
            model="gpt", messages=[{"role": "user", "content": "count"}], stop="END", stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one two "
    assert chunks[-1].usage.prompt_tokens == 11 and chunks[-1].usage.completion_tokens == 7
    assert LLMCall.objects.get().finish_reason == "stop"


def test_the_anthropic_provider_translates_messages_tools_and_tool_calls(sdk, fake_anthropic_server):
    make_price("claude", provider="anthropic", provider_model="claude-test")
    fake_anthropic_server.script(
        Reply(text="Checking.", tool_calls=[ToolUse("get_weather", {"city": "Oslo"}, id="toolu_9")], input_tokens=50,
              output_tokens=12)
    )  # fmt: skip

    answer = sdk.chat.completions.create(
        model="claude", messages=CONVERSATION, tools=[WEATHER], tool_choice="required", stop=["###"],
        temperature=1.5, top_p=0.5, user="u-7", max_completion_tokens=64,
    )  # fmt: skip

    sent = fake_anthropic_server.requests[-1].body
    assert sent["system"] == "You are terse."
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
            {"type": "text", "text": "And in Oslo?"},
        ]},
    ]  # fmt: skip
    assert sent["tools"] == [
        {
            "name": "get_weather",
            "description": "The weather in a city.",
            "input_schema": WEATHER["function"]["parameters"],
        }
    ]
    assert sent["tool_choice"] == {"type": "any"}
    assert sent["stop_sequences"] == ["###"]
    assert "temperature" not in sent and "top_p" not in sent  # the Messages API has no sampling parameters
    assert sent["metadata"] == {"user_id": "u-7"} and sent["max_tokens"] == 64

    choice = answer.choices[0]
    assert choice.message.content == "Checking." and choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "toolu_9",
        "get_weather",
        {"city": "Oslo"},
    )
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (50, 12)
    assert Turn.objects.get().credits_charged == expected_cost(50, 12)


def test_the_anthropic_provider_names_a_tool_choice_and_honours_stop(sdk, fake_anthropic_server):
    make_price("claude", provider="anthropic", provider_model="claude-test")
    fake_anthropic_server.script(Reply(text="alpha ### beta"))
    answer = sdk.chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "go"}], tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, stop="###",
    )  # fmt: skip
    assert fake_anthropic_server.requests[-1].body["tool_choice"] == {"type": "tool", "name": "get_weather"}
    assert answer.choices[0].message.content == "alpha " and answer.choices[0].finish_reason == "stop"


def test_a_provider_failure_is_a_502_the_sdk_does_not_retry(base_url, raw_key, fake_openai_server):
    import openai

    from tests.fakes.llm_servers import Error

    make_price("gpt", provider="openai", provider_model="gpt-test")
    fake_openai_server.script(Error(500))
    client = openai.OpenAI(base_url=base_url, api_key=raw_key)  # the SDK's default retries
    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "hi"}])
    assert failed.value.status_code == 502 and failed.value.code == "upstream_error"
    assert Turn.objects.get().status == "failed"  # one turn: the SDK did not retry it
    assert not CreditTransaction.objects.filter(kind="debit").exists()
