"""Scriptable fake model servers: an OpenAI-compatible `/v1/chat/completions` (and
`/v1/embeddings`: a `Reply`'s input_tokens are its usage) and an Anthropic `/v1/messages`, each a stdlib `ThreadingHTTPServer` on 127.0.0.1 in a
daemon thread, spoken to by the real `openai` / `anthropic` SDKs.

Script what the next requests get, in order; when the script is empty the server
answers `default` (a plain reply):

    server.script(Error(429), Reply(text="hi", input_tokens=12, output_tokens=3))
    server.script(Reply(tool_calls=[ToolUse("web_search", {"query": "x"})]))
    server.script(Stall(5.0))                 # answer nothing for 5 s (client timeouts)
    server.script(CutStream(text="half a"))   # stream some text, then end without finishing
    server.script(Reply(input_tokens=2000, cached_input_tokens=1800, output_tokens=300,
                        reasoning_tokens=200, reasoning="Let me think."))  # token classes, thinking

Each response is rendered plain or as a stream (server-sent events) according to
the request's `"stream"`. A reply honours the request's stop sequences as the real
APIs do (OpenAI `stop`, Anthropic `stop_sequences`): the text ends before the first
one found, and the finish is a normal stop (Anthropic: `stop_sequence`). Every request is kept in `server.requests` (path, headers,
JSON body) so a test can check what the SDK sent (tools, tool results, keys).

Usage is reported in each API's own shape, as the pinned SDKs type it (openai 3.52:
`CompletionUsage`; anthropic 2.11: `Usage`, `MessageDeltaUsage`), in every token class
a reply sets. A `Reply` counts the way Parley's LLMResult does, the same for both
fakes: `input_tokens` is all input, of it `cached_input_tokens` and
`cache_write_tokens`; `output_tokens` is all output, of it `reasoning_tokens`.

- OpenAI: `prompt_tokens` (all input) with `prompt_tokens_details.cached_tokens` and
  `.cache_write_tokens` (OpenRouter reports it there), `completion_tokens` (all
  output) with `completion_tokens_details.reasoning_tokens`; the details objects are
  sent once a reply has a class set. Streamed, with `stream_options.include_usage`,
  every chunk has `"usage": null` but the last, which has no choices and the usage
  (`continuous_usage`: every chunk has the usage so far, as vLLM's
  `continuous_usage_stats`). Reasoning text streams, before the content, as
  `delta.reasoning_content` (vLLM, DeepSeek) or `delta.reasoning` (OpenRouter,
  `reasoning_field="reasoning"`); a plain answer carries it on the message.
- Anthropic: `input_tokens` is the uncached input only, beside
  `cache_read_input_tokens`, `cache_creation_input_tokens` (and its `cache_creation`
  breakdown), `output_tokens` (all output) and `output_tokens_details.thinking_tokens`.
  Streamed: `message_start` carries the input and 1 output token, a `ping`, the
  thinking block (`content_block_start` of type `thinking`, `thinking_delta` pieces,
  a `signature_delta`, `content_block_stop`) before the text, and `message_delta`
  the cumulative output (`cumulative_delta_usage`: the input counts again too, as
  the current API sends them).
"""

import base64
import json
import math
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# --- scripted responses -----------------------------------------------------------


@dataclass
class ToolUse:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str = ""


@dataclass
class Reply:
    text: str = "Hello from the fake model."
    tool_calls: list[ToolUse] = field(default_factory=list)
    input_tokens: int = 11
    output_tokens: int = 7
    # False: the server reports no usage at all (some compatible servers don't).
    include_usage: bool = True
    # None: "tool_calls"/"tool_use" when there are tool calls, else a normal stop.
    finish_reason: str | None = None
    # The stop sequence that ended the text (set by the server from the request).
    stop_sequence: str | None = None
    # Streaming: characters per text (and reasoning) chunk and a pause between chunks.
    chunk_chars: int = 4
    chunk_delay: float = 0.0
    # Token classes (module docstring): parts of input_tokens and of output_tokens.
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    # The model's reasoning, produced before the text (thinking; not the reply).
    reasoning: str = ""
    # OpenAI-compatible: the delta / message field it comes in ("reasoning_content":
    # vLLM, DeepSeek; "reasoning": OpenRouter).
    reasoning_field: str = "reasoning_content"
    # OpenAI: usage on every streamed chunk, counting what was sent so far.
    continuous_usage: bool = False
    # Anthropic: message_delta repeats the input counts (cumulative), not only output.
    cumulative_delta_usage: bool = False

    @property
    def uncached_input_tokens(self) -> int:
        return self.input_tokens - self.cached_input_tokens - self.cache_write_tokens

    @property
    def has_classes(self) -> bool:
        return bool(self.cached_input_tokens or self.cache_write_tokens or self.reasoning_tokens)


@dataclass
class Error:
    status: int = 500
    message: str = "The fake server failed on purpose."
    # A short Retry-After keeps the SDKs' backoff fast in tests; drop it to test theirs.
    headers: dict[str, str] = field(default_factory=lambda: {"retry-after-ms": "10"})


@dataclass
class Stall:
    """Answer nothing for `seconds` (the client times out), then `then` if still connected."""

    seconds: float
    then: Any = None


@dataclass
class CutStream:
    """Stream `reasoning` then `text`, then end the response without the provider's
    end-of-reply events (and without usage, where the API sends it last)."""

    text: str = "This reply is cut"
    reasoning: str = ""
    reasoning_field: str = "reasoning_content"
    # OpenAI: usage so far on every chunk (Reply.continuous_usage), the cut all the same.
    continuous_usage: bool = False


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


# --- the server -------------------------------------------------------------------


class FakeLLMServer:
    default: Any = Reply()

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self._script: deque = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # public API
    def start(self) -> "FakeLLMServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                server._handle(self)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        httpd = self._httpd
        self._thread = threading.Thread(
            target=lambda: httpd.serve_forever(poll_interval=0.05), name=type(self).__name__, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        raise NotImplementedError

    def script(self, *responses: Any) -> None:
        with self._lock:
            self._script.extend(responses)

    def reset(self) -> None:
        with self._lock:
            self._script.clear()
            self.requests.clear()

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._script)

    # internals
    def _next(self) -> Any:
        with self._lock:
            return self._script.popleft() if self._script else self.default

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        with self._lock:
            self.requests.append(
                RecordedRequest(handler.path, {k.lower(): v for k, v in handler.headers.items()}, body)
            )
        response = self._next()
        try:
            while isinstance(response, Stall):
                if self._stopping.wait(response.seconds) or response.then is None:
                    return
                response = response.then
            if isinstance(response, Reply):
                response = self._stopped(response, body)
            if not self._route_ok(handler.path):
                self._send_json(handler, 404, {"error": {"message": f"no route {handler.path}"}})
            elif isinstance(response, Error):
                self._send_json(handler, response.status, self._error_body(response), response.headers)
            elif isinstance(response, Reply) and handler.path.rstrip("/").endswith("/embeddings"):
                self._send_json(handler, 200, self._embedding_body(response, body))
            elif body.get("stream"):
                self._send_events(handler, self._stream_events(response, body))
            elif isinstance(response, Reply):
                self._send_json(handler, 200, self._plain_body(response, body))
            else:
                raise TypeError(f"cannot answer {response!r} without streaming")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout); nothing to answer

    def _stopped(self, reply: Reply, request: dict) -> Reply:
        found = sorted((reply.text.index(stop), stop) for stop in self._stops(request) if stop and stop in reply.text)
        if not found:
            return reply
        at, stop = found[0]
        return replace(reply, text=reply.text[:at], finish_reason=self._stop_finish(), stop_sequence=stop)

    @staticmethod
    def _send_json(handler: BaseHTTPRequestHandler, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(data)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    def _send_events(self, handler: BaseHTTPRequestHandler, events: Any) -> None:
        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream")
        handler.send_header("cache-control", "no-cache")
        handler.end_headers()
        # HTTP/1.0 without a length: the body ends when the connection closes.
        for item in events:
            if isinstance(item, float):
                time.sleep(item)
                continue
            handler.wfile.write(item.encode())
            handler.wfile.flush()

    @staticmethod
    def _pieces(text: str, size: int) -> list[str]:
        return [text[i : i + size] for i in range(0, len(text), max(size, 1))]

    # per protocol
    def _route_ok(self, path: str) -> bool:
        raise NotImplementedError

    def _stops(self, request: dict) -> list[str]:
        raise NotImplementedError

    def _stop_finish(self) -> str:
        raise NotImplementedError

    def _error_body(self, error: Error) -> dict:
        raise NotImplementedError

    def _plain_body(self, reply: Reply, request: dict) -> dict:
        raise NotImplementedError

    def _stream_events(self, response: Any, request: dict) -> Any:
        raise NotImplementedError

    def _embedding_body(self, reply: Reply, request: dict) -> dict:
        raise NotImplementedError


def _share(total: int, done: int, count: int) -> int:
    """Of `total` tokens spread over `count` pieces, those of the first `done`."""
    return math.ceil(total * done / count) if count else total


def fake_embedding(item: str | list[int], size: int) -> list[float]:
    """The fake OpenAI server's vector for one input: its length first, then ones."""
    return [float(len(item)), *([1.0] * (size - 1))][:size]


# What Anthropic sends to verify a thinking block (opaque to clients).
THINKING_SIGNATURE = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"


class FakeOpenAIServer(FakeLLMServer):
    """POST /v1/chat/completions, as OpenAI and compatible servers answer it."""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _route_ok(self, path: str) -> bool:
        return path.rstrip("/").endswith(("/chat/completions", "/embeddings"))

    def _embedding_body(self, reply: Reply, request: dict) -> dict:
        """POST /v1/embeddings as OpenAI answers it (`CreateEmbeddingResponse`): one
        `embedding` per input, floats or (`encoding_format` base64, the SDK's default)
        base64 of little-endian float32; usage `prompt_tokens` and `total_tokens`
        (the reply's input_tokens; `include_usage` False: no usage). A vector is
        fake_embedding of its input, `dimensions` long (default 8)."""
        inputs = request.get("input")
        if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
            inputs = [inputs]
        size = request.get("dimensions") or 8
        data = []
        for index, item in enumerate(inputs or []):
            vector = fake_embedding(item, size)
            if request.get("encoding_format") == "base64":
                vector = base64.b64encode(struct.pack(f"<{size}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": vector})
        body: dict[str, Any] = {"object": "list", "data": data, "model": request.get("model", "fake")}
        if reply.include_usage:
            body["usage"] = {"prompt_tokens": reply.input_tokens, "total_tokens": reply.input_tokens}
        return body

    def _stops(self, request: dict) -> list[str]:
        stop = request.get("stop") or []
        return [stop] if isinstance(stop, str) else list(stop)

    def _stop_finish(self) -> str:
        return "stop"

    def _error_body(self, error: Error) -> dict:
        kind = {429: "rate_limit_exceeded", 400: "invalid_request_error"}.get(error.status, "server_error")
        return {"error": {"message": error.message, "type": kind, "code": kind}}

    @staticmethod
    def _calls(reply: Reply) -> list[dict]:
        return [
            {
                "id": call.id or f"call_{n}",
                "type": "function",
                "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
            }
            for n, call in enumerate(reply.tool_calls, start=1)
        ]

    @staticmethod
    def _finish(reply: Reply) -> str:
        return reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")

    def _usage(self, reply: Reply, *, output_tokens: int | None = None, reasoning_tokens: int | None = None) -> dict:
        """`CompletionUsage`: all input and all output, with the details objects
        (OpenAI's fields, and OpenRouter's `cache_write_tokens`) once a class is set."""
        output = reply.output_tokens if output_tokens is None else output_tokens
        usage: dict[str, Any] = {
            "prompt_tokens": reply.input_tokens,
            "completion_tokens": output,
            "total_tokens": reply.input_tokens + output,
        }
        if reply.has_classes:
            usage["prompt_tokens_details"] = {
                "cached_tokens": reply.cached_input_tokens,
                "cache_write_tokens": reply.cache_write_tokens,
                "audio_tokens": 0,
            }
            usage["completion_tokens_details"] = {
                "reasoning_tokens": reply.reasoning_tokens if reasoning_tokens is None else reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            }
        return usage

    @staticmethod
    def _reasoning_delta(field_name: str, piece: str) -> dict:
        # DeepSeek and vLLM send `content: null` beside the reasoning; OpenRouter
        # adds its structured `reasoning_details` to `reasoning`.
        delta: dict[str, Any] = {"content": None, field_name: piece}
        if field_name == "reasoning":
            delta["reasoning_details"] = [{"type": "reasoning.text", "text": piece, "format": "unknown", "index": 0}]
        return delta

    def _plain_body(self, reply: Reply, request: dict) -> dict:
        message: dict[str, Any] = {"role": "assistant", "content": reply.text or None, "refusal": None}
        if reply.reasoning:
            message[reply.reasoning_field] = reply.reasoning
        if reply.tool_calls:
            message["tool_calls"] = self._calls(reply)
        body = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model", "fake"),
            "choices": [{"index": 0, "message": message, "finish_reason": self._finish(reply), "logprobs": None}],
        }
        if reply.include_usage:
            body["usage"] = self._usage(reply)
        return body

    def _stream_events(self, response: Any, request: dict) -> Any:
        model = request.get("model", "fake")
        cut = isinstance(response, CutStream)
        reply: Reply = (
            Reply(
                text=response.text,
                reasoning=response.reasoning,
                reasoning_field=response.reasoning_field,
                continuous_usage=response.continuous_usage,
            )
            if cut
            else response
        )
        asked = bool((request.get("stream_options") or {}).get("include_usage"))
        # Asked for usage, OpenAI puts `"usage": null` on every chunk but the last.
        null_usage = asked and reply.include_usage

        def chunk(choices: list, usage: dict | None = None) -> str:
            data = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": choices,
            }
            if usage is not None or null_usage:
                data["usage"] = usage
            return f"data: {json.dumps(data)}\n\n"

        def delta(content: dict, finish: str | None = None) -> list:
            return [{"index": 0, "delta": content, "finish_reason": finish, "logprobs": None}]

        def so_far(output: int, reasoning: int) -> dict | None:
            # vLLM's continuous_usage_stats: each chunk counts what was produced so far.
            if not (reply.continuous_usage and reply.include_usage):
                return None
            return self._usage(reply, output_tokens=output, reasoning_tokens=reasoning)

        thoughts = self._pieces(reply.reasoning, reply.chunk_chars)
        pieces = self._pieces(reply.text, reply.chunk_chars)
        yield chunk(delta({"role": "assistant", "content": ""}), so_far(0, 0))
        for n, piece in enumerate(thoughts, start=1):
            if reply.chunk_delay:
                yield reply.chunk_delay
            thought = _share(reply.reasoning_tokens, n, len(thoughts))
            yield chunk(delta(self._reasoning_delta(reply.reasoning_field, piece)), so_far(thought, thought))
        answer = reply.output_tokens - reply.reasoning_tokens
        for n, piece in enumerate(pieces, start=1):
            if reply.chunk_delay:
                yield reply.chunk_delay
            output = reply.reasoning_tokens + _share(answer, n, len(pieces))
            yield chunk(delta({"content": piece}), so_far(output, reply.reasoning_tokens))
        if cut:
            return
        full = so_far(reply.output_tokens, reply.reasoning_tokens)
        for index, call in enumerate(self._calls(reply)):
            arguments = call["function"]["arguments"]
            # Like the real API: id and name first, then the arguments in pieces.
            yield chunk(delta({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                               "function": {"name": call["function"]["name"], "arguments": ""}}]}),
                        full)  # fmt: skip
            for piece in self._pieces(arguments, 5):
                yield chunk(delta({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}), full)
        yield chunk(delta({}, self._finish(reply)), full)
        if reply.include_usage and asked:
            yield chunk([], self._usage(reply))
        yield "data: [DONE]\n\n"


class FakeAnthropicServer(FakeLLMServer):
    """POST /v1/messages, as the Anthropic Messages API answers it."""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _route_ok(self, path: str) -> bool:
        return path.split("?")[0].rstrip("/") == "/v1/messages"

    def _stops(self, request: dict) -> list[str]:
        return list(request.get("stop_sequences") or [])

    def _stop_finish(self) -> str:
        return "stop_sequence"

    def _error_body(self, error: Error) -> dict:
        kind = {429: "rate_limit_error", 529: "overloaded_error", 400: "invalid_request_error"}.get(
            error.status, "api_error"
        )
        return {"type": "error", "error": {"type": kind, "message": error.message}}

    @staticmethod
    def _stop(reply: Reply) -> str:
        return reply.finish_reason or ("tool_use" if reply.tool_calls else "end_turn")

    @staticmethod
    def _blocks(reply: Reply) -> list[dict]:
        blocks: list[dict] = []
        if reply.reasoning:
            blocks.append({"type": "thinking", "thinking": reply.reasoning, "signature": THINKING_SIGNATURE})
        if reply.text:
            blocks.append({"type": "text", "text": reply.text})
        blocks += [
            {"type": "tool_use", "id": call.id or f"toolu_{n}", "name": call.name, "input": call.arguments}
            for n, call in enumerate(reply.tool_calls, start=1)
        ]
        return blocks

    @staticmethod
    def _input_usage(reply: Reply) -> dict:
        # Anthropic's input_tokens leaves out what was read from or written to the cache.
        return {
            "input_tokens": reply.uncached_input_tokens,
            "cache_creation_input_tokens": reply.cache_write_tokens,
            "cache_read_input_tokens": reply.cached_input_tokens,
        }

    def _usage(self, reply: Reply, *, started: bool = False) -> dict:
        """`Usage` of a plain answer, or of `message_start` (`started`: one output
        token so far, no output details yet)."""
        usage = {
            **self._input_usage(reply),
            "cache_creation": {"ephemeral_5m_input_tokens": reply.cache_write_tokens, "ephemeral_1h_input_tokens": 0},
            "output_tokens": 1 if started else reply.output_tokens,
            "service_tier": "standard",
        }
        if reply.reasoning_tokens and not started:
            usage["output_tokens_details"] = {"thinking_tokens": reply.reasoning_tokens}
        return usage

    def _delta_usage(self, reply: Reply) -> dict:
        """`MessageDeltaUsage`: cumulative output (and input, when the reply says so)."""
        usage: dict[str, Any] = self._input_usage(reply) if reply.cumulative_delta_usage else {}
        usage["output_tokens"] = reply.output_tokens
        if reply.reasoning_tokens:
            usage["output_tokens_details"] = {"thinking_tokens": reply.reasoning_tokens}
        return usage

    def _plain_body(self, reply: Reply, request: dict) -> dict:
        return {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": request.get("model", "fake"),
            "content": self._blocks(reply),
            "stop_reason": self._stop(reply),
            "stop_sequence": reply.stop_sequence,
            "usage": self._usage(reply) if reply.include_usage else {"input_tokens": 0, "output_tokens": 0},
        }  # fmt: skip

    @staticmethod
    def _event(kind: str, data: dict) -> str:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"

    def _stream_events(self, response: Any, request: dict) -> Any:
        ev = self._event
        cut = isinstance(response, CutStream)
        reply = Reply(text=response.text, reasoning=response.reasoning) if cut else response
        message = {
            "id": "msg_fake", "type": "message", "role": "assistant", "model": request.get("model", "fake"),
            "content": [], "stop_reason": None, "stop_sequence": None, "usage": self._usage(reply, started=True),
        }  # fmt: skip
        yield ev("message_start", {"message": message})
        yield ev("ping", {})
        blocks = self._blocks(reply)
        for index, block in enumerate(blocks):
            if block["type"] in ("text", "thinking"):
                kind = block["type"]
                empty = {"type": "thinking", "thinking": "", "signature": ""} if kind == "thinking" else {"type": "text", "text": ""}  # fmt: skip
                yield ev("content_block_start", {"index": index, "content_block": empty})
                for piece in self._pieces(block[kind], reply.chunk_chars):
                    if reply.chunk_delay:
                        yield reply.chunk_delay
                    yield ev("content_block_delta", {"index": index, "delta": {"type": f"{kind}_delta", kind: piece}})
            else:
                start = {**block, "input": {}}
                yield ev("content_block_start", {"index": index, "content_block": start})
                for piece in self._pieces(json.dumps(block["input"]), 5):
                    yield ev("content_block_delta",
                             {"index": index, "delta": {"type": "input_json_delta", "partial_json": piece}})  # fmt: skip
            if cut and index == len(blocks) - 1:
                return  # cut in the last block: no stop events, no final usage
            if block["type"] == "thinking":
                # The signature comes just before the thinking block's stop.
                yield ev("content_block_delta",
                         {"index": index, "delta": {"type": "signature_delta", "signature": block["signature"]}})  # fmt: skip
            yield ev("content_block_stop", {"index": index})
        if cut:
            return
        yield ev("message_delta", {"delta": {"stop_reason": self._stop(reply), "stop_sequence": reply.stop_sequence},
                                   "usage": self._delta_usage(reply)})  # fmt: skip
        yield ev("message_stop", {})
