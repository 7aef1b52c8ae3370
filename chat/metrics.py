"""Prometheus metrics of the chat engine (prometheus-client; names after its
conventions, bounded labels only: never a user or a key)."""

from prometheus_client import Counter

HOLD_OVERRUNS = Counter(
    "parley_hold_overruns_total",
    "Provider calls that reported more tokens than their hold counted (charged what the provider reported).",
    ["alias"],
)
