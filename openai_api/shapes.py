"""OpenAI's answer shapes, built from a finished turn as GET turns/{id} shows it
(the worker publishes it with `done`, or it is read): `chat.completion`, and the
`chat.completion.chunk` events of a stream (openai-python's types/chat are the
reference for every field)."""

import base64
import json
import struct
from datetime import datetime
from decimal import Decimal
from typing import Any

from openai_api.errors import error_body

COMPLETION_ID_PREFIX = "chatcmpl-"


def completion_id(turn_id: Any) -> str:
    return f"{COMPLETION_ID_PREFIX}{str(turn_id).replace('-', '')}"


def created(turn: dict) -> int:
    return int(datetime.fromisoformat(turn["created_at"].replace("Z", "+00:00")).timestamp())


def reply_of(turn: dict) -> dict | None:
    """The turn's reply: the assistant message it added after the request's messages."""
    messages = turn.get("messages") or []
    last = messages[-1] if messages else None
    return last if turn["status"] == "completed" and last and last["role"] == "assistant" else None


def wire_tool_calls(message: dict) -> list[dict]:
    return [
        {"id": call["id"], "type": "function",
         "function": {"name": call["name"], "arguments": json.dumps(call.get("arguments") or {})}}
        for call in message.get("tool_calls") or ()
    ]  # fmt: skip


def finish_reason(turn: dict, message: dict) -> str:
    calls = turn.get("llm_calls") or []
    reason = calls[-1].get("finish_reason") if calls else ""
    if message.get("tool_calls"):
        return "tool_calls"
    return reason if reason in ("stop", "length") else "stop"


def usage(turn: dict) -> dict[str, Any]:
    """OpenAI's usage shape for what the turn's calls were billed: prompt tokens are
    all input, of it `cached_tokens`; completion tokens all output, of it
    `reasoning_tokens`. `cost` (the credits charged, as OpenRouter reports it) is
    added as a JSON number by `dumps`."""
    calls = turn.get("llm_calls") or ()

    def total(name: str) -> int:
        return sum(call.get(name) or 0 for call in calls)

    prompt, completion = total("input_tokens"), total("output_tokens")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": total("cached_input_tokens")},
        "completion_tokens_details": {"reasoning_tokens": total("reasoning_tokens")},
    }


def cost_of(turn: dict) -> str:
    """The credits charged for the request, exact (never through a float)."""
    charged = turn.get("credits_charged")
    return f"{Decimal(charged) + 0:f}" if charged is not None else "0"


def dumps(body: dict[str, Any], *, turn: dict) -> str:
    """`body` as JSON, its `usage` (the last key) given `cost`: a JSON number
    written from the Decimal, so no digit is lost."""
    text = json.dumps(body)
    if body.get("usage") is None:
        return text
    # usage is the last key of body and cost the last of usage: close both after it.
    return f'{text[:-2]}, "cost": {cost_of(turn)}}}}}'


def failure(turn: dict) -> dict:
    """The error body of a turn that did not complete (the provider failed)."""
    message = turn.get("error") or "The model did not answer."
    return error_body(message, type="api_error", code="upstream_error")


def completion(turn: dict) -> dict:
    """`chat.completion` for a completed turn."""
    message = reply_of(turn) or {"content": "", "tool_calls": None}
    calls = wire_tool_calls(message)
    answer: dict[str, Any] = {"role": "assistant", "content": message["content"] or None, "refusal": None}
    if calls:
        answer["tool_calls"] = calls
    return {
        "id": completion_id(turn["id"]),
        "object": "chat.completion",
        "created": created(turn),
        "model": turn["model_alias"],
        "choices": [{"index": 0, "message": answer, "logprobs": None, "finish_reason": finish_reason(turn, message)}],
        "system_fingerprint": None,
        "usage": usage(turn),
    }


class ChunkWriter:
    """The `data:` lines of one completion's stream, in order: the role, the text as
    it comes, the tool calls, the finish reason, the usage chunk when asked, [DONE]."""

    def __init__(self, *, turn_id: Any, model: str, created: int, include_usage: bool) -> None:
        self.base = {"id": completion_id(turn_id), "object": "chat.completion.chunk", "created": created,
                     "model": model, "system_fingerprint": None}  # fmt: skip
        self.include_usage = include_usage
        self.sent = ""  # the text sent so far

    def _line(self, choices: list, turn: dict | None = None, **extra: Any) -> str:
        chunk = {**self.base, "choices": choices, **extra}
        if self.include_usage and "usage" not in chunk:
            chunk["usage"] = None
        return f"data: {dumps(chunk, turn=turn or {})}\n\n"

    def _delta(self, delta: dict, finish: str | None = None) -> str:
        return self._line([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}])

    def start(self) -> str:
        return self._delta({"role": "assistant", "content": ""})

    def text(self, piece: str) -> str | None:
        if not piece:
            return None
        self.sent += piece
        return self._delta({"content": piece})

    def finish(self, turn: dict) -> list[str]:
        """The closing lines for the finished turn: the reply's text not sent yet (a
        replay, or events lost), its tool calls, the finish reason, the usage, [DONE];
        an error event when it failed."""
        message = reply_of(turn)
        if message is None:
            return [f"data: {json.dumps(failure(turn))}\n\n"]
        lines = []
        content = message["content"] or ""
        if content.startswith(self.sent) and len(content) > len(self.sent):
            lines.append(self.text(content[len(self.sent) :]))
        calls = wire_tool_calls(message)
        if calls:
            lines.append(self._delta({"tool_calls": [{"index": n, **call} for n, call in enumerate(calls)]}))
        lines.append(self._delta({}, finish_reason(turn, message)))
        if self.include_usage:
            lines.append(self._line([], usage=usage(turn), turn=turn))
        lines.append("data: [DONE]\n\n")
        return lines


# --- embeddings ---------------------------------------------------------------------------


def embedding_vector(vector: list[float], encoding_format: str) -> list[float] | str:
    """A vector as the client asked: floats, or base64 of little-endian float32 (what
    the openai SDK asks for by default, and decodes)."""
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


def embedding_list(*, vectors: list[list[float]], model: str, prompt_tokens: int, encoding_format: str) -> bytes:
    """The `list` of `embedding` objects, as JSON bytes."""
    body = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": embedding_vector(vector, encoding_format)}
            for index, vector in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
    return json.dumps(body, separators=(",", ":")).encode()
