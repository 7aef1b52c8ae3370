"""The shared JSON error body for every answer under /api/, whoever produced it.

DRF views already answer through core.exceptions.exception_handler. What is left is
what Django answers before or around them: a URL that matches no route (with DEBUG
on, Django's HTML "Page not found" instead of handler404), a body over
DATA_UPLOAD_MAX_MEMORY_SIZE (an HTML "RequestDataTooBig" page, status 400), a
DisallowedHost, a crash with DEBUG on (the HTML traceback page). This middleware is
the outermost one, so it sees those answers and rewrites any non-JSON error under
/api/ into `{"error": {"code": ..., "message": ...}}` with the same status; the
traceback still goes to the log (django.request), never to the client.

Under /v1/ (the OpenAI-compatible endpoint) the body is OpenAI's instead,
`{"error": {"message", "type", "param", "code"}}`, which the OpenAI SDKs parse.

ChunkedBodyMiddleware reads a chunked body (no Content-Length) under both. On
Django's development server (runserver, the test live server; bin/serve runs the
ASGI server)
it relies on these internals of Django 5.2 (checked against 5.2.19;
tests/openai_api/test_bodies.py sends chunked bodies through that server):
`django.core.servers.basehttp.ServerHandler` hands the application
`LimitedStream(rfile, Content-Length)` as `wsgi.input` (0 without one), and
`LimitedStream._read` is the bound `read` of the connection's file, whose `__self__`
the chunks are read from; `HttpRequest._stream` is what `HttpRequest.body` reads
(at most DATA_UPLOAD_MAX_MEMORY_SIZE + 1 bytes, then `close()`).
"""

import io
from collections.abc import Callable
from http import HTTPStatus

from django.core.exceptions import RequestDataTooBig
from django.core.handlers.wsgi import LimitedStream, WSGIRequest
from django.http import HttpRequest, HttpResponse, JsonResponse, UnreadablePostError

from core.exceptions import error_body, request_too_large_body, request_too_large_message

API_PREFIX = "/api/"
OPENAI_PREFIX = "/v1/"
# Headers of the original answer that still mean something on the JSON one.
KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate", "Vary")
CODES = {
    400: "invalid",
    401: "not_authenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "request_too_large",
    415: "unsupported_media_type",
    429: "throttled",
    500: "server_error",
}


def openai_error_body(message: str, *, code: str, kind: str = "invalid_request_error") -> dict:
    """OpenAI's error body (openai_api.errors.error_body, which core does not import)."""
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def request_too_large(request: HttpRequest) -> JsonResponse:
    """413 for a body over DATA_UPLOAD_MAX_MEMORY_SIZE: OpenAI's body under /v1/, the shared one elsewhere."""
    if request.path.startswith(OPENAI_PREFIX):
        return JsonResponse(openai_error_body(request_too_large_message(), code="request_too_large"), status=413)
    return JsonResponse(request_too_large_body(), status=413)


def _is_json(response: HttpResponse) -> bool:
    content_type = response.get("Content-Type", "")
    return content_type.startswith("application/json") or "+json" in content_type.split(";")[0]


class ApiErrorBodyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        openai = request.path.startswith(OPENAI_PREFIX)
        if not (openai or request.path.startswith(API_PREFIX)) or response.status_code < 400 or _is_json(response):
            return response
        status = response.status_code
        code = CODES.get(status, "server_error" if status >= 500 else "error")
        message = "Not found." if status == 404 else f"{HTTPStatus(status).phrase}."
        if openai:
            kind = "server_error" if status >= 500 else "invalid_request_error"
            body = openai_error_body(message, code=code, kind=kind)
        else:
            body = error_body(code, message)
        replacement = JsonResponse(body, status=status)
        for header in KEPT_HEADERS:
            if header in response:
                replacement[header] = response[header]
        return replacement

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        # Django answers this one as a 400 (it is a SuspiciousOperation, logged as an
        # ERROR with its traceback); it is a 413.
        if request.path.startswith((API_PREFIX, OPENAI_PREFIX)) and isinstance(exception, RequestDataTooBig):
            return request_too_large(request)
        return None


class _Dechunked(io.RawIOBase):
    """The body of a chunked request, decoded from the connection's file (Django's
    development server does not decode it). `close()` reads what is left of it, unkept,
    so the next request on the connection starts where it should."""

    MAX_LINE = 4096

    def __init__(self, raw: io.BufferedIOBase) -> None:
        self.raw = raw
        self.left = 0  # bytes left in the current chunk
        self.done = False

    def readable(self) -> bool:
        return True

    def _line(self) -> bytes:
        line = self.raw.readline(self.MAX_LINE)
        if not line.endswith(b"\n"):
            self.done = True  # cut off or too long: nothing after it can be trusted
            raise UnreadablePostError("The chunked request body is cut off or malformed.")
        return line

    def _next_chunk(self) -> None:
        try:
            size = int(self._line().split(b";", 1)[0].strip(), 16)
        except ValueError:
            self.done = True
            raise UnreadablePostError("A chunk size of the request body is not hexadecimal.") from None
        if size == 0:
            while self._line().strip():  # trailer fields, up to the empty line
                pass
            self.done = True
        self.left = size

    def read(self, size: int = -1) -> bytes:
        """`size` bytes of the body (all of it when -1), fewer only at its end."""
        parts: list[bytes] = []
        wanted = size
        while not self.done and wanted != 0:
            if self.left == 0:
                self._next_chunk()
                continue
            piece = self.raw.read(self.left if wanted < 0 else min(self.left, wanted))
            if not piece:
                self.done = True
                raise UnreadablePostError("The client closed the connection within the request body.")
            parts.append(piece)
            self.left -= len(piece)
            wanted = wanted if wanted < 0 else wanted - len(piece)
            if self.left == 0:
                self._line()  # the CRLF after the chunk's data
        return b"".join(parts)

    def close(self) -> None:
        try:
            while not self.done:
                self.read(65536)
        except UnreadablePostError:
            pass
        super().close()


def _chunked_body(request: HttpRequest) -> bytes:
    """The chunked body of `request`, read within DATA_UPLOAD_MAX_MEMORY_SIZE
    (RequestDataTooBig past it). Under ASGI the handler has it whole already."""
    stream = request.environ.get("wsgi.input") if isinstance(request, WSGIRequest) else None
    if isinstance(stream, LimitedStream) and stream.limit == 0:
        # Django's development server: the connection's file behind its LimitedStream.
        request._stream = _Dechunked(stream._read.__self__)
    return request.body  # Django reads at most DATA_UPLOAD_MAX_MEMORY_SIZE + 1 bytes


class ChunkedBodyMiddleware:
    """A body sent without Content-Length (Transfer-Encoding: chunked) under /api/ or
    /v1/ is read here, within DATA_UPLOAD_MAX_MEMORY_SIZE, and given its length.
    gunicorn's ASGI worker hands it over whole; Django's development server does not
    decode it (read here from the connection, see the module's docstring). Without
    this DRF, which reads a body only when Content-Length says there is one, saw such
    a JSON body as empty ("field required"), however large: now it is parsed, or
    answered 413 (the shared body, OpenAI's under /v1/) when too large. Other paths
    (the Stripe webhook, the admin) keep Django's behaviour."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if (
            request.path.startswith((API_PREFIX, OPENAI_PREFIX))
            and not request.META.get("CONTENT_LENGTH")
            and "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower()
        ):
            try:
                body = _chunked_body(request)
            except RequestDataTooBig:
                return request_too_large(request)
            except UnreadablePostError as exc:
                return _unreadable(request, str(exc))
            request.META["CONTENT_LENGTH"] = str(len(body))
        return self.get_response(request)


def _unreadable(request: HttpRequest, message: str) -> JsonResponse:
    if request.path.startswith(OPENAI_PREFIX):
        return JsonResponse(openai_error_body(message, code="invalid_body"), status=400)
    return JsonResponse(error_body("invalid", message), status=400)
