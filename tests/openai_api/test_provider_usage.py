"""/v1/chat/completions through the `openai` and `anthropic` providers when the model
reports usage in every token class (tests/chat/test_provider_usage.py has the
provider-level and turn-level cases): the request's turn stores each class and is
charged each at its own price, and the client's usage counts all input and output."""

import pytest

from billing.models import CreditTransaction
from chat.models import LLMCall, Turn
from tests.chat.test_provider_usage import ANSWER, CLASSES, REASONING, class_cost, class_price
from tests.fakes.llm_servers import Reply

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_completion_is_charged_each_token_class_at_its_price(
    sdk, fake_openai_server, fake_anthropic_server, provider
):
    server = fake_openai_server if provider == "openai" else fake_anthropic_server
    class_price(provider)
    server.script(Reply(text=ANSWER, reasoning=REASONING, **CLASSES))

    answer = sdk.chat.completions.create(model="classes", messages=[{"role": "user", "content": "Why blue?"}])

    assert answer.choices[0].message.content == ANSWER
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (2000, 300)
    call = LLMCall.objects.get()
    assert (call.input_tokens, call.cached_input_tokens, call.cache_write_tokens, call.output_tokens) == (
        2000, 1500, 100, 300,
    )  # fmt: skip
    cost = class_cost(**CLASSES)
    assert call.cost == cost and Turn.objects.get().credits_charged == cost
    assert CreditTransaction.objects.get(kind="debit").amount == -cost
