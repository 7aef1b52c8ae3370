"""Fair use on /v1: past MAX_CONCURRENT_TURNS_PER_USER turns in flight, or
MAX_STREAMS_PER_USER open streams, the SDK gets a RateLimitError with code
`rate_limit_exceeded` and a Retry-After, and nothing is written."""

import openai
import pytest

from billing.models import CreditHold
from chat.models import ChatSession, Turn

pytestmark = pytest.mark.django_db(transaction=True)


def test_past_the_turns_in_flight_limit_the_sdk_gets_rate_limit_exceeded(sdk, fast, owner, settings):
    settings.MAX_CONCURRENT_TURNS_PER_USER = 1
    busy = ChatSession.objects.create(user=owner, model_alias="fast")
    Turn.objects.create(session=busy, user=owner, model_alias="fast", status=Turn.Status.RUNNING)

    with pytest.raises(openai.RateLimitError) as refused:
        sdk.chat.completions.create(model="fast", messages=[{"role": "user", "content": "one too many"}])

    assert refused.value.code == "rate_limit_exceeded" and refused.value.type == "requests"
    assert refused.value.response.headers["Retry-After"].isdigit()
    assert Turn.objects.count() == 1 and not CreditHold.objects.exists()


def test_past_the_open_streams_limit_a_stream_is_refused_before_any_turn(sdk, fast, settings):
    settings.MAX_STREAMS_PER_USER = 0
    with pytest.raises(openai.RateLimitError) as refused:
        sdk.chat.completions.create(model="fast", messages=[{"role": "user", "content": "stream"}], stream=True)
    assert refused.value.code == "rate_limit_exceeded"
    assert refused.value.response.headers["Retry-After"] == "5"
    assert not Turn.objects.exists()


def test_a_finished_stream_gives_its_slot_back(sdk, fast, settings):
    settings.MAX_STREAMS_PER_USER = 1
    for n in range(3):
        chunks = list(
            sdk.chat.completions.create(model="fast", messages=[{"role": "user", "content": f"s{n}"}], stream=True)
        )
        assert chunks[-1].choices[0].finish_reason == "stop"
