"""The provider-neutral shapes every model provider speaks.

A call takes a list of `ChatMessage` (system, user, assistant with optional tool
calls, tool results) and optional tool definitions in the neutral shape
`{"name", "description", "parameters"}` (a JSON Schema; see chat.tools), and
returns an `LLMResult`: the text, the tool calls the model asked for, and the usage
the provider reported. Each provider translates to and from its own wire format.

A call that fails for good (after the SDK's bounded retries) raises
`ProviderError` with a readable message; such a call reported no usage and is never
billed. A stream that stops after output (the owner's Stop through `StopRequested`,
or the provider cutting it off) returns what came as a `partial` result, billed
like the provider bills it: usage when reported, else counted from the text.
"""

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Role = Literal["system", "user", "assistant", "tool"]
# Receives each piece of the reply text as it is produced (streaming).
DeltaCallback = Callable[[str], None]


@dataclass(frozen=True)
class ToolCallRequest:
    """A tool the model asked for. `arguments` is the parsed object when the model
    sent valid JSON, else {}; `raw_arguments` keeps what it sent, for the error."""

    id: str
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    raw_arguments: str = ""

    @classmethod
    def from_raw(cls, *, id: str, name: str, raw: str | dict[str, Any] | None) -> "ToolCallRequest":  # noqa: A002
        if isinstance(raw, dict):
            return cls(id=id, name=name, arguments=raw, raw_arguments=json.dumps(raw))
        text = raw or ""
        try:
            parsed = json.loads(text) if text.strip() else {}
        except (ValueError, RecursionError):
            parsed = {}
        return cls(id=id, name=name, arguments=parsed if isinstance(parsed, dict) else {}, raw_arguments=text)

    def as_dict(self) -> dict[str, Any]:
        """The JSON stored on Message.tool_calls."""
        return {"id": self.id, "name": self.name, "arguments": self.arguments}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ToolCallRequest":
        return cls.from_raw(id=str(data.get("id", "")), name=str(data.get("name", "")), raw=data.get("arguments"))


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str = ""
    # role == "assistant": the tools it asked for (its content may then be empty).
    tool_calls: tuple[ToolCallRequest, ...] = ()
    # role == "tool": which call this result answers, and the tool's name.
    tool_call_id: str = ""
    name: str = ""


@dataclass(frozen=True)
class LLMResult:
    text: str
    input_tokens: int
    output_tokens: int
    tool_calls: tuple[ToolCallRequest, ...] = ()
    # "stop", "length", "tool_calls" (normalised across providers).
    finish_reason: str = "stop"
    # False when the provider reported no usage and it was estimated from text length.
    usage_reported: bool = True
    # Why the stream stopped before the reply was complete ("" when it completed):
    # the owner's Stop, or the provider cutting it off. What came is still billed.
    partial: str = ""


class StopRequested(Exception):
    """Raised by an `on_delta` callback to stop a stream (the owner cancelled the
    turn): the provider ends the call and returns what it received so far as a
    partial result."""


STOPPED_BY_OWNER = "Stopped: the owner cancelled the turn."


@dataclass(frozen=True)
class CallOptions:
    """What a caller may set on a call besides messages, tools and the output limit
    (the OpenAI-compatible endpoint's clients do). None / empty: the provider's default.
    Each provider translates what its API has (see its module docstring)."""

    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    # "auto", "none", "required" (some tool), or "function": the tool named `tool_name`.
    tool_choice: str | None = None
    tool_name: str = ""
    # The end user, as the caller names them (abuse monitoring on the provider's side).
    user: str = ""


class ProviderError(Exception):
    """A provider call that failed for good. `message` is readable and safe to show
    the user (no key, no request body)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Provider(Protocol):
    name: str

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
        """One model call. With `on_delta` the call streams and each text piece is
        passed to it as it arrives; without, it is a plain request. `options`: sampling,
        stop sequences, tool choice (CallOptions)."""
        ...


# --- token estimates -------------------------------------------------------------

# About four characters per token for English text; the same rule counts the local
# provider's usage and estimates prompts for holds and context budgets.
CHARS_PER_TOKEN = 4
# Role markers and separators each message costs on top of its text.
MESSAGE_OVERHEAD_TOKENS = 4


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def estimate_message_tokens(message: ChatMessage) -> int:
    text = message.content
    for call in message.tool_calls:
        text += call.name + json.dumps(call.arguments)
    return MESSAGE_OVERHEAD_TOKENS + estimate_tokens(text)


def estimate_prompt_tokens(messages: Sequence[ChatMessage]) -> int:
    return sum(estimate_message_tokens(message) for message in messages)


def partial_result(*, text: str, messages: Sequence[ChatMessage], why: str, input_tokens: int = 0,
                   output_tokens: int = 0, tool_text: str = "") -> LLMResult:  # fmt: skip
    """What a stream that stopped early produced: its text (a half-received tool call
    cannot be run, so none is kept, but its `tool_text` was produced and is counted),
    billed at the usage the provider reported so far, or counted from the text where
    it reported less or none."""
    return LLMResult(
        text=text, finish_reason="stop", partial=why,
        input_tokens=input_tokens or estimate_prompt_tokens(messages),
        output_tokens=max(output_tokens, estimate_tokens(text + tool_text)),
        usage_reported=bool(input_tokens),
    )  # fmt: skip
