"""billing.pricing: each token class at its price, the long-context tier for a whole
call, and the bound a hold is made of (never less than any call it covers)."""

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.pricing import TokenUsage, call_cost, cost_bound
from billing.services import model_price_set

pytestmark = pytest.mark.django_db


def price(**extra):
    values = {
        "provider": "anthropic", "provider_model": "claude", "input_credits_per_mtok": "300",
        "output_credits_per_mtok": "1500", "context_tokens": 1_000_000, "max_output_tokens": 64_000,
    }  # fmt: skip
    return model_price_set(alias="sonnet", **(values | extra))


def test_classes_default_to_the_input_price():
    plain = price()
    usage = TokenUsage(input_tokens=1000, cached_input_tokens=600, cache_write_tokens=100, output_tokens=10)
    assert call_cost(plain, usage) == Decimal(1000 * 300 + 10 * 1500) / 1_000_000


def test_each_class_at_its_price_and_reasoning_as_output():
    row = price(cached_input_credits_per_mtok="30", cache_write_credits_per_mtok="375")
    usage = TokenUsage(
        input_tokens=1000, cached_input_tokens=600, cache_write_tokens=100, output_tokens=50, reasoning_tokens=40
    )
    assert call_cost(row, usage) == Decimal(300 * 300 + 600 * 30 + 100 * 375 + 50 * 1500) / 1_000_000


def test_the_tier_prices_the_whole_call_once_its_input_passes_the_threshold():
    row = price(
        cached_input_credits_per_mtok="30", cache_write_credits_per_mtok="375", tier_threshold_tokens=200_000,
        tier_input_credits_per_mtok="600", tier_output_credits_per_mtok="2250",
    )  # fmt: skip
    at = TokenUsage(input_tokens=200_000, output_tokens=100)
    assert call_cost(row, at) == Decimal(200_000 * 300 + 100 * 1500) / 1_000_000
    over = TokenUsage(input_tokens=200_001, cached_input_tokens=100_000, cache_write_tokens=1, output_tokens=100)
    # Cache reads and writes rise with the input (x2 here), as Anthropic prices long context.
    assert call_cost(row, over) == Decimal(100_000 * 600 + 100_000 * 60 + 1 * 750 + 100 * 2250) / 1_000_000


@settings(max_examples=300, deadline=None)
@given(
    counted=st.integers(0, 400_000), output=st.integers(0, 64_000),
    shares=st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)), cached=st.sampled_from(["30", "900"]),
)  # fmt: skip
def test_the_bound_covers_every_call_of_at_most_its_tokens(counted, output, shares, cached):
    row = price(
        cached_input_credits_per_mtok=cached, cache_write_credits_per_mtok="375", tier_threshold_tokens=200_000,
        tier_input_credits_per_mtok="600", tier_output_credits_per_mtok="2250",
    )  # fmt: skip
    reported = int(counted * shares[0])
    read = int(reported * shares[1])
    written = int((reported - read) * shares[2])
    usage = TokenUsage(
        input_tokens=reported, cached_input_tokens=read, cache_write_tokens=written, output_tokens=output
    )
    assert call_cost(row, usage) <= cost_bound(row, input_tokens=counted, output_tokens=output)
