"""The built-in `local` provider: offline and deterministic, the embedded default.

It echoes the last user message ("Echo: ..."), reports usage counted from text
length (chat.llm.base.estimate_tokens: about 4 characters a token, its own
"tokenizer"; every counting rule of chat.llm.counting bounds it), can stream, and can
simulate latency (LOCAL_LLM_LATENCY_MS, spread over the streamed pieces).

So that tool plumbing can be exercised offline, it asks for a tool when the last
user message says so in a machine format, and only for a tool it was offered:

    [[tool web_search {"query": "parley"}]]

After a tool result it answers "Tool <name> returned: <result>".

Of CallOptions it honours `stop` (the reply ends before the first stop sequence,
finish "stop") and tool_choice "none" (no tool is asked for); sampling options
change nothing in a deterministic model.

Offered the orchestrator's `next_speaker` function, it coordinates deterministically:
it picks the participants in the order of the function's id list, one per reply
given since the user's message, then ends (null). So round tables and orchestrated
panels run offline too.

Embeddings (`embed`, `aembed`: POST /v1/embeddings) are unit vectors made by feature
hashing: each lower-cased word and each pair of neighbouring words (a token array:
each id and each pair) adds +-1 at a place chosen by its BLAKE2b digest. The same
text always gives the same vector, in every process; texts that share words are
closer (cosine) than texts that share none. DEFAULT_DIMENSIONS places unless the
request asks for `dimensions`. Usage: a text's tokens as `estimate_tokens` counts
them, a token array's length.
"""

import asyncio
import hashlib
import json
import math
import re
import time
from collections.abc import Sequence
from typing import Any

from django.conf import settings

from chat.llm.base import (
    CHARS_PER_TOKEN,
    STOPPED_BY_OWNER,
    CallOptions,
    ChatMessage,
    DeltaCallback,
    EmbeddingInput,
    EmbeddingResult,
    LLMResult,
    StopRequested,
    ToolCallRequest,
    estimate_prompt_tokens,
    estimate_tokens,
    partial_result,
)

TOOL_REQUEST = re.compile(r"\[\[tool\s+(?P<name>[A-Za-z0-9_\-]+)\s*(?P<args>\{.*?\})?\s*\]\]", re.DOTALL)
# The orchestrator's function (chat.engine.orchestrator_protocol.NEXT_SPEAKER; not imported: the
# provider layer does not depend on the chat models).
NEXT_SPEAKER = "next_speaker"

DEFAULT_DIMENSIONS = 256
WORD = re.compile(r"\w+")
# Embedding this many input tokens or more runs off the event loop (aembed): a bigger
# request would keep the loop from other requests for a millisecond or more.
ON_LOOP_TOKENS = 2000


def _features(item: EmbeddingInput) -> list[str]:
    """What a vector is made of: words and neighbouring pairs (ids for a token array).
    An input without a word (punctuation only) is one feature, itself."""
    words = [str(token) for token in item] if isinstance(item, list) else WORD.findall(item.lower())
    if not words:
        return [str(item)]
    return words + [f"{first} {second}" for first, second in zip(words, words[1:], strict=False)]


def local_vector(item: EmbeddingInput, dimensions: int = DEFAULT_DIMENSIONS) -> list[float]:
    """The local model's unit vector for one input (feature hashing, module docstring)."""
    vector = [0.0] * dimensions
    for feature in _features(item):
        digest = int.from_bytes(hashlib.blake2b(feature.encode("utf-8", "surrogatepass"), digest_size=8).digest())
        vector[digest % dimensions] += 1.0 if digest >> 63 else -1.0
    norm = math.sqrt(sum(value * value for value in vector))
    if norm == 0:  # every feature cancelled out: still a unit vector, still the input's own
        vector[int.from_bytes(hashlib.blake2b(str(item).encode("utf-8", "surrogatepass"), digest_size=8).digest())
               % dimensions] = 1.0  # fmt: skip
        return vector
    return [value / norm for value in vector]


def local_tokens(item: EmbeddingInput) -> int:
    return len(item) if isinstance(item, list) else estimate_tokens(item)


class LocalProvider:
    name = "local"

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
        input_tokens = estimate_prompt_tokens(messages) + (estimate_tokens(json.dumps(list(tools))) if tools else 0)
        last = messages[-1] if messages else ChatMessage(role="user")
        options = options or CallOptions()
        offered = {tool["name"] for tool in tools or ()} if options.tool_choice != "none" else set()

        if NEXT_SPEAKER in offered:
            choice = self._next_speaker(messages, next(t for t in tools or () if t["name"] == NEXT_SPEAKER))
            return LLMResult(
                text="", input_tokens=input_tokens, output_tokens=estimate_tokens(choice.raw_arguments),
                tool_calls=(choice,), finish_reason="tool_calls",
            )  # fmt: skip

        if last.role == "user" and (requests := self._tool_requests(last.content, offered)):
            self._sleep(settings.LOCAL_LLM_LATENCY_MS)
            output_tokens = estimate_tokens(json.dumps([call.as_dict() for call in requests]))
            return LLMResult(
                text="", input_tokens=input_tokens, output_tokens=output_tokens, tool_calls=requests,
                finish_reason="tool_calls",
            )  # fmt: skip

        if last.role == "tool":
            reply = f"Tool {last.name or 'call'} returned: {last.content}"
        else:
            # The question, even when earlier replies of a round table come after it.
            asked = next((m for m in reversed(messages) if m.role == "user"), last)
            reply = f"Echo: {asked.content}"
        finish_reason = "stop"
        for stop in options.stop:
            if stop and stop in reply:
                reply = reply[: reply.index(stop)]
        limit = max_output_tokens * CHARS_PER_TOKEN
        if len(reply) > limit:
            reply, finish_reason = reply[:limit], "length"

        pieces = self._pieces(reply) if on_delta else [reply]
        pause_ms = settings.LOCAL_LLM_LATENCY_MS / max(len(pieces), 1)
        for number, piece in enumerate(pieces, start=1):
            self._sleep(pause_ms)
            if on_delta and piece:
                try:
                    on_delta(piece)
                except StopRequested:
                    said = "".join(pieces[:number])
                    return partial_result(text=said, why=STOPPED_BY_OWNER, input_tokens=input_tokens)
        return LLMResult(
            text=reply, input_tokens=input_tokens, output_tokens=estimate_tokens(reply), finish_reason=finish_reason
        )

    def embed(self, *, model: str, inputs: Sequence[EmbeddingInput], dimensions: int | None = None,
              user: str = "") -> EmbeddingResult:  # fmt: skip
        self._sleep(settings.LOCAL_LLM_LATENCY_MS)
        return self._vectors(inputs, dimensions)

    async def aembed(self, *, model: str, inputs: Sequence[EmbeddingInput], dimensions: int | None = None,
                     user: str = "") -> EmbeddingResult:  # fmt: skip
        if settings.LOCAL_LLM_LATENCY_MS > 0:
            await asyncio.sleep(settings.LOCAL_LLM_LATENCY_MS / 1000)
        tokens = sum(local_tokens(item) for item in inputs)
        if tokens < ON_LOOP_TOKENS:
            return self._vectors(inputs, dimensions, tokens=tokens)
        return await asyncio.get_running_loop().run_in_executor(None, self._vectors, inputs, dimensions, tokens)

    @staticmethod
    def _vectors(inputs: Sequence[EmbeddingInput], dimensions: int | None, tokens: int | None = None) -> EmbeddingResult:
        size = dimensions or DEFAULT_DIMENSIONS
        return EmbeddingResult(
            vectors=[local_vector(item, size) for item in inputs],
            input_tokens=sum(local_tokens(item) for item in inputs) if tokens is None else tokens,
        )

    @staticmethod
    def _next_speaker(messages: Sequence[ChatMessage], tool: dict[str, Any]) -> ToolCallRequest:
        ids = [i for i in tool["parameters"]["properties"]["participant_id"].get("enum", []) if i is not None]
        replies = 0
        for message in reversed(messages):
            if message.role == "user":
                break
            replies += message.role == "assistant"
        chosen = ids[replies] if replies < len(ids) else None
        reason = "next in order" if chosen is not None else "everyone has answered"
        return ToolCallRequest.from_raw(
            id="local_next_speaker", name=NEXT_SPEAKER, raw=json.dumps({"participant_id": chosen, "reason": reason})
        )

    @staticmethod
    def _tool_requests(text: str, offered: set[str]) -> tuple[ToolCallRequest, ...]:
        requests = []
        for number, match in enumerate(TOOL_REQUEST.finditer(text), start=1):
            if match["name"] in offered:
                requests.append(
                    ToolCallRequest.from_raw(id=f"local_call_{number}", name=match["name"], raw=match["args"])
                )
        return tuple(requests)

    @staticmethod
    def _pieces(text: str) -> list[str]:
        words, size = re.findall(r"\S+\s*|\s+", text), max(settings.LOCAL_LLM_PIECE_WORDS, 1)
        return ["".join(words[i : i + size]) for i in range(0, len(words), size)] or [""]

    @staticmethod
    def _sleep(milliseconds: float) -> None:
        if milliseconds > 0:
            time.sleep(milliseconds / 1000)
