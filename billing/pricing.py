"""What a model call costs at a price row, in every token class the provider bills
(`call_cost`), and the most a call of so many input tokens can cost (`cost_bound`),
which holds and the per-call ceiling are made of. Unrounded: callers round a charge
up with billing.money.ledger_amount."""

from dataclasses import dataclass
from decimal import Decimal

from billing.models import ModelPrice
from billing.money import MILLION


@dataclass(frozen=True)
class TokenUsage:
    """A call's tokens as the provider billed them: `input_tokens` is all input, of
    which `cached_input_tokens` were read from the provider's cache and
    `cache_write_tokens` written to it; `output_tokens` is all output, of which
    `reasoning_tokens` were thinking (priced as output, shown apart)."""

    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0


def in_tier(price: ModelPrice, input_tokens: int) -> bool:
    """Does a call of `input_tokens` take the long-context tier (the whole call)?"""
    return price.tier_threshold_tokens is not None and input_tokens > price.tier_threshold_tokens


def _tier_factor(price: ModelPrice) -> Decimal:
    # The tier raises cache reads and writes as it raises input (Anthropic's long
    # context doubles all three), so a call in the tier is priced as a whole.
    if not price.input_credits_per_mtok:
        return Decimal(1)
    return max(price.tier_input_credits_per_mtok / price.input_credits_per_mtok, Decimal(1))


def class_prices(price: ModelPrice, input_tokens: int) -> tuple[Decimal, Decimal, Decimal, Decimal]:
    """(input, cached input, cache write, output) per million tokens for a call of
    `input_tokens`: the tier's, scaled for the cache classes, once it passes the
    threshold."""
    if not in_tier(price, input_tokens):
        return (
            price.input_credits_per_mtok,
            price.cached_input_price,
            price.cache_write_price,
            price.output_credits_per_mtok,
        )
    factor = _tier_factor(price)
    return (
        price.tier_input_credits_per_mtok, price.cached_input_price * factor, price.cache_write_price * factor,
        price.tier_output_credits_per_mtok,
    )  # fmt: skip


def call_cost(price: ModelPrice, usage: TokenUsage) -> Decimal:
    """The exact cost of one call in credits (prices are per million tokens)."""
    input_price, cached_price, write_price, output_price = class_prices(price, usage.input_tokens)
    plain = max(usage.input_tokens - usage.cached_input_tokens - usage.cache_write_tokens, 0)
    total = (
        plain * input_price
        + usage.cached_input_tokens * cached_price
        + usage.cache_write_tokens * write_price
        + usage.output_tokens * output_price
    )
    return Decimal(total) / MILLION


def cost_bound(price: ModelPrice, *, input_tokens: int, output_tokens: int) -> Decimal:
    """The most a call can cost whose provider bills at most `input_tokens` of input
    (in any mix of classes) and `output_tokens` of output: each token at the dearest
    price of its side, the tier's included once the input could reach it."""
    base = class_prices(price, 0)
    tier = class_prices(price, input_tokens)
    input_price = max(*base[:3], *tier[:3])
    output_price = max(base[3], tier[3])
    return (input_tokens * input_price + output_tokens * output_price) / MILLION
