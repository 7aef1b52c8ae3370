"""Prometheus metrics of billing: ledger debits and Stripe's webhook events (served by
`GET /metrics`, core.metrics; names after prometheus-client's conventions, bounded
labels only: never a user, a wallet or a reference)."""

from decimal import Decimal

from prometheus_client import Counter

LEDGER_DEBITS = Counter("parley_ledger_debits_total", "Debit rows written to the ledger (a replay writes none).")
LEDGER_DEBITED_CREDITS = Counter("parley_ledger_debited_credits_total", "Credits taken by ledger debits.")
STRIPE_EVENTS = Counter(
    "parley_stripe_events_total",
    "Stripe webhook events processed, by type (`other` for a type Parley does not handle) and outcome "
    "(applied, ignored, pending, duplicate, failed).",
    ["type", "outcome"],
)


def ledger_debit_observe(credits: Decimal) -> None:
    """Counts one committed debit row of `credits` (a positive magnitude)."""
    LEDGER_DEBITS.inc()
    LEDGER_DEBITED_CREDITS.inc(float(credits))  # a metric value only: the ledger keeps the Decimal
