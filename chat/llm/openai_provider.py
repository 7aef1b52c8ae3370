"""`openai` provider: the `openai` SDK against any OpenAI-compatible endpoint
(OpenAI, OpenRouter, Groq, vLLM, Ollama, llama.cpp server, ...), an upstream of
kind `openai`.

Streaming asks for usage with `stream_options={"include_usage": True}` (the last
chunk carries it). Usage is read in every class OpenAI bills: `prompt_tokens` (all
input) with `prompt_tokens_details.cached_tokens` (and `cache_write_tokens`, which
OpenRouter reports there), `completion_tokens` (all output) with
`completion_tokens_details.reasoning_tokens`. Reasoning text that compatible servers
stream (`delta.reasoning_content`: vLLM, DeepSeek; `delta.reasoning`: OpenRouter) is
not shown, but a Stop ends the stream there too, and it is counted when no usage
came. Tools go out as `tools=[{"type": "function", ...}]`; the model's
`tool_calls` (streamed in pieces keyed by index) come back as ToolCallRequest.
The host, key, timeout and headers are the upstream's (chat.llm.base.Endpoint).
Retries on 408/409/429/5xx and connection errors, with exponential backoff and
`Retry-After`, are the SDK's own (max_retries = LLM_MAX_RETRIES).
CallOptions pass through as the API names them: temperature, top_p, stop,
tool_choice ("auto" | "none" | "required" | {"type": "function", ...}), user.

Embeddings (`embed`, and `aembed` on the event loop with the SDK's AsyncOpenAI, one
client per upstream and loop) ask for floats whatever the client asked (Parley
encodes base64 itself), with `dimensions` and `user` when given; usage is the
answer's `prompt_tokens`.
"""

import asyncio
import logging
import weakref
from collections.abc import Sequence
from dataclasses import replace
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import openai

from chat.llm.base import (
    STOPPED_BY_OWNER,
    CallOptions,
    ChatMessage,
    DeltaCallback,
    EmbeddingInput,
    EmbeddingResult,
    Endpoint,
    LLMResult,
    ProviderError,
    StopRequested,
    ToolCallRequest,
    partial_result,
    reported,
)
from chat.llm.counting import arguments_text
from chat.llm.errors import SDK_ERRORS, readable_error

logger = logging.getLogger(__name__)

FINISH_REASONS = {"tool_calls": "tool_calls", "function_call": "tool_calls", "length": "length"}


@lru_cache(maxsize=64)
def _client(endpoint: Endpoint) -> openai.OpenAI:
    # One client (one connection pool) per upstream configuration and process.
    return openai.OpenAI(
        # Self-hosted compatible servers often need no key; the SDK insists on one.
        api_key=endpoint.api_key or "not-needed",
        base_url=endpoint.base_url or None,
        timeout=endpoint.timeout,
        max_retries=endpoint.max_retries,
        default_headers=dict(endpoint.headers) or None,
    )


# AsyncOpenAI clients per event loop: an httpx connection pool belongs to the loop it
# was made on (a test's asyncio.run makes a new one each time).
_async_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Endpoint, openai.AsyncOpenAI]]" = (
    weakref.WeakKeyDictionary()
)


def _async_client(endpoint: Endpoint) -> openai.AsyncOpenAI:
    clients = _async_clients.setdefault(asyncio.get_running_loop(), {})
    if endpoint not in clients:
        clients[endpoint] = openai.AsyncOpenAI(
            api_key=endpoint.api_key or "not-needed", base_url=endpoint.base_url or None, timeout=endpoint.timeout,
            max_retries=endpoint.max_retries, default_headers=dict(endpoint.headers) or None,
        )  # fmt: skip
    return clients[endpoint]


def to_wire_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    wire: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "tool":
            wire.append({"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content})
        elif message.role == "assistant" and message.tool_calls:
            wire.append(
                {
                    "role": "assistant",
                    "content": message.content or None,
                    "tool_calls": [
                        {
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": arguments_text(call)},
                        }
                        for call in message.tool_calls
                    ],
                }
            )
        else:
            wire.append({"role": message.role, "content": message.content})
    return wire


def to_wire_options(options: CallOptions) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if options.temperature is not None:
        params["temperature"] = options.temperature
    if options.top_p is not None:
        params["top_p"] = options.top_p
    if options.stop:
        params["stop"] = list(options.stop)
    if options.tool_choice == "function":
        params["tool_choice"] = {"type": "function", "function": {"name": options.tool_name}}
    elif options.tool_choice:
        params["tool_choice"] = options.tool_choice
    if options.user:
        params["user"] = options.user
    return params


def to_wire_tools(tools: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {"name": t["name"], "description": t.get("description", ""), "parameters": t["parameters"]},
        }
        for t in tools
    ]


class OpenAIProvider:
    name = "openai"

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def _client(self) -> openai.OpenAI:
        return _client(self.endpoint)

    def _is_openai(self) -> bool:
        """Whether the upstream is OpenAI's own API (its default host, or named)."""
        return not self.endpoint.base_url or urlsplit(self.endpoint.base_url).hostname == "api.openai.com"

    def _error(self, exc: Exception) -> ProviderError:
        endpoint = self.endpoint
        return readable_error(exc, provider=endpoint.name, timeout=endpoint.timeout, max_retries=endpoint.max_retries)

    def complete(
        self,
        *,
        model: str,
        messages: Sequence[ChatMessage],
        max_output_tokens: int,
        tools: Sequence[dict[str, Any]] | None = None,
        on_delta: DeltaCallback | None = None,
        options: CallOptions | None = None,
    ) -> LLMResult:
        params: dict[str, Any] = {"model": model, "messages": to_wire_messages(messages)}
        # OpenAI's own API wants max_completion_tokens (reasoning models refuse
        # max_tokens); compatible servers (vLLM, Ollama, llama.cpp) know max_tokens.
        params["max_completion_tokens" if self._is_openai() else "max_tokens"] = max_output_tokens
        if tools:
            params["tools"] = to_wire_tools(tools)
        if options is not None:
            params.update(to_wire_options(options))
        try:
            if on_delta is None:
                return self._plain(params)
            return self._stream(params, on_delta)
        except SDK_ERRORS as exc:
            logger.warning("openai call to %s at %s failed: %s", model, self.endpoint.name, exc.__class__.__name__)
            raise self._error(exc) from exc

    @staticmethod
    def _embedding_params(model: str, inputs: Sequence[EmbeddingInput], dimensions: int | None,
                          user: str) -> dict[str, Any]:  # fmt: skip
        params: dict[str, Any] = {"model": model, "input": list(inputs), "encoding_format": "float"}
        if dimensions:
            params["dimensions"] = dimensions
        if user:
            params["user"] = user
        return params

    @staticmethod
    def _embedding_result(response: Any) -> EmbeddingResult:
        vectors = [list(item.embedding) for item in sorted(response.data, key=lambda item: item.index)]
        tokens = getattr(response.usage, "prompt_tokens", None) if response.usage is not None else None
        reported_ = isinstance(tokens, int)
        return EmbeddingResult(vectors=vectors, input_tokens=tokens if reported_ else 0, usage_reported=reported_)

    def embed(self, *, model: str, inputs: Sequence[EmbeddingInput], dimensions: int | None = None,
              user: str = "") -> EmbeddingResult:  # fmt: skip
        try:
            response = self._client().embeddings.create(**self._embedding_params(model, inputs, dimensions, user))
        except SDK_ERRORS as exc:
            logger.warning("openai embeddings of %s at %s failed: %s", model, self.endpoint.name, exc.__class__.__name__)
            raise self._error(exc) from exc
        return self._embedding_result(response)

    async def aembed(self, *, model: str, inputs: Sequence[EmbeddingInput], dimensions: int | None = None,
                     user: str = "") -> EmbeddingResult:  # fmt: skip
        client = _async_client(self.endpoint)
        try:
            response = await client.embeddings.create(**self._embedding_params(model, inputs, dimensions, user))
        except SDK_ERRORS as exc:
            logger.warning("openai embeddings of %s at %s failed: %s", model, self.endpoint.name, exc.__class__.__name__)
            raise self._error(exc) from exc
        return self._embedding_result(response)

    def _plain(self, params: dict[str, Any]) -> LLMResult:
        response = self._client().chat.completions.create(**params)
        choice = response.choices[0] if response.choices else None
        text = (choice.message.content or "") if choice else ""
        calls = tuple(
            ToolCallRequest.from_raw(id=call.id, name=call.function.name, raw=call.function.arguments)
            for call in ((choice.message.tool_calls or []) if choice else [])
            if getattr(call, "function", None) is not None
        )
        finish = FINISH_REASONS.get((choice.finish_reason if choice else None) or "", "stop")
        reasoning = _reasoning_piece(choice.message) if choice else ""
        return replace(_with_usage(text, calls, finish, response.usage), reasoning_text=reasoning)

    def _stream(self, params: dict[str, Any], on_delta: DeltaCallback) -> LLMResult:
        text: list[str] = []
        reasoning: list[str] = []
        pending: dict[int, dict[str, Any]] = {}
        usage = None
        # The final usage chunk has no choices; a server may also report usage so far
        # on every chunk (vLLM's continuous_usage_stats), which ends nothing.
        final_usage = False
        finish = ""
        try:
            stream = self._client().chat.completions.create(**params, stream=True, stream_options={"include_usage": True})
            with stream:
                for chunk in stream:
                    if chunk.usage is not None:
                        usage, final_usage = chunk.usage, not chunk.choices
                    for choice in chunk.choices or []:
                        delta = choice.delta
                        for piece in (delta.tool_calls if delta is not None else None) or []:
                            slot = pending.setdefault(piece.index, {"id": "", "name": "", "arguments": []})
                            if piece.id:
                                slot["id"] = piece.id
                            if piece.function is not None:
                                slot["name"] = piece.function.name or slot["name"]
                                slot["arguments"].append(piece.function.arguments or "")
                        if choice.finish_reason:
                            finish = FINISH_REASONS.get(choice.finish_reason, "stop")
                        if delta is not None and (thought := _reasoning_piece(delta)):
                            reasoning.append(thought)
                            on_delta("")  # not shown, but the owner's Stop ends it here too
                        if delta is not None and delta.content:
                            text.append(delta.content)
                            on_delta(delta.content)
        except StopRequested:
            return self._partial(text, reasoning, pending, usage, STOPPED_BY_OWNER)
        except SDK_ERRORS as exc:
            if not (text or pending or reasoning):
                raise
            # Cut off after output: the provider bills what it sent, and so do we.
            return self._partial(text, reasoning, pending, usage, self._error(exc).message)
        if not finish and not final_usage:
            # The body ended without a finish reason or its usage: the reply was cut off.
            why = f"The {self.endpoint.name} provider's stream ended before the reply was complete."
            if text or pending or reasoning:
                return self._partial(text, reasoning, pending, usage, why)
            raise ProviderError(why, reason="cut", failover=True)
        calls = tuple(
            ToolCallRequest.from_raw(id=slot["id"], name=slot["name"], raw="".join(slot["arguments"]))
            for _, slot in sorted(pending.items())
        )
        result = _with_usage("".join(text), calls, finish or "stop", usage)
        return replace(result, reasoning_text="".join(reasoning))

    @staticmethod
    def _partial(text: list[str], reasoning: list[str], pending: dict, usage: Any, why: str) -> LLMResult:
        return partial_result(
            text="".join(text), why=why, reasoning_text="".join(reasoning),
            unkept_output="".join("".join(slot["arguments"]) for slot in pending.values()), **usage_fields(usage),
        )  # fmt: skip


def _reasoning_piece(delta: Any) -> str:
    # Not in the SDK's types: compatible servers' extra fields, kept by its models.
    piece = getattr(delta, "reasoning_content", None) or getattr(delta, "reasoning", None)
    return piece if isinstance(piece, str) else ""


def usage_fields(usage: Any) -> dict[str, int]:
    """The LLMResult token fields of an OpenAI `usage` object (none: {})."""
    if usage is None or usage.prompt_tokens is None:
        return {}
    prompt, completion = usage.prompt_tokens_details, usage.completion_tokens_details
    return {
        "input_tokens": usage.prompt_tokens or 0,
        "output_tokens": usage.completion_tokens or 0,
        "cached_input_tokens": reported(prompt, "cached_tokens"),
        "cache_write_tokens": reported(prompt, "cache_write_tokens"),
        "reasoning_tokens": reported(completion, "reasoning_tokens"),
    }


def _with_usage(text: str, calls: tuple, finish: str, usage: Any) -> LLMResult:
    fields = usage_fields(usage)
    # A server that reports no usage is still metered: the metering counts it with
    # the price's rule (and warns once per alias).
    return LLMResult(
        text=text, tool_calls=calls, finish_reason=finish, usage_reported=bool(fields),
        **({"input_tokens": 0, "output_tokens": 0} | fields),
    )  # fmt: skip
