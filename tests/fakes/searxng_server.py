"""A fake SearXNG on 127.0.0.1: answers `GET /search?q=...&format=json` like SearXNG's
JSON API, so `web_search` runs its real HTTP client code against it.

    with FakeSearxng() as searx:
        searx.results = [{"title": "...", "url": "...", "content": "..."}]
        settings.WEB_SEARCH_URL = searx.url
        ...
        assert searx.queries == ["what was asked"]

`mode` makes it misbehave: "ok", "http_error" (503), "not_json", "no_results_key",
"slow" (sleeps `delay` seconds before answering), "huge" (a body over 2 MiB).
"""

import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class FakeSearxng:
    results: list[dict[str, Any]] = field(default_factory=list)
    mode: str = "ok"
    delay: float = 2.0
    queries: list[str] = field(default_factory=list)
    requests: list[dict[str, list[str]]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the fake first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/search"

    def start(self) -> "FakeSearxng":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # keep test output clean

            def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    self.wfile.write(body)

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                if parts.path != "/search":
                    self._send(404, b'{"error": "not found"}')
                    return
                params = parse_qs(parts.query)
                fake.requests.append(params)
                fake.queries.append(params.get("q", [""])[0])
                if params.get("format") != ["json"]:
                    # SearXNG answers 403 when the JSON format is not enabled / requested.
                    self._send(403, b"Forbidden", "text/plain")
                    return
                if fake.mode == "slow":
                    time.sleep(fake.delay)
                if fake.mode == "http_error":
                    self._send(503, b"upstream engines unavailable", "text/plain")
                elif fake.mode == "not_json":
                    self._send(200, b"<html>not json</html>", "text/html")
                elif fake.mode == "no_results_key":
                    self._send(200, json.dumps({"query": params.get("q", [""])[0]}).encode())
                elif fake.mode == "huge":
                    filler = [{"title": "x" * 1000, "url": "https://example.com", "content": "y" * 1000}] * 1500
                    self._send(200, json.dumps({"results": filler}).encode())
                else:
                    body = {
                        "query": params.get("q", [""])[0],
                        "number_of_results": len(fake.results),
                        "results": fake.results,
                        "answers": [],
                        "suggestions": [],
                    }
                    self._send(200, json.dumps(body).encode())

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-searxng", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeSearxng":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
