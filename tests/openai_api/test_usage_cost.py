"""/v1 reports what it charged: OpenAI's usage shape with its detail objects, plus
`cost` (the credits charged for the request, as OpenRouter reports it), on plain
answers and on a stream's final usage chunk, equal to X-Parley-Credits-Charged and
to the turn's debit, written as an exact JSON number."""

import json
import re
from decimal import Decimal

import pytest

from billing.models import CreditTransaction
from chat.models import Turn

pytestmark = pytest.mark.django_db(transaction=True)

COST = re.compile(r'"cost": ([0-9.]+)\}')


def test_a_plain_answer_reports_its_usage_classes_and_cost(sdk, fast):
    raw = sdk.chat.completions.with_raw_response.create(model="fast", messages=[{"role": "user", "content": "Hi"}])
    answer = raw.parse()
    charged = raw.headers["X-Parley-Credits-Charged"]
    debit = CreditTransaction.objects.get(kind="debit", reference=str(Turn.objects.get().pk))
    assert Decimal(charged) == -debit.amount > 0
    # Exact in the JSON text, not a float's rounding of it.
    assert Decimal(COST.search(raw.http_response.text).group(1)) == Decimal(charged)
    assert answer.usage.prompt_tokens_details.cached_tokens == 0
    assert answer.usage.completion_tokens_details.reasoning_tokens == 0
    assert answer.usage.cost == float(Decimal(charged))  # the SDK keeps the extra field


def test_a_streams_usage_chunk_reports_the_same(sdk, fast):
    with sdk.chat.completions.with_streaming_response.create(
        model="fast", messages=[{"role": "user", "content": "Hi"}], stream=True,
        stream_options={"include_usage": True},
    ) as response:  # fmt: skip
        lines = [line for line in response.iter_lines() if line.startswith("data: {")]
    usage_line = lines[-1]
    usage = json.loads(usage_line[len("data: ") :])["usage"]
    debit = CreditTransaction.objects.get(kind="debit", reference=str(Turn.objects.get().pk))
    assert Decimal(COST.search(usage_line).group(1)) == -debit.amount > 0
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 0}
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
