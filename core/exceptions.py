"""Project errors and the one exception handler that turns every 4xx into the
shared body:

    {"error": {"code": "invalid", "message": "...", "fields": {"amount": ["..."]}}}

`fields` is present only when specific input fields are at fault.
"""

from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response


class ApplicationError(Exception):
    """A business rule refused the request. Views never catch it; the handler does."""

    status_code = status.HTTP_400_BAD_REQUEST
    code = "invalid"

    def __init__(self, message: str, *, fields: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields


class StateConflict(ApplicationError):
    """Well-formed but impossible in the object's current state."""

    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    code = "invalid_state"


class InsufficientCredits(ApplicationError):
    status_code = status.HTTP_402_PAYMENT_REQUIRED
    code = "insufficient_credits"


class TooManyRequests(ApplicationError):
    """A fair-use limit refused the request; the answer carries Retry-After."""

    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServiceUnavailable(ApplicationError):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    code = "service_unavailable"


def field_error(field: str, message: str) -> ApplicationError:
    return ApplicationError(f"{field}: {message}", fields={field: [message]})


def _flatten(detail: Any) -> dict[str, list[str]]:
    if isinstance(detail, dict):
        return {
            str(key): [str(item) for item in value] if isinstance(value, list) else [str(value)]
            for key, value in detail.items()
        }
    if isinstance(detail, list):
        return {"non_field_errors": [str(item) for item in detail]}
    return {"non_field_errors": [str(detail)]}


def error_body(code: str, message: str, fields: dict[str, list[str]] | None = None) -> dict:
    error: dict[str, Any] = {"code": code, "message": message}
    if fields:
        error["fields"] = fields
    return {"error": error}


def request_too_large_message() -> str:
    return f"The request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes."


def request_too_large_body() -> dict:
    return error_body("request_too_large", request_too_large_message())


def exception_handler(exc: Exception, context: dict) -> Response | None:
    # Imported here: rest_framework.views loads the authentication classes, which import this module.
    from rest_framework.views import exception_handler as drf_exception_handler

    if isinstance(exc, ApplicationError):
        response = Response(error_body(exc.code, exc.message, exc.fields), status=exc.status_code)
        if isinstance(exc, TooManyRequests):
            response["Retry-After"] = str(exc.retry_after)
        return response
    if isinstance(exc, RequestDataTooBig):
        # Django counts it as a SuspiciousOperation (400); for a client it is a 413.
        return Response(request_too_large_body(), status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(exc.message_dict if hasattr(exc, "error_dict") else exc.messages)
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()

    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.detail)
        names = ", ".join(name for name in fields if name != "non_field_errors")
        message = f"Invalid input: {names}." if names else "; ".join(fields["non_field_errors"])
        response.data = error_body("invalid", message, fields)
    else:
        detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
        code = exc.get_codes() if isinstance(exc, exceptions.APIException) else "error"
        response.data = error_body(code if isinstance(code, str) else "error", str(detail))
    return response
