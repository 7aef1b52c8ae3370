"""OpenAI's error body, `{"error": {"message", "type", "param", "code"}}`, for every
answer under /v1: what the SDKs parse and raise as their own exception classes
(AuthenticationError, NotFoundError, BadRequestError, RateLimitError, ...).

The project's own errors map as follows: a missing or unknown key is 401
`invalid_api_key`; an unknown alias 404 `model_not_found`; invalid input 400
`invalid_request_error` naming the `param`; billing's refusal (402 in the chat API)
429 `insufficient_quota`, as OpenAI answers an exhausted quota; a fair-use limit 429
`rate_limit_exceeded` with Retry-After; a body over DATA_UPLOAD_MAX_MEMORY_SIZE 413
`request_too_large`."""

from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response

from core.exceptions import (
    ApplicationError,
    InsufficientCredits,
    ServiceUnavailable,
    TooManyRequests,
    request_too_large_message,
)

INVALID_REQUEST = "invalid_request_error"


class OpenAIError(Exception):
    def __init__(
        self, message: str, *, status_code: int = 400, type: str = INVALID_REQUEST,  # noqa: A002
        code: str | None = None, param: str | None = None, headers: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.message, self.status_code, self.type, self.code, self.param = message, status_code, type, code, param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, code=self.code, param=self.param)


def error_body(message: str, *, type: str = INVALID_REQUEST, code: str | None = None,  # noqa: A002
               param: str | None = None) -> dict[str, Any]:  # fmt: skip
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def model_not_found(alias: str) -> OpenAIError:
    return OpenAIError(
        f"The model `{alias}` does not exist or you do not have access to it.",
        status_code=status.HTTP_404_NOT_FOUND, code="model_not_found", param="model",
    )  # fmt: skip


# Names of the chat services' fields as the request calls them.
PARAMS = {"content": "messages", "model_alias": "model"}


def _first_param(detail: Any, path: str = "") -> tuple[str | None, str]:
    """The first offending field of a DRF error detail as OpenAI names params
    (`messages[1].content`), and its message."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            if key == "non_field_errors":
                return _first_param(value, path)
            if isinstance(key, int) or str(key).isdigit():  # an item of a list
                name = f"{path}[{key}]"
            else:
                name = f"{path}.{key}" if path else str(key)
            return _first_param(value, name)
    if isinstance(detail, list):
        if detail and all(isinstance(item, str | exceptions.ErrorDetail) for item in detail):
            return path or None, str(detail[0])
        for index, item in enumerate(detail):
            if item:  # a list serializer keeps {} for the valid items
                found = _first_param(item, f"{path}[{index}]")
                if found[1]:
                    return found
        return path or None, ""
    return path or None, str(detail)


def as_openai_error(exc: Exception) -> OpenAIError | None:
    """The OpenAI error for an exception a view raised; None for a crash."""
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, RequestDataTooBig):  # Django counts it a SuspiciousOperation (400)
        return OpenAIError(request_too_large_message(), status_code=413, code="request_too_large")
    if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        message = str(exc.detail)
        if isinstance(exc, exceptions.NotAuthenticated):
            message = "You didn't provide an API key: send it as `Authorization: Bearer <key>`."
        return OpenAIError(message, status_code=401, code="invalid_api_key")
    if isinstance(exc, InsufficientCredits):
        # Refused until credits or the budget's window change: the SDKs' automatic
        # retries (OpenAI's own quota 429 too) would be refused the same.
        return OpenAIError(
            exc.message, status_code=429, type="insufficient_quota", code="insufficient_quota",
            headers={"x-should-retry": "false"},
        )  # fmt: skip
    if isinstance(exc, TooManyRequests):
        return OpenAIError(
            exc.message, status_code=429, type="requests", code="rate_limit_exceeded",
            headers={"Retry-After": str(exc.retry_after)},
        )  # fmt: skip
    if isinstance(exc, exceptions.Throttled):
        wait = int(exc.wait or 1)
        return OpenAIError(
            "Rate limit reached for requests.", status_code=429, type="requests", code="rate_limit_exceeded",
            headers={"Retry-After": str(max(wait, 1))},
        )  # fmt: skip
    if isinstance(exc, ServiceUnavailable):
        return OpenAIError(exc.message, status_code=503, type="server_error", code="service_unavailable")
    if isinstance(exc, ApplicationError):
        name = next(iter(exc.fields), None) if exc.fields else None
        return OpenAIError(
            exc.message, status_code=400, param=PARAMS.get(name, name), code="invalid_value" if name else None
        )
    if isinstance(exc, exceptions.ValidationError):
        param, message = _first_param(exc.detail)
        return OpenAIError(f"{param}: {message}" if param else message, param=param, code="invalid_value")
    if isinstance(exc, exceptions.APIException):
        return OpenAIError(str(exc.detail), status_code=exc.status_code, code=exc.default_code)
    return None


def exception_handler(exc: Exception, context: dict) -> Response | None:
    """The DRF exception handler of the /v1 views."""
    error = as_openai_error(exc)
    if error is None:
        return None
    response = Response(error.body(), status=error.status_code)
    for name, value in error.headers.items():
        response[name] = value
    if error.status_code == 401:
        response["WWW-Authenticate"] = 'Bearer realm="api"'
    return response


def error_response(error: OpenAIError) -> JsonResponse:
    response = JsonResponse(error.body(), status=error.status_code)
    for name, value in error.headers.items():
        response[name] = value
    return response
