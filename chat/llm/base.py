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
    """A call's answer and its usage as the provider reported it, in the classes it
    bills (billing.pricing.TokenUsage): all input, of it cached and cache-written; all
    output, of it reasoning. Where the provider reported nothing (`usage_reported`
    False, or a stream that stopped before its usage came) the metering counts
    (chat.engine.metering, with the price's counting rule)."""

    text: str
    input_tokens: int
    output_tokens: int
    tool_calls: tuple[ToolCallRequest, ...] = ()
    # "stop", "length", "tool_calls" (normalised across providers).
    finish_reason: str = "stop"
    # False when the provider reported no usage (the metering counts it).
    usage_reported: bool = True
    # Why the stream stopped before the reply was complete ("" when it completed):
    # the owner's Stop, or the provider cutting it off. What came is still billed.
    partial: str = ""
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    # Output produced but not in `text` or `tool_calls`: the model's reasoning, the
    # arguments of a tool call whose stream was cut. Counted when usage is missing.
    unkept_output: str = ""
    # The reasoning text that arrived (a stream stopped while the model thought).
    reasoning_text: str = ""


# An embeddings input: a text, or a token array (ids of the model's tokenizer).
EmbeddingInput = str | list[int]


@dataclass(frozen=True)
class EmbeddingResult:
    """An embeddings call's answer: one vector per input, in the inputs' order, and
    the input tokens the provider reported (`usage_reported` False: none came, the
    metering bills the count)."""

    vectors: list[list[float]]
    input_tokens: int
    usage_reported: bool = True


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


@dataclass(frozen=True)
class Endpoint:
    """Where a call goes and how: an upstream (routing.Upstream) as the providers take
    it. `base_url` empty: the SDK's own host."""

    name: str
    kind: str
    base_url: str = ""
    api_key: str = field(default="", repr=False)  # never in a log or a repr
    timeout: float = 60.0
    max_retries: int = 2
    headers: tuple[tuple[str, str], ...] = ()


class ProviderError(Exception):
    """A provider call that failed for good. `message` is readable and safe to show
    the user (no key, no request body). `reason` says how, in a word the routing and
    the metrics use: timeout, connection, http_<status>, credentials, cut, refused.
    `failover`: the failure is the upstream's, not the request's (connection refused
    or timed out, 408, 409, 429, 5xx, its key refused): another deployment may serve."""

    def __init__(self, message: str, *, reason: str = "refused", failover: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.failover = failover


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

# About four characters per token for English text: the local provider's own
# tokenizer, so to speak (it reports its usage by this rule). Holds, context budgets
# and unreported usage are counted by the price's rule (chat.llm.counting).
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


def reported(usage: Any, name: str) -> int:
    """A token count a provider's usage object (or a part of it, possibly absent)
    reports under `name`; 0 when it reports none (missing, null, not a number)."""
    value = getattr(usage, name, None)
    return value if isinstance(value, int) else 0


def partial_result(
    *, text: str, why: str, unkept_output: str = "", reasoning_text: str = "", **usage: int
) -> LLMResult:
    """What a stream that stopped early produced: its text (a half-received tool call
    cannot be run, so none is kept, but its arguments were produced: `unkept_output`;
    and `reasoning_text`) and the usage the provider reported so far (`usage`, the
    LLMResult token fields). The metering bills at least what it counts of that
    output, and counts the input when none was reported."""
    input_tokens, output_tokens = usage.pop("input_tokens", 0), usage.pop("output_tokens", 0)
    return LLMResult(
        text=text, finish_reason="stop", partial=why, unkept_output=unkept_output, reasoning_text=reasoning_text,
        input_tokens=input_tokens, output_tokens=output_tokens, usage_reported=bool(input_tokens), **usage,
    )  # fmt: skip
