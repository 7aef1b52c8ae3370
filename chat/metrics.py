"""Prometheus metrics of the chat engine (prometheus-client; names after its
conventions, bounded labels only: never a user or a key). In the Procfile's
processes they are kept in prometheus-client's multiprocess mode and served by
`GET /metrics` (core.metrics)."""

from prometheus_client import Counter, Gauge, Histogram

HOLD_OVERRUNS = Counter(
    "parley_hold_overruns_total",
    "Provider calls that reported more tokens than their hold counted (charged what the provider reported).",
    ["alias"],
)

# --- provider calls, per attempt (a failover makes several) -------------------------
LLM_CALLS = Counter(
    "parley_llm_calls_total", "Provider calls by how they ended (ok, partial, failed).", ["alias", "upstream", "status"]
)
LLM_FAILURES = Counter(
    "parley_llm_call_failures_total",
    "Failed provider calls by reason (timeout, connection, credentials, http_<status>, cut, busy, refused).",
    ["alias", "upstream", "reason"],
)
LLM_TOKENS = Counter(
    "parley_llm_tokens_total",
    "Tokens billed, by class: input (all of it; of it cached_input and cache_write) and output (of it reasoning).",
    ["alias", "upstream", "token_class"],
)
LLM_CREDITS = Counter("parley_llm_credits_total", "Credits charged for provider calls.", ["alias", "upstream"])
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 60, 120, 300)
LLM_CALL_SECONDS = Histogram(
    "parley_llm_call_seconds", "Provider call duration, from request to the last byte.", ["upstream"],
    buckets=LATENCY_BUCKETS,
)  # fmt: skip
LLM_FIRST_TOKEN_SECONDS = Histogram(
    "parley_llm_first_token_seconds", "Time to the first streamed output of a provider call.", ["upstream"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60),
)  # fmt: skip

# --- turns and streams ------------------------------------------------------------------
TURNS = Counter("parley_turns_total", "Turns finished, by status (completed, failed, cancelled).", ["status"])
OPEN_STREAMS = Gauge(
    "parley_open_streams", "Server-sent event streams open now (turn streams and /v1 streams).",
    multiprocess_mode="livesum",
)  # fmt: skip

TOKEN_CLASSES = ("input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens")


def llm_call_observe(llm_call, *, reason: str = "") -> None:  # noqa: ANN001 (an unsaved chat.models.LLMCall)
    """Counts one attempt: its outcome, its tokens by class, its credits, its time."""
    alias, upstream = llm_call.model_alias, llm_call.upstream
    LLM_CALLS.labels(alias=alias, upstream=upstream, status=llm_call.status).inc()
    if reason:
        LLM_FAILURES.labels(alias=alias, upstream=upstream, reason=reason).inc()
    for name in TOKEN_CLASSES:
        if tokens := getattr(llm_call, name):
            LLM_TOKENS.labels(alias=alias, upstream=upstream, token_class=name.removesuffix("_tokens")).inc(tokens)
    if llm_call.cost:
        LLM_CREDITS.labels(alias=alias, upstream=upstream).inc(float(llm_call.cost))
    LLM_CALL_SECONDS.labels(upstream=upstream).observe(llm_call.latency_ms / 1000)
