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
"""

from collections.abc import Callable
from http import HTTPStatus

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse

from core.exceptions import error_body, request_too_large_body

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
            body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        else:
            body = error_body(code, message)
        replacement = JsonResponse(body, status=status)
        for header in KEPT_HEADERS:
            if header in response:
                replacement[header] = response[header]
        return replacement

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        # Django answers this one as a 400 (it is a SuspiciousOperation); it is a 413.
        if request.path.startswith(API_PREFIX) and isinstance(exception, RequestDataTooBig):
            return JsonResponse(request_too_large_body(), status=413)
        return None


class ChunkedBodyMiddleware:
    """A body sent without Content-Length (Transfer-Encoding: chunked; gunicorn's ASGI
    worker hands it over whole) is read here, within DATA_UPLOAD_MAX_MEMORY_SIZE, and
    given its length. Without this DRF, which reads a body only when Content-Length
    says there is one, saw such a JSON body as empty ("field required"), however
    large: now it is parsed, or answered 413 with the shared body when too large."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if (
            request.path.startswith(API_PREFIX)
            and not request.META.get("CONTENT_LENGTH")
            and "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower()
        ):
            try:
                body = request.body  # Django reads at most DATA_UPLOAD_MAX_MEMORY_SIZE + 1 bytes
            except RequestDataTooBig:
                return JsonResponse(request_too_large_body(), status=413)
            request.META["CONTENT_LENGTH"] = str(len(body))
        return self.get_response(request)
