"""`anthropic` provider: the `anthropic` SDK (Messages API) at an upstream of kind
`anthropic` (its host, key, timeout and headers: chat.llm.base.Endpoint).

System messages become the `system` parameter; tool definitions go out as
`tools=[{"name", "description", "input_schema"}]`; the model's `tool_use` blocks
come back as ToolCallRequest; an assistant's tool calls are sent back as
`tool_use` blocks and tool results as `tool_result` blocks in the next user
message (consecutive same-role messages are merged, as the API expects).
Streaming reads usage from `message_start` (input) and `message_delta` (output,
cumulative). Usage keeps the classes Anthropic bills apart: `input_tokens` (not
cached), `cache_read_input_tokens` (about 0.1x) and `cache_creation_input_tokens`
(about 1.25x) are, together, the call's input; `output_tokens` includes thinking,
which `output_tokens_details.thinking_tokens` reports apart (reasoning tokens).
Thinking streamed as `thinking_delta` is not shown, but a Stop ends the stream there
too, and it is counted when a stream stops before its usage is complete. Retries on
408/409/429/5xx are the SDK's own (the upstream's max_retries).
CallOptions translate: stop -> `stop_sequences` (a `stop_sequence` stop is a normal
"stop"), tool_choice auto / none / required / function -> {"type": "auto" | "none" |
"any" | "tool"}, user -> `metadata.user_id`. The Messages API of the pinned SDK takes
no sampling parameters (`messages.create` has no temperature or top_p), so those
two are not sent.
"""

import logging
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import anthropic

from chat.llm.base import (
    STOPPED_BY_OWNER,
    CallOptions,
    ChatMessage,
    DeltaCallback,
    Endpoint,
    LLMResult,
    ProviderError,
    StopRequested,
    ToolCallRequest,
    partial_result,
    reported,
)
from chat.llm.errors import SDK_ERRORS, readable_error

logger = logging.getLogger(__name__)

STOP_REASONS = {"tool_use": "tool_calls", "max_tokens": "length"}


@lru_cache(maxsize=64)
def _client(endpoint: Endpoint) -> anthropic.Anthropic:
    # One client (one connection pool) per upstream configuration and process.
    return anthropic.Anthropic(
        api_key=endpoint.api_key or "not-needed", base_url=endpoint.base_url or None, timeout=endpoint.timeout,
        max_retries=endpoint.max_retries, default_headers=dict(endpoint.headers) or None,
    )  # fmt: skip


def to_wire(messages: Sequence[ChatMessage]) -> tuple[str, list[dict[str, Any]]]:
    """(system, messages) in the Messages API shape."""
    system = "\n\n".join(m.content for m in messages if m.role == "system" and m.content)
    wire: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            continue
        if message.role == "tool":
            role = "user"
            blocks = [{"type": "tool_result", "tool_use_id": message.tool_call_id, "content": message.content}]
        else:
            role = message.role
            # The API refuses empty text blocks (an assistant that only called tools).
            blocks = [{"type": "text", "text": message.content}] if message.content else []
            blocks += [
                {"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}
                for call in message.tool_calls
            ]
        if wire and wire[-1]["role"] == role:
            wire[-1]["content"].extend(blocks)
        else:
            wire.append({"role": role, "content": blocks})
    return system, wire


def to_wire_tools(tools: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"name": t["name"], "description": t.get("description", ""), "input_schema": t["parameters"]} for t in tools
    ]


TOOL_CHOICES = {"auto": "auto", "none": "none", "required": "any"}


def to_wire_options(options: CallOptions, *, tools_offered: bool) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if options.stop:
        params["stop_sequences"] = list(options.stop)
    # The API refuses a tool_choice without tools.
    if tools_offered and options.tool_choice == "function":
        params["tool_choice"] = {"type": "tool", "name": options.tool_name}
    elif tools_offered and options.tool_choice in TOOL_CHOICES:
        params["tool_choice"] = {"type": TOOL_CHOICES[options.tool_choice]}
    if options.user:
        params["metadata"] = {"user_id": options.user}
    return params


def usage_fields(usage: Any) -> dict[str, int]:
    """The LLMResult token fields of an Anthropic `usage` object: its input is the
    uncached input plus the cache reads and writes."""
    cached, written = reported(usage, "cache_read_input_tokens"), reported(usage, "cache_creation_input_tokens")
    return {
        "input_tokens": reported(usage, "input_tokens") + cached + written,
        "cached_input_tokens": cached,
        "cache_write_tokens": written,
        "output_tokens": reported(usage, "output_tokens"),
        "reasoning_tokens": reported(getattr(usage, "output_tokens_details", None), "thinking_tokens"),
    }


class AnthropicProvider:
    name = "anthropic"

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def _client(self) -> anthropic.Anthropic:
        return _client(self.endpoint)

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
        system, wire = to_wire(messages)
        params: dict[str, Any] = {"model": model, "max_tokens": max_output_tokens, "messages": wire}
        if system:
            params["system"] = system
        if tools:
            params["tools"] = to_wire_tools(tools)
        if options is not None:
            params.update(to_wire_options(options, tools_offered=bool(tools)))
        try:
            if on_delta is None:
                return self._plain(params)
            return self._stream(params, on_delta)
        except SDK_ERRORS as exc:
            logger.warning("anthropic call to %s at %s failed: %s", model, self.endpoint.name, exc.__class__.__name__)
            raise self._error(exc) from exc

    def _plain(self, params: dict[str, Any]) -> LLMResult:
        response = self._client().messages.create(**params)
        text, calls = [], []
        for block in response.content:
            if block.type == "text":
                text.append(block.text)
            elif block.type == "tool_use":
                calls.append(ToolCallRequest.from_raw(id=block.id, name=block.name, raw=dict(block.input or {})))
        return LLMResult(
            text="".join(text), tool_calls=tuple(calls),
            finish_reason=STOP_REASONS.get(response.stop_reason or "", "stop"), **usage_fields(response.usage),
        )  # fmt: skip

    def _stream(self, params: dict[str, Any], on_delta: DeltaCallback) -> LLMResult:
        text: list[str] = []
        thinking: list[str] = []
        blocks: dict[int, dict[str, Any]] = {}
        usage: dict[str, int] = {}
        stop_reason = ""
        stopped = False

        def cut(why: str) -> LLMResult:
            return partial_result(
                text="".join(text), why=why, reasoning_text="".join(thinking),
                unkept_output="".join("".join(b["json"]) for b in blocks.values()), **usage,
            )  # fmt: skip

        try:
            stream = self._client().messages.create(**params, stream=True)
            with stream:
                for event in stream:
                    if event.type == "message_start":
                        usage = usage_fields(event.message.usage)
                    elif event.type == "content_block_start":
                        block = event.content_block
                        if block.type == "tool_use":
                            blocks[event.index] = {"id": block.id, "name": block.name, "json": []}
                    elif event.type == "content_block_delta":
                        delta = event.delta
                        if delta.type == "text_delta" and delta.text:
                            text.append(delta.text)
                            on_delta(delta.text)
                        elif delta.type == "thinking_delta" and delta.thinking:
                            thinking.append(delta.thinking)
                            on_delta("")  # not shown, but the owner's Stop ends it here too
                        elif delta.type == "input_json_delta" and event.index in blocks:
                            blocks[event.index]["json"].append(delta.partial_json)
                    elif event.type == "message_delta":
                        stop_reason = event.delta.stop_reason or stop_reason
                        # Cumulative counts: the last message_delta has the totals (its
                        # input fields may be absent or null: keep message_start's).
                        latest = usage_fields(event.usage)
                        usage = {name: max(usage.get(name, 0), value) for name, value in latest.items()}
                    elif event.type == "message_stop":
                        stopped = True
        except StopRequested:
            return cut(STOPPED_BY_OWNER)
        except SDK_ERRORS as exc:
            if not (text or blocks or thinking):
                raise
            # Cut off after output: the provider bills what it sent, and so do we.
            return cut(self._error(exc).message)
        if not stopped:
            why = f"The {self.endpoint.name} provider's stream ended before the reply was complete."
            if text or blocks or thinking:
                return cut(why)
            raise ProviderError(why, reason="cut", failover=True)
        calls = tuple(
            ToolCallRequest.from_raw(id=b["id"], name=b["name"], raw="".join(b["json"]))
            for _, b in sorted(blocks.items())
        )
        return LLMResult(
            text="".join(text), tool_calls=calls, finish_reason=STOP_REASONS.get(stop_reason, "stop"),
            reasoning_text="".join(thinking), usage_reported=bool(usage.get("input_tokens")),
            **({"input_tokens": 0, "output_tokens": 0} | usage),
        )  # fmt: skip
