"""Turns an SDK exception into the readable ProviderError a failed turn shows.

The user sees what failed and how (the provider, the HTTP status and what it means,
the attempts), never the provider's own words: an error body can carry a masked
key, an account or organisation id, a request id or an internal host. Those go to
the log for the operator, with anything shaped like a key blanked."""

import logging
import re

import anthropic
import httpx2
import openai
from django.conf import settings

from chat.llm.base import ProviderError

TIMEOUTS = (openai.APITimeoutError, anthropic.APITimeoutError, httpx2.TimeoutException)
STATUS_ERRORS = (openai.APIStatusError, anthropic.APIStatusError)
CONNECTION_ERRORS = (openai.APIConnectionError, anthropic.APIConnectionError, httpx2.TransportError)
# What a provider call can raise once the SDK has given up retrying.
SDK_ERRORS = (openai.APIError, anthropic.APIError, httpx2.HTTPError)


logger = logging.getLogger(__name__)

CREDENTIALS = "refused this service's credentials; an operator must check its API key"
STATUS_MEANINGS = {
    401: CREDENTIALS,
    403: CREDENTIALS,
    404: "does not know the model this alias points at; an operator must check the alias",
    413: "found the request too large",
    429: "is rate limiting this service or its quota is used up; try again later",
    529: "is overloaded; try again later",  # Anthropic's
}
# sk-..., sk-ant-..., rk_live_..., key-..., also when partly masked with '*'.
KEY_SHAPED = re.compile(r"\b(?:sk|rk|pk|key)[-_][A-Za-z0-9_*\-]{6,}")


def _meaning(status: int) -> str:
    if status in STATUS_MEANINGS:
        return STATUS_MEANINGS[status]
    return "had an internal error; try again later" if status >= 500 else "refused the request"


# Statuses that are the upstream's trouble, not the request's: another deployment may serve.
FAILOVER_STATUSES = {401, 403, 408, 409, 429}


def _status_reason(status: int) -> str:
    return "credentials" if status in (401, 403) else f"http_{status}"


def readable_error(exc: Exception, *, provider: str, timeout: float | None = None,
                   max_retries: int | None = None) -> ProviderError:  # fmt: skip
    """What failed and how, for the turn's `error` (and the LLM call's): never the
    key, the request or what the provider said about them. `provider`: the
    upstream's name; `timeout` and `max_retries`: its own (else the settings')."""
    attempts = (settings.LLM_MAX_RETRIES if max_retries is None else max_retries) + 1
    waited = settings.LLM_TIMEOUT_SECONDS if timeout is None else timeout
    tries = f"up to {attempts} attempt{'s' if attempts != 1 else ''}"
    failover = True
    if isinstance(exc, TIMEOUTS):
        text, reason = f"The {provider} provider did not answer within {waited:g} s ({tries}).", "timeout"
    elif isinstance(exc, STATUS_ERRORS):
        status = exc.status_code
        text = f"The {provider} provider answered HTTP {status} ({tries}): it {_meaning(status)}."
        reason, failover = _status_reason(status), status in FAILOVER_STATUSES or status >= 500
    elif isinstance(exc, CONNECTION_ERRORS):
        text, reason = f"Could not reach the {provider} provider ({tries}).", "connection"
    else:
        text = f"The {provider} provider failed while answering ({exc.__class__.__name__})."
        reason, failover = "error", False
    said = getattr(exc, "message", None) or str(exc)
    logger.warning("%s provider call failed: %s: %s", provider, exc.__class__.__name__, KEY_SHAPED.sub("[key]", said))
    return ProviderError(text[:500], reason=reason, failover=failover)
