"""The provider layer through the real `openai` and `anthropic` SDKs against the
fake servers on 127.0.0.1, and the offline `local` provider."""

import json

import pytest

from billing.models import ModelPrice
from chat.engine.metering import metered_usage
from chat.llm import (
    STOPPED_BY_OWNER,
    ChatMessage,
    ProviderError,
    StopRequested,
    ToolCallRequest,
    provider_for,
)
from chat.llm.counting import count_prompt
from tests.fakes.llm_servers import CutStream, Error, Reply, Stall, ToolUse

TOOLS = [
    {
        "name": "web_search",
        "description": "Search the web.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    }
]
CONVERSATION = [
    ChatMessage(role="system", content="Be brief."),
    ChatMessage(role="user", content="Find parley."),
    ChatMessage(
        role="assistant",
        content="",
        tool_calls=(ToolCallRequest(id="call_9", name="web_search", arguments={"query": "parley"}),),
    ),  # fmt: skip
    ChatMessage(role="tool", content="Parley is a chat service.", tool_call_id="call_9", name="web_search"),
]


def metered(result, *, counted_input: int) -> tuple[int, int]:  # noqa: ANN001
    """(input, output) tokens the metering bills for `result` on a `bytes` price."""
    price = ModelPrice(alias="t", counting="bytes")
    usage = metered_usage(price=price, result=result, counted_input=counted_input, output_limit=16)
    return usage.input_tokens, usage.output_tokens


def collect() -> tuple[list[str], callable]:
    pieces: list[str] = []
    return pieces, pieces.append


# --- local ---------------------------------------------------------------------------


def test_local_provider_echoes_and_counts_usage_from_text_length(settings):
    settings.LOCAL_LLM_LATENCY_MS = 0
    pieces, on_delta = collect()
    result = provider_for("local").complete(
        model="echo", messages=[ChatMessage(role="user", content="Hello there, model, how are you")], max_output_tokens=100,
        on_delta=on_delta,
    )  # fmt: skip
    assert result.text == "Echo: Hello there, model, how are you"
    assert pieces == ["Echo: Hello there, model, ", "how are you"]
    # 4 tokens of message overhead + ceil(31 / 4); output ceil(37 / 4).
    assert (result.input_tokens, result.output_tokens) == (4 + 8, 10)
    assert result.finish_reason == "stop" and result.tool_calls == ()


def test_local_provider_streams_as_many_words_a_piece_as_set(settings):
    settings.LOCAL_LLM_PIECE_WORDS = 1
    pieces, on_delta = collect()
    result = provider_for("local").complete(
        model="echo", messages=[ChatMessage(role="user", content="one two three")], max_output_tokens=100,
        on_delta=on_delta,
    )  # fmt: skip
    assert pieces == ["Echo: ", "one ", "two ", "three"] and "".join(pieces) == result.text


def test_local_provider_stops_at_max_output_tokens():
    result = provider_for("local").complete(
        model="echo", messages=[ChatMessage(role="user", content="x" * 400)], max_output_tokens=10
    )
    assert len(result.text) == 40 and result.output_tokens == 10 and result.finish_reason == "length"


def test_local_provider_asks_for_an_offered_tool_in_the_machine_format():
    asked = [ChatMessage(role="user", content='look [[tool web_search {"query": "parley"}]] please')]
    result = provider_for("local").complete(model="echo", messages=asked, max_output_tokens=50, tools=TOOLS)
    assert result.finish_reason == "tool_calls" and result.text == ""
    assert [(c.name, c.arguments) for c in result.tool_calls] == [("web_search", {"query": "parley"})]

    not_offered = provider_for("local").complete(model="echo", messages=asked, max_output_tokens=50)
    assert not_offered.tool_calls == () and not_offered.text.startswith("Echo: look")

    answered = provider_for("local").complete(model="echo", messages=CONVERSATION, max_output_tokens=50, tools=TOOLS)
    assert answered.text == "Tool web_search returned: Parley is a chat service."


def test_local_provider_latency_is_simulated(settings):
    import time

    settings.LOCAL_LLM_LATENCY_MS = 300
    started = time.monotonic()
    provider_for("local").complete(model="echo", messages=[ChatMessage(role="user", content="hi")], max_output_tokens=5)
    assert time.monotonic() - started >= 0.3


# --- openai -------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streaming"])
def test_openai_reply_and_usage(fake_openai, stream):
    fake_openai.script(Reply(text="Hi from OpenAI.", input_tokens=123, output_tokens=45))
    pieces, on_delta = collect()
    result = provider_for("openai").complete(
        model="gpt-test", messages=CONVERSATION[:2], max_output_tokens=64, on_delta=on_delta if stream else None
    )
    assert result.text == "Hi from OpenAI."
    assert (result.input_tokens, result.output_tokens, result.usage_reported) == (123, 45, True)
    assert result.finish_reason == "stop"
    sent = fake_openai.requests[-1]
    assert sent.headers["authorization"] == "Bearer sk-test-openai"
    assert sent.body["model"] == "gpt-test" and sent.body["max_tokens"] == 64
    assert sent.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Find parley."},
    ]
    if stream:
        assert sent.body["stream"] is True and sent.body["stream_options"] == {"include_usage": True}
        assert "".join(pieces) == "Hi from OpenAI." and len(pieces) == 4
    else:
        assert "stream" not in sent.body and pieces == []


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streaming"])
def test_openai_tool_calls_and_tool_results(fake_openai, stream):
    fake_openai.script(
        Reply(text="", tool_calls=[ToolUse("web_search", {"query": "django ledger"}, id="call_a"),
                                   ToolUse("web_search", {"query": "celery acks"}, id="call_b")])
    )  # fmt: skip
    result = provider_for("openai").complete(
        model="gpt-test", messages=CONVERSATION, max_output_tokens=64, tools=TOOLS,
        on_delta=collect()[1] if stream else None,
    )  # fmt: skip
    assert result.finish_reason == "tool_calls"
    assert [(c.id, c.name, c.arguments) for c in result.tool_calls] == [
        ("call_a", "web_search", {"query": "django ledger"}),
        ("call_b", "web_search", {"query": "celery acks"}),
    ]
    body = fake_openai.requests[-1].body
    assert body["tools"] == [{"type": "function", "function": TOOLS[0]}]
    assert body["messages"][2] == {
        "role": "assistant", "content": None,
        "tool_calls": [{"id": "call_9", "type": "function",
                        "function": {"name": "web_search", "arguments": json.dumps({"query": "parley"})}}],
    }  # fmt: skip
    assert body["messages"][3] == {"role": "tool", "tool_call_id": "call_9", "content": "Parley is a chat service."}


def test_openai_retries_a_429_then_succeeds(fake_openai):
    fake_openai.script(Error(429, "slow down"), Reply(text="Second time lucky.", input_tokens=5, output_tokens=4))
    result = provider_for("openai").complete(model="gpt-test", messages=CONVERSATION[:2], max_output_tokens=16)
    assert result.text == "Second time lucky." and result.input_tokens == 5
    assert len(fake_openai.requests) == 2


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streaming"])
def test_openai_500_for_good_is_a_readable_error_after_bounded_retries(fake_openai, settings, stream):
    settings.LLM_MAX_RETRIES = 2
    fake_openai.script(*[Error(500, "upstream exploded")] * 5)
    with pytest.raises(ProviderError) as failure:
        provider_for("openai").complete(
            model="gpt-test", messages=CONVERSATION[:2], max_output_tokens=16, on_delta=collect()[1] if stream else None
        )
    assert len(fake_openai.requests) == 3  # the first try and LLM_MAX_RETRIES more
    assert failure.value.message == (
        "The openai provider answered HTTP 500 (up to 3 attempts): it had an internal error; try again later."
    )
    assert "upstream exploded" not in failure.value.message  # the provider's own words go to the log only


def test_openai_retries_are_backed_off(fake_openai, settings):
    import time

    settings.LLM_MAX_RETRIES = 1
    fake_openai.script(Error(503, "busy", headers={}), Reply(text="ok"))
    started = time.monotonic()
    provider_for("openai").complete(model="gpt-test", messages=CONVERSATION[:2], max_output_tokens=16)
    # The SDK's exponential backoff starts at 0.5 s, less up to 25 % jitter.
    assert time.monotonic() - started >= 0.37
    assert len(fake_openai.requests) == 2


def test_openai_a_stalled_server_times_out(fake_openai, settings):
    settings.LLM_TIMEOUT_SECONDS = 0.3
    settings.LLM_MAX_RETRIES = 1
    fake_openai.script(Stall(3.0), Stall(3.0))
    with pytest.raises(ProviderError) as failure:
        provider_for("openai").complete(model="gpt-test", messages=CONVERSATION[:2], max_output_tokens=16)
    assert failure.value.message == "The openai provider did not answer within 0.3 s (up to 2 attempts)."
    assert len(fake_openai.requests) == 2


def test_openai_a_stream_cut_after_output_is_a_partial_reply_billed_by_its_text(fake_openai):
    fake_openai.script(CutStream("half a rep"))
    pieces, on_delta = collect()
    result = provider_for("openai").complete(
        model="gpt-test", messages=CONVERSATION[:2], max_output_tokens=16, on_delta=on_delta
    )
    assert "".join(pieces) == result.text == "half a rep"
    assert "stream ended before the reply was complete" in result.partial
    # No usage came (OpenAI sends it last): the metering counts as the hold counts.
    assert (result.input_tokens, result.output_tokens, result.usage_reported) == (0, 0, False)
    assert not result.tool_calls
    assert metered(result, counted_input=40) == (40, len("half a rep"))


def test_openai_a_stream_cut_before_any_output_is_an_error(fake_openai):
    fake_openai.script(CutStream(""))
    with pytest.raises(ProviderError, match="stream ended before the reply was complete"):
        provider_for("openai").complete(
            model="gpt-test", messages=CONVERSATION[:2], max_output_tokens=16, on_delta=collect()[1]
        )


def test_openai_stop_requested_ends_the_stream_with_what_came(fake_openai):
    fake_openai.script(Reply(text="one two three four five six", chunk_chars=4))
    pieces: list[str] = []

    def on_delta(text: str) -> None:
        if len(pieces) == 2:
            raise StopRequested
        pieces.append(text)

    result = provider_for("openai").complete(
        model="gpt-test", messages=CONVERSATION[:2], max_output_tokens=16, on_delta=on_delta
    )
    assert result.partial == STOPPED_BY_OWNER
    assert result.text == "one two thre"  # the piece that arrived with the Stop is kept
    assert (result.output_tokens, result.usage_reported) == (0, False)
    assert metered(result, counted_input=40) == (40, len("one two thre"))


def test_openai_server_without_usage_is_still_metered_by_its_count(fake_openai):
    fake_openai.script(Reply(text="12345678", include_usage=False))
    messages = [ChatMessage(role="user", content="abcd")]
    result = provider_for("openai").complete(
        model="gpt-test", messages=messages, max_output_tokens=16, on_delta=collect()[1]
    )
    assert (result.input_tokens, result.output_tokens, result.usage_reported) == (0, 0, False)
    # Billed on the count of the price's rule (bytes): the prompt framed, the reply's bytes.
    assert metered(result, counted_input=count_prompt(messages, "bytes")) == (8 + 8 + 4, 8)


# --- anthropic ----------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streaming"])
def test_anthropic_reply_and_usage(fake_anthropic, stream):
    fake_anthropic.script(Reply(text="Hi from Claude.", input_tokens=321, output_tokens=54))
    pieces, on_delta = collect()
    result = provider_for("anthropic").complete(
        model="claude-test", messages=CONVERSATION[:2], max_output_tokens=64, on_delta=on_delta if stream else None
    )
    assert result.text == "Hi from Claude."
    assert (result.input_tokens, result.output_tokens) == (321, 54)
    sent = fake_anthropic.requests[-1]
    assert sent.path == "/v1/messages"
    assert "sk-ant-test" in (sent.headers.get("x-api-key", "") + sent.headers.get("authorization", ""))
    assert sent.body["system"] == "Be brief." and sent.body["max_tokens"] == 64
    assert sent.body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Find parley."}]}]
    assert ("".join(pieces), bool(sent.body.get("stream"))) == (("Hi from Claude.", True) if stream else ("", False))


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streaming"])
def test_anthropic_tool_use_and_tool_results(fake_anthropic, stream):
    fake_anthropic.script(
        Reply(text="Let me look.", tool_calls=[ToolUse("web_search", {"query": "hordak"}, id="toolu_x")])
    )
    result = provider_for("anthropic").complete(
        model="claude-test", messages=CONVERSATION, max_output_tokens=64, tools=TOOLS,
        on_delta=collect()[1] if stream else None,
    )  # fmt: skip
    assert result.text == "Let me look." and result.finish_reason == "tool_calls"
    assert [(c.id, c.name, c.arguments) for c in result.tool_calls] == [("toolu_x", "web_search", {"query": "hordak"})]
    body = fake_anthropic.requests[-1].body
    assert body["tools"] == [
        {"name": "web_search", "description": "Search the web.", "input_schema": TOOLS[0]["parameters"]}
    ]
    assert body["messages"][1:] == [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "call_9", "name": "web_search",
                                           "input": {"query": "parley"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_9",
                                      "content": "Parley is a chat service."}]},
    ]  # fmt: skip


def test_anthropic_retries_a_429_then_succeeds(fake_anthropic):
    fake_anthropic.script(Error(429, "rate limited"), Reply(text="Fine now.", input_tokens=9, output_tokens=3))
    result = provider_for("anthropic").complete(
        model="claude-test", messages=CONVERSATION[:2], max_output_tokens=16, on_delta=collect()[1]
    )
    assert (result.text, result.input_tokens, result.output_tokens) == ("Fine now.", 9, 3)
    assert len(fake_anthropic.requests) == 2


def test_anthropic_overloaded_for_good_is_a_readable_error(fake_anthropic, settings):
    settings.LLM_MAX_RETRIES = 1
    fake_anthropic.script(*[Error(529, "Overloaded")] * 3)
    with pytest.raises(ProviderError) as failure:
        provider_for("anthropic").complete(model="claude-test", messages=CONVERSATION[:2], max_output_tokens=16)
    assert len(fake_anthropic.requests) == 2
    assert failure.value.message.startswith("The anthropic provider answered HTTP 529 (up to 2 attempts)")
    assert failure.value.message.endswith("it is overloaded; try again later.")


def test_anthropic_a_stream_cut_after_output_is_billed_at_the_usage_so_far(fake_anthropic):
    fake_anthropic.script(CutStream("partial reply here"))
    result = provider_for("anthropic").complete(
        model="claude-test", messages=CONVERSATION[:2], max_output_tokens=16, on_delta=collect()[1]
    )
    assert result.text == "partial reply here"
    assert "stream ended before the reply was complete" in result.partial
    # message_start reported the input (11) and 1 output token: the text counts more.
    assert (result.input_tokens, result.output_tokens, result.usage_reported) == (11, 1, True)
    # 18 bytes counted, but the call asked for at most 16 tokens: the provider stopped
    # there, so the count is capped at the limit (what its hold reserved).
    assert metered(result, counted_input=40) == (11, 16)


def test_anthropic_stop_requested_ends_the_stream_with_what_came(fake_anthropic):
    fake_anthropic.script(Reply(text="abcdefghijkl", chunk_chars=4))

    def on_delta(text: str) -> None:
        if text == "efgh":
            raise StopRequested

    result = provider_for("anthropic").complete(
        model="claude-test", messages=CONVERSATION[:2], max_output_tokens=16, on_delta=on_delta
    )
    assert (result.partial, result.text, result.input_tokens, result.output_tokens) == (
        STOPPED_BY_OWNER,
        "abcdefgh",
        11,
        1,
    )
    assert metered(result, counted_input=40) == (11, 8)


def test_unknown_provider_is_a_provider_error():
    with pytest.raises(ProviderError, match="Unknown provider 'nope'"):
        provider_for("nope")


# What the provider says in an error body can carry a (masked) key, an account or
# organisation id, a request id or an internal host: none of it reaches the user.
LEAKY = (
    "Incorrect API key provided: sk-test-****************************ABCD. You can find your API key at "
    "https://platform.openai.com/account/api-keys. org-internal123 req_8f2a proxy at 10.0.3.7:8443"
)


@pytest.mark.parametrize(
    ("status", "meaning"),
    [
        (401, "refused this service's credentials; an operator must check its API key"),
        (403, "refused this service's credentials; an operator must check its API key"),
        (404, "does not know the model this alias points at; an operator must check the alias"),
        (400, "refused the request"),
        (429, "is rate limiting this service or its quota is used up; try again later"),
        (503, "had an internal error; try again later"),
    ],
)
def test_a_provider_error_shown_to_users_carries_no_key_or_internal_detail(
    fake_openai, fake_anthropic, settings, caplog, status, meaning
):
    from tests.fakes.llm_servers import Error

    settings.LLM_MAX_RETRIES = 0
    for name, server in (("openai", fake_openai), ("anthropic", fake_anthropic)):
        server.script(Error(status, LEAKY, headers={}))
        with pytest.raises(ProviderError) as failure:
            provider_for(name).complete(model="m", messages=CONVERSATION[:2], max_output_tokens=16)
        message = failure.value.message
        assert message == f"The {name} provider answered HTTP {status} (up to 1 attempt): it {meaning}."
        for secret in ("sk-", "ABCD", "org-", "req_", "10.0.3.7", "api-keys"):
            assert secret not in message
    # The operator still learns what the provider said, without the key.
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "Incorrect API key provided" in logged and "10.0.3.7" in logged
    assert "sk-test-" not in logged


def test_an_unexpected_sdk_error_shows_only_its_kind(fake_openai, settings):
    import openai

    from chat.llm.errors import readable_error

    error = openai.APIError("internal detail at 10.0.3.7 with sk-test-abcdefgh", request=None, body=None)
    assert readable_error(error, provider="openai").message == (
        "The openai provider failed while answering (APIError)."
    )
