"""Model providers, chosen per ModelPrice row (`provider`): `local` (offline,
deterministic, the embedded default), `openai` (any OpenAI-compatible endpoint) and
`anthropic`. All speak the neutral shapes of chat.llm.base; see its docstring."""

from chat.llm.base import (
    STOPPED_BY_OWNER,
    CallOptions,
    ChatMessage,
    DeltaCallback,
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


def provider_for(name: str) -> Provider:
    """The provider for a ModelPrice.provider value. The SDK providers are imported
    lazily: a process that only serves the local model never loads the SDKs."""
    if name == "local":
        return LocalProvider()
    if name == "openai":
        from chat.llm.openai_provider import OpenAIProvider  # heavy, optional: the openai SDK

        return OpenAIProvider()
    if name == "anthropic":
        from chat.llm.anthropic_provider import AnthropicProvider  # heavy, optional: the anthropic SDK

        return AnthropicProvider()
    raise ProviderError(f"Unknown provider '{name}'.")


__all__ = [
    "CallOptions",
    "ChatMessage",
    "DeltaCallback",
    "LLMResult",
    "Provider",
    "ProviderError",
    "STOPPED_BY_OWNER",
    "StopRequested",
    "ToolCallRequest",
    "estimate_message_tokens",
    "estimate_prompt_tokens",
    "estimate_tokens",
    "provider_for",
]
