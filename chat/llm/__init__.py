"""Model providers, one per upstream kind (routing.Upstream): `local` (offline,
deterministic, the embedded default), `openai` (any OpenAI-compatible endpoint) and
`anthropic`. All speak the neutral shapes of chat.llm.base; see its docstring. A
provider is made for an Endpoint: the upstream's host, key, timeout and headers."""

from django.conf import settings

from chat.llm.base import (
    STOPPED_BY_OWNER,
    CallOptions,
    ChatMessage,
    DeltaCallback,
    Endpoint,
    LLMResult,
    Provider,
    ProviderError,
    StopRequested,
    ToolCallRequest,
    estimate_message_tokens,
    estimate_prompt_tokens,
    estimate_tokens,
)
from chat.llm.local import LocalProvider

# The settings each kind's default upstream is made of (the upstreams named after
# the kinds, as ModelPrice.provider names them).
DEFAULT_HOSTS = {"openai": ("OPENAI_BASE_URL", "OPENAI_API_KEY"), "anthropic": ("ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY")}


def default_endpoint(kind: str) -> Endpoint:
    """The default upstream of a kind, from the settings: OPENAI_* / ANTHROPIC_*."""
    url_setting, key_setting = DEFAULT_HOSTS.get(kind, ("", ""))
    return Endpoint(
        name=kind, kind=kind, base_url=getattr(settings, url_setting, "") if url_setting else "",
        api_key=getattr(settings, key_setting, "") if key_setting else "",
        timeout=settings.LLM_TIMEOUT_SECONDS, max_retries=settings.LLM_MAX_RETRIES,
    )  # fmt: skip


def provider_for(endpoint: Endpoint | str) -> Provider:
    """The provider for an upstream (a kind alone: its default upstream). The SDK
    providers are imported lazily: a process that only serves the local model never
    loads the SDKs."""
    if isinstance(endpoint, str):
        endpoint = default_endpoint(endpoint)
    if endpoint.kind == "local":
        return LocalProvider()
    if endpoint.kind == "openai":
        from chat.llm.openai_provider import OpenAIProvider  # heavy, optional: the openai SDK

        return OpenAIProvider(endpoint)
    if endpoint.kind == "anthropic":
        from chat.llm.anthropic_provider import AnthropicProvider  # heavy, optional: the anthropic SDK

        return AnthropicProvider(endpoint)
    raise ProviderError(f"Unknown provider '{endpoint.kind}'.")


__all__ = [
    "DEFAULT_HOSTS",
    "CallOptions",
    "ChatMessage",
    "DeltaCallback",
    "Endpoint",
    "LLMResult",
    "Provider",
    "ProviderError",
    "STOPPED_BY_OWNER",
    "StopRequested",
    "ToolCallRequest",
    "estimate_message_tokens",
    "estimate_prompt_tokens",
    "default_endpoint",
    "estimate_tokens",
    "provider_for",
]
