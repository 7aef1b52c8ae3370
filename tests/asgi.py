"""Requests through the web process's own ASGI handler (core.asgi), in this process:
what gunicorn's ASGI worker hands it, without a server."""

import asyncio

from django.test.client import BOUNDARY, MULTIPART_CONTENT, encode_multipart


def multipart(fields: dict) -> tuple[bytes, tuple[bytes, bytes]]:
    """A multipart body of `fields` (files as SimpleUploadedFile) and its Content-Type header."""
    return encode_multipart(BOUNDARY, fields), (b"content-type", MULTIPART_CONTENT.encode())


async def asgi_call(
    app, method: str, path: str, *, body: bytes = b"", headers: list[tuple[bytes, bytes]] = (),  # noqa: ANN001
    chunked: bool = False,
) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    """(status, headers, body) of one request. `chunked`: the body in 64 KiB pieces
    without a Content-Length (Transfer-Encoding: chunked)."""
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)] or [b""]
    messages = [{"type": "http.request", "body": c, "more_body": n < len(chunks) - 1} for n, c in enumerate(chunks)]
    sent: list[dict] = []

    async def receive() -> dict:
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # the client stays connected; cancelled once answered
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    length = [(b"transfer-encoding", b"chunked")] if chunked else [(b"content-length", str(len(body)).encode())]
    scope = {
        "type": "http", "http_version": "1.1", "method": method, "path": path, "raw_path": path.encode(),
        "root_path": "", "scheme": "http", "query_string": b"", "server": ("testserver", 80),
        "client": ("127.0.0.1", 5000), "headers": [(b"host", b"testserver"), *length, *headers],
    }  # fmt: skip
    await asyncio.wait_for(app(scope, receive, send), timeout=60)
    start = next(m for m in sent if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode().lower(): v.decode() for k, v in start["headers"]}, content
