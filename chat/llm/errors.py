"""Turns an SDK exception into the readable ProviderError a failed turn shows."""

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


def readable_error(exc: Exception, *, provider: str) -> ProviderError:
    """What failed and how, for the turn's `error`: never the key or the request."""
    attempts = settings.LLM_MAX_RETRIES + 1
    if isinstance(exc, TIMEOUTS):
        text = f"The {provider} provider did not answer within {settings.LLM_TIMEOUT_SECONDS:g} s (up to {attempts} attempts)."
    elif isinstance(exc, STATUS_ERRORS):
        text = f"The {provider} provider answered HTTP {exc.status_code} (up to {attempts} attempts): {exc.message}"
    elif isinstance(exc, CONNECTION_ERRORS):
        text = f"Could not reach the {provider} provider (up to {attempts} attempts)."
    else:
        detail = getattr(exc, "message", None) or exc.__class__.__name__
        text = f"The {provider} provider failed while answering: {detail}"
    return ProviderError(text[:500])
