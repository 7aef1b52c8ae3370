"""A stream stopped before its usage came bills the tools it offered: real front ends
send dozens of tool definitions (Open WebUI 38, about 6,100 tokens) with every
message, and a client that reads most of an answer and leaves pays for them."""

import pytest

from accounts.services import api_key_create
from billing.models import CreditTransaction
from billing.services import model_price_set
from chat.llm import STOPPED_BY_OWNER, ChatMessage
from chat.llm.counting import count_prompt, count_text
from chat.models import LLMCall, Turn
from chat.services.completions import CompletionRequest, completion_turn_create
from tests.chat.conftest import calls_stream
from tests.fakes.llm_servers import Reply

pytestmark = pytest.mark.django_db(transaction=True)

TOOLS = [
    {
        "name": f"tool_{n}",
        "description": "Looks something up for the user and returns what it found, briefly and exactly.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    }
    for n in range(20)
]


@pytest.mark.parametrize("rule", ["bytes", "o200k_base"])
def test_a_stopped_stream_with_twenty_tools_bills_its_tools(rule, monkeypatch, owner_stops_at, funded_owner,
                                                             fake_openai_server):  # fmt: skip
    calls_stream(monkeypatch)
    price = model_price_set(
        alias="tools", provider="openai", provider_model="model", input_credits_per_mtok="3",
        output_credits_per_mtok="15", counting=rule,
    )  # fmt: skip
    api_key, _ = api_key_create(user=funded_owner, name="client")
    fake_openai_server.script(Reply(text="The answer comes in many small pieces. " * 4, chunk_chars=8))
    owner_stops_at(4)  # the client leaves after three pieces: no usage has come
    messages = [ChatMessage(role="user", content="What is the weather in Paris?")]

    request = CompletionRequest(price=price, messages=messages, tools=TOOLS)
    turn = completion_turn_create(user=funded_owner, api_key=api_key, request=request)

    turn = Turn.objects.get(pk=turn.pk)
    call = LLMCall.objects.get(turn=turn)
    assert (turn.status, call.status, call.error, call.usage_reported) == ("cancelled", "partial", STOPPED_BY_OWNER,
                                                                          False)  # fmt: skip
    # Billed the input as the hold counted it, the 20 tools included: not the message alone.
    assert call.input_tokens == count_prompt(messages, rule, TOOLS)
    assert call.input_tokens > 20 * count_text(TOOLS[0]["description"], rule)
    assert call.output_tokens == count_text("The answer comes in many small pieces. "[:32], rule)
    assert -CreditTransaction.objects.get(kind="debit").amount == turn.credits_charged == call.cost > 0
