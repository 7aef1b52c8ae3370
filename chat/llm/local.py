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
"""

import json
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
