"""An OpenAI-compatible client library no one here wrote, langchain-openai (pinned,
test-only), against /v1: invoke, stream with usage, and a tool round trip with
bind_tools and a ToolMessage."""

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from billing.models import CreditTransaction
from chat.models import Turn

pytestmark = pytest.mark.django_db(transaction=True)


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


@pytest.fixture
def chat(base_url: str, raw_key: str) -> ChatOpenAI:
    return ChatOpenAI(model="fast", base_url=base_url, api_key=raw_key, max_retries=0, timeout=30)


def test_langchain_invokes_and_the_turn_is_charged(chat, fast):
    answer = chat.invoke([SystemMessage("Be brief."), HumanMessage("Bonjour")])
    assert answer.content == "Echo: Bonjour"
    assert answer.usage_metadata["output_tokens"] == 4  # "Echo: Bonjour": 13 characters
    turn = Turn.objects.get()
    assert answer.response_metadata["finish_reason"] == "stop"
    assert CreditTransaction.objects.get(kind="debit").reference == str(turn.pk)


def test_langchain_streams_with_usage(base_url, raw_key, fast):
    chat = ChatOpenAI(model="fast", base_url=base_url, api_key=raw_key, max_retries=0, stream_usage=True)
    pieces = list(chat.stream("stream through langchain"))
    assert "".join(piece.content for piece in pieces) == "Echo: stream through langchain"
    total = pieces[0]
    for piece in pieces[1:]:
        total += piece
    assert total.usage_metadata["total_tokens"] > 0


def test_langchain_tool_round_trip(chat, fast):
    bound = chat.bind_tools([get_weather])
    question = HumanMessage('[[tool get_weather {"city": "Lyon"}]]')
    asked = bound.invoke([question])
    assert isinstance(asked, AIMessage)
    (call,) = asked.tool_calls
    assert (call["name"], call["args"]) == ("get_weather", {"city": "Lyon"})

    result = ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])
    final = bound.invoke([question, asked, result])
    assert final.content == "Tool get_weather returned: sunny in Lyon"
    assert Turn.objects.filter(status="completed").count() == 2
