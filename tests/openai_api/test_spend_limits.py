"""Spend and rate limits on /v1 through the real `openai` SDK: a key's budget or the
account's cap is 429 `insufficient_quota` (as OpenAI answers an exhausted quota),
a key's rpm / tpm 429 `rate_limit_exceeded` with Retry-After; nothing is written."""

import time
from collections.abc import Iterator
from decimal import Decimal

import openai
import pytest

from accounts.services import api_key_create, user_spend_cap_set
from billing.models import CreditHold, CreditTransaction, SpendCounter
from billing.services import wallet_grant
from chat.models import Turn

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture
def limited_sdk(owner, base_url) -> Iterator:  # noqa: ANN001
    """Makes an SDK client on a new key of the owner's with the given limits."""
    wallet_grant(user=owner, amount=Decimal("100"), reason="test credits")
    clients = []

    def make(**limits) -> tuple[openai.OpenAI, object]:  # noqa: ANN003
        api_key, raw = api_key_create(user=owner, name="ci", **limits)
        client = openai.OpenAI(base_url=base_url, api_key=raw, max_retries=0, timeout=30)
        clients.append(client)
        return client, api_key

    yield make
    for client in clients:
        client.close()


def fresh_minute() -> None:
    if time.time() % 60 > 50:
        time.sleep(61 - time.time() % 60)


def test_past_the_key_budget_the_sdk_gets_insufficient_quota_naming_it(limited_sdk, fast):
    sdk, api_key = limited_sdk(budget_credits=Decimal("0.002"), budget_window="month")
    sdk.chat.completions.create(model="fast", messages=HELLO, max_tokens=100)  # worst case ~0.0008
    counter = SpendCounter.objects.get(api_key=api_key)
    charged = -CreditTransaction.objects.get(kind="debit").amount
    assert (counter.held, counter.spent) == (Decimal("0"), charged)

    with pytest.raises(openai.RateLimitError) as refused:
        sdk.chat.completions.create(model="fast", messages=HELLO)  # 256 output tokens: ~0.00201 alone

    assert (refused.value.code, refused.value.type) == ("insufficient_quota", "insufficient_quota")
    assert "API key 'ci' budget of 0.002 credits per month" in refused.value.message
    assert "resets at" in refused.value.message
    assert Turn.objects.count() == 1 and CreditHold.objects.count() == 1


def test_past_the_account_cap_the_sdk_gets_insufficient_quota(limited_sdk, fast, owner):
    user_spend_cap_set(user=owner, spend_cap_credits=Decimal("0"), spend_cap_window="day")
    sdk, _ = limited_sdk()
    with pytest.raises(openai.RateLimitError) as refused:
        sdk.chat.completions.create(model="fast", messages=HELLO)
    assert refused.value.code == "insufficient_quota"
    assert "Account spending cap of 0 credits per day: 0 spent or held" in refused.value.message
    assert not Turn.objects.exists() and not CreditHold.objects.exists()


def test_past_the_keys_rpm_the_sdk_gets_rate_limit_exceeded_with_retry_after(limited_sdk, fast):
    fresh_minute()
    sdk, _ = limited_sdk(rpm=1)
    sdk.chat.completions.create(model="fast", messages=HELLO)
    with pytest.raises(openai.RateLimitError) as refused:
        sdk.chat.completions.create(model="fast", messages=HELLO)
    assert (refused.value.code, refused.value.type) == ("rate_limit_exceeded", "requests")
    assert 1 <= int(refused.value.response.headers["Retry-After"]) <= 60
    assert "allows 1 requests per minute (rpm)" in refused.value.message
    assert Turn.objects.count() == 1


def test_past_the_keys_tpm_a_stream_is_refused_too(limited_sdk, fast):
    fresh_minute()
    sdk, _ = limited_sdk(tpm=300)  # one request: a few prompt tokens + max_tokens 200
    sdk.chat.completions.create(model="fast", messages=HELLO, max_tokens=200)
    with pytest.raises(openai.RateLimitError) as refused:
        sdk.chat.completions.create(model="fast", messages=HELLO, max_tokens=200, stream=True)
    assert refused.value.code == "rate_limit_exceeded"
    assert "allows 300 tokens per minute (tpm)" in refused.value.message
    assert refused.value.response.headers["Retry-After"].isdigit()
    assert Turn.objects.count() == 1
