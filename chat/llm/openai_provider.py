"""`openai` provider: the `openai` SDK against any OpenAI-compatible endpoint
(OpenAI, OpenRouter, vLLM, Ollama, llama.cpp server, ...) at OPENAI_BASE_URL.

Streaming asks for usage with `stream_options={"include_usage": True}` (the last
chunk carries it). Tools go out as `tools=[{"type": "function", ...}]`; the model's
`tool_calls` (streamed in pieces keyed by index) come back as ToolCallRequest.
Retries on 408/409/429/5xx and connection errors, with exponential backoff and
`Retry-After`, are the SDK's own (max_retries = LLM_MAX_RETRIES).
CallOptions pass through as the API names them: temperature, top_p, stop,
tool_choice ("auto" | "none" | "required" | {"type": "function", ...}), user.
"""

import json
import logging
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import openai
from django.conf import settings

from chat.llm.base import (
    STOPPED_BY_OWNER,
    CallOptions,
    ChatMessage,
    DeltaCallback,
    LLMResult,
    ProviderError,
    StopRequested,
    ToolCallRequest,
    estimate_prompt_tokens,
    estimate_tokens,
    partial_result,
)
from chat.llm.errors import SDK_ERRORS, readable_error

logger = logging.getLogger(__name__)

FINISH_REASONS = {"tool_calls": "tool_calls", "function_call": "tool_calls", "length": "length"}


@lru_cache(maxsize=8)
def _client(base_url: str, api_key: str, timeout: float, max_retries: int) -> openai.OpenAI:
    # One client (one connection pool) per configuration and process.
    return openai.OpenAI(
        # Self-hosted compatible servers often need no key; the SDK insists on one.
        api_key=api_key or "not-needed",
        base_url=base_url or None,
        timeout=timeout,
        max_retries=max_retries,
    )


def client() -> openai.OpenAI:
    return _client(
        settings.OPENAI_BASE_URL, settings.OPENAI_API_KEY, settings.LLM_TIMEOUT_SECONDS, settings.LLM_MAX_RETRIES
    )


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
                            "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
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
        params["max_tokens" if settings.OPENAI_BASE_URL else "max_completion_tokens"] = max_output_tokens
        if tools:
            params["tools"] = to_wire_tools(tools)
        if options is not None:
            params.update(to_wire_options(options))
        try:
            if on_delta is None:
                return self._plain(params, messages)
            return self._stream(params, messages, on_delta)
        except SDK_ERRORS as exc:
            logger.warning("openai call to %s failed: %s", model, exc.__class__.__name__)
            raise readable_error(exc, provider=self.name) from exc

    def _plain(self, params: dict[str, Any], messages: Sequence[ChatMessage]) -> LLMResult:
        response = client().chat.completions.create(**params)
        choice = response.choices[0] if response.choices else None
        text = (choice.message.content or "") if choice else ""
        calls = tuple(
            ToolCallRequest.from_raw(id=call.id, name=call.function.name, raw=call.function.arguments)
            for call in ((choice.message.tool_calls or []) if choice else [])
            if getattr(call, "function", None) is not None
        )
        finish = FINISH_REASONS.get((choice.finish_reason if choice else None) or "", "stop")
        return _with_usage(text, calls, finish, response.usage, messages)

    def _stream(self, params: dict[str, Any], messages: Sequence[ChatMessage], on_delta: DeltaCallback) -> LLMResult:
        text: list[str] = []
        pending: dict[int, dict[str, Any]] = {}
        usage = None
        finish = ""
        try:
            stream = client().chat.completions.create(**params, stream=True, stream_options={"include_usage": True})
            with stream:
                for chunk in stream:
                    if chunk.usage is not None:
                        usage = chunk.usage
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
                        if delta is not None and delta.content:
                            text.append(delta.content)
                            on_delta(delta.content)
        except StopRequested:
            return self._partial(text, pending, usage, messages, STOPPED_BY_OWNER)
        except SDK_ERRORS as exc:
            if not (text or pending):
                raise
            # Cut off after output: the provider bills what it sent, and so do we.
            return self._partial(text, pending, usage, messages, readable_error(exc, provider=self.name).message)
        if not finish and usage is None:
            # The body ended without a finish reason or usage: the reply was cut off.
            why = f"The {self.name} provider's stream ended before the reply was complete."
            if text or pending:
                return self._partial(text, pending, usage, messages, why)
            raise ProviderError(why)
        calls = tuple(
            ToolCallRequest.from_raw(id=slot["id"], name=slot["name"], raw="".join(slot["arguments"]))
            for _, slot in sorted(pending.items())
        )
        return _with_usage("".join(text), calls, finish or "stop", usage, messages)

    @staticmethod
    def _partial(text: list[str], pending: dict, usage: Any, messages: Sequence[ChatMessage], why: str) -> LLMResult:
        return partial_result(
            text="".join(text), messages=messages, why=why,
            input_tokens=(usage.prompt_tokens or 0) if usage is not None else 0,
            output_tokens=(usage.completion_tokens or 0) if usage is not None else 0,
            tool_text="".join("".join(slot["arguments"]) for slot in pending.values()),
        )  # fmt: skip


def _with_usage(text: str, calls: tuple, finish: str, usage: Any, messages: Sequence[ChatMessage]) -> LLMResult:
    if usage is not None and usage.prompt_tokens is not None:
        return LLMResult(
            text=text, tool_calls=calls, finish_reason=finish,
            input_tokens=usage.prompt_tokens or 0, output_tokens=usage.completion_tokens or 0,
        )  # fmt: skip
    # A server that reports no usage is still metered: estimated like the local
    # provider counts, and flagged, rather than given away.
    logger.warning("openai-compatible provider reported no usage; estimating from text length")
    return LLMResult(
        text=text, tool_calls=calls, finish_reason=finish, usage_reported=False,
        input_tokens=estimate_prompt_tokens(messages),
        output_tokens=estimate_tokens(text + json.dumps([c.as_dict() for c in calls]) if calls else text),
    )  # fmt: skip
