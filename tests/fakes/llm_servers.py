"""Scriptable fake model servers: an OpenAI-compatible `/v1/chat/completions` and an
Anthropic `/v1/messages`, each a stdlib `ThreadingHTTPServer` on 127.0.0.1 in a
daemon thread, spoken to by the real `openai` / `anthropic` SDKs.

Script what the next requests get, in order; when the script is empty the server
answers `default` (a plain reply):

    server.script(Error(429), Reply(text="hi", input_tokens=12, output_tokens=3))
    server.script(Reply(tool_calls=[ToolUse("web_search", {"query": "x"})]))
    server.script(Stall(5.0))                 # answer nothing for 5 s (client timeouts)
    server.script(CutStream(text="half a"))   # stream some text, then end without finishing

Each response is rendered plain or as a stream (server-sent events) according to
the request's `"stream"`. A reply honours the request's stop sequences as the real
APIs do (OpenAI `stop`, Anthropic `stop_sequences`): the text ends before the first
one found, and the finish is a normal stop (Anthropic: `stop_sequence`). Every request is kept in `server.requests` (path, headers,
JSON body) so a test can check what the SDK sent (tools, tool results, keys).
"""

import json
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
    # Streaming: characters per text chunk and a pause between chunks.
    chunk_chars: int = 4
    chunk_delay: float = 0.0


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
    """Stream `text`, then end the response without the provider's end-of-reply events."""

    text: str = "This reply is cut"


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


class FakeOpenAIServer(FakeLLMServer):
    """POST /v1/chat/completions, as OpenAI and compatible servers answer it."""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _route_ok(self, path: str) -> bool:
        return path.rstrip("/").endswith("/chat/completions")

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

    def _usage(self, reply: Reply) -> dict:
        return {
            "prompt_tokens": reply.input_tokens,
            "completion_tokens": reply.output_tokens,
            "total_tokens": reply.input_tokens + reply.output_tokens,
        }

    def _plain_body(self, reply: Reply, request: dict) -> dict:
        message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
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

        def chunk(choices: list, usage: dict | None = None) -> str:
            data = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": choices,
            }
            if usage is not None:
                data["usage"] = usage
            return f"data: {json.dumps(data)}\n\n"

        def delta(content: dict, finish: str | None = None) -> list:
            return [{"index": 0, "delta": content, "finish_reason": finish}]

        if isinstance(response, CutStream):
            yield chunk(delta({"role": "assistant", "content": ""}))
            for piece in self._pieces(response.text, 4):
                yield chunk(delta({"content": piece}))
            return
        reply: Reply = response
        yield chunk(delta({"role": "assistant", "content": ""}))
        for piece in self._pieces(reply.text, reply.chunk_chars):
            if reply.chunk_delay:
                yield reply.chunk_delay
            yield chunk(delta({"content": piece}))
        for index, call in enumerate(self._calls(reply)):
            arguments = call["function"]["arguments"]
            # Like the real API: id and name first, then the arguments in pieces.
            yield chunk(delta({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                               "function": {"name": call["function"]["name"], "arguments": ""}}]}))  # fmt: skip
            for piece in self._pieces(arguments, 5):
                yield chunk(delta({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}))
        yield chunk(delta({}, self._finish(reply)))
        if reply.include_usage and (request.get("stream_options") or {}).get("include_usage"):
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
        blocks: list[dict] = [{"type": "text", "text": reply.text}] if reply.text else []
        blocks += [
            {"type": "tool_use", "id": call.id or f"toolu_{n}", "name": call.name, "input": call.arguments}
            for n, call in enumerate(reply.tool_calls, start=1)
        ]
        return blocks

    def _plain_body(self, reply: Reply, request: dict) -> dict:
        return {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": request.get("model", "fake"),
            "content": self._blocks(reply),
            "stop_reason": self._stop(reply),
            "stop_sequence": reply.stop_sequence,
            "usage": {"input_tokens": reply.input_tokens if reply.include_usage else 0,
                      "output_tokens": reply.output_tokens if reply.include_usage else 0},
        }  # fmt: skip

    @staticmethod
    def _event(kind: str, data: dict) -> str:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"

    def _stream_events(self, response: Any, request: dict) -> Any:
        ev = self._event
        reply = response if isinstance(response, Reply) else Reply(text=response.text)
        message = {
            "id": "msg_fake", "type": "message", "role": "assistant", "model": request.get("model", "fake"),
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": reply.input_tokens, "output_tokens": 1},
        }  # fmt: skip
        yield ev("message_start", {"message": message})
        for index, block in enumerate(self._blocks(reply)):
            if block["type"] == "text":
                yield ev("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}})
                for piece in self._pieces(block["text"], reply.chunk_chars):
                    if reply.chunk_delay:
                        yield reply.chunk_delay
                    yield ev("content_block_delta", {"index": index, "delta": {"type": "text_delta", "text": piece}})
            else:
                start = {**block, "input": {}}
                yield ev("content_block_start", {"index": index, "content_block": start})
                for piece in self._pieces(json.dumps(block["input"]), 5):
                    yield ev("content_block_delta",
                             {"index": index, "delta": {"type": "input_json_delta", "partial_json": piece}})  # fmt: skip
            if isinstance(response, CutStream):
                return
            yield ev("content_block_stop", {"index": index})
        yield ev("message_delta", {"delta": {"stop_reason": self._stop(reply), "stop_sequence": reply.stop_sequence},
                                   "usage": {"output_tokens": reply.output_tokens}})  # fmt: skip
        yield ev("message_stop", {})
