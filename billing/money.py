"""Money rules in one place.

- Ledger amounts are Decimal(18,8): the truth. A charge (a call's cost, a debit, a
  take-back) is rounded UP at the 8th place so the service never undercharges.
  Amounts a person or another system states (grants, top-ups, refunds,
  adjustments) must already fit 8 places: they are refused, never rounded.
- Usage `credits_burned` is Decimal(20,4): display and reports, half-up.
- USD is 2 places. Credits per top-up: round(amount_usd * CREDITS_PER_USD, 2).
- A price converted from a provider's USD per token (`credits_per_mtok_from_usd`,
  `manage.py import_prices`) is rounded UP at the 8th place, like a charge: a
  converted price is never below the provider's.
The API writes every amount as a string through `format_*` below, never a float.
"""

from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal, InvalidOperation

from django.conf import settings

LEDGER_PLACES = Decimal("0.00000001")
USAGE_PLACES = Decimal("0.0001")
USD_PLACES = Decimal("0.01")
MILLION = Decimal(1_000_000)
# Decimal(18,8) holds magnitudes below 10**10.
LEDGER_LIMIT = Decimal(10) ** 10


def to_decimal(value: Decimal | int | str) -> Decimal:
    """A finite Decimal from a Decimal, int or numeric string. Floats are refused:
    they cannot hold most decimal amounts exactly."""
    if isinstance(value, float):
        raise TypeError("Money is never a float; pass a Decimal or a string.")
    try:
        result = Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        raise ValueError(f"Not a number: {value!r}.") from None
    if not result.is_finite():
        raise ValueError(f"Not a finite number: {value!r}.")
    return result


def ledger_amount(value: Decimal) -> Decimal:
    """A charge rounded UP at the 8th place (toward +infinity: for the non-negative
    costs this is meant for, never less than the exact cost)."""
    return value.quantize(LEDGER_PLACES, rounding=ROUND_CEILING)


def ledger_exact(value: Decimal) -> Decimal:
    """`value` at ledger precision, or ValueError when that would change it (more
    than 8 decimal places) or it does not fit Decimal(18,8)."""
    if abs(value) >= LEDGER_LIMIT:
        raise ValueError(f"Must be less than {LEDGER_LIMIT:,} in magnitude.")
    exact = value.quantize(LEDGER_PLACES)
    if exact != value:
        raise ValueError("At most 8 decimal places.")
    return exact


def credits_per_mtok_from_usd(usd_per_token: Decimal, *, factor: Decimal = Decimal(1)) -> Decimal:
    """A USD-per-token price as credits per million tokens (times `factor`, a
    markup), rounded UP at the 8th place: the price rows hold 8 places, and rounding
    up is the never-undercharge rule (at most 1e-8 credits per million tokens more)."""
    return ledger_amount(usd_per_token * MILLION * settings.CREDITS_PER_USD * factor)


def usage_amount(value: Decimal) -> Decimal:
    return value.quantize(USAGE_PLACES, rounding=ROUND_HALF_UP)


def usd_amount(value: Decimal) -> Decimal:
    return value.quantize(USD_PLACES, rounding=ROUND_HALF_UP)


def is_low_balance(balance: Decimal) -> bool:
    """Is this balance low (below LOW_BALANCE_THRESHOLD)? A warn-only signal, shown with
    the wallet (billing.selectors) and with a turn (chat.services)."""
    return balance < settings.LOW_BALANCE_THRESHOLD


def call_cost(*, input_tokens: int, output_tokens: int, input_price: Decimal, output_price: Decimal) -> Decimal:
    """Exact cost of one model call in credits (prices are per million tokens), unrounded."""
    return (Decimal(input_tokens) * input_price + Decimal(output_tokens) * output_price) / MILLION


def format_price(value: Decimal) -> str:
    """A price as written: its own places and no trailing zeros, never an exponent
    (0.15, 7.5, 1500)."""
    return f"{value.normalize():f}"


def _plain(value: Decimal) -> str:
    # `+ 0` turns a negative zero into 0, so nothing ever reads "-0.00000000".
    return f"{value + 0:f}"


def format_ledger(value: Decimal | None) -> str | None:
    return None if value is None else _plain(ledger_amount(Decimal(value)))


def format_usage(value: Decimal | None) -> str | None:
    return None if value is None else _plain(usage_amount(Decimal(value)))


def format_usd(value: Decimal | None) -> str | None:
    return None if value is None else _plain(usd_amount(Decimal(value)))
