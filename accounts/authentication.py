from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from accounts.models import ApiKey, ApiKeyScope, User
from accounts.selectors import api_key_for_raw
from accounts.services import api_key_touch

SCOPE_NAMES = {ApiKeyScope.CHAT: "the /api/v1 API", ApiKeyScope.OPENAI: "the OpenAI-compatible /v1 endpoint"}


def api_key_scope_of(request: Request) -> str:
    """The scope a view asks of API keys: its `api_key_scope` (openai_api's views say
    `openai`), else `chat`, the /api/v1 API."""
    view = (request.parser_context or {}).get("view")
    return getattr(view, "api_key_scope", ApiKeyScope.CHAT)


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer <key>`. A missing header leaves the request anonymous
    (the permission then answers 401); a present but unknown, revoked or expired key
    is 401 (the expiry named); a key without the view's scope is 403 naming it."""

    keyword = "bearer"

    def authenticate(self, request: Request) -> tuple[User, ApiKey] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Authorization header must be 'Bearer <key>'.")
        try:
            raw_key = header[1].decode()
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Invalid API key.") from None
        api_key = api_key_for_raw(raw_key=raw_key)
        if api_key is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked API key.")
        if api_key.is_expired():
            raise exceptions.AuthenticationFailed(
                f"API key '{api_key.name}' expired at {api_key.expires_at:%Y-%m-%dT%H:%M:%SZ}."
            )
        scope = api_key_scope_of(request)
        if scope not in api_key.scopes:
            raise exceptions.PermissionDenied(
                f"API key '{api_key.name}' lacks the '{scope}' scope ({SCOPE_NAMES[scope]}); "
                f"its scopes: {', '.join(api_key.scopes) or 'none'}."
            )
        api_key_touch(api_key=api_key)
        return api_key.user, api_key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.ApiKeyAuthentication"
    name = "ApiKeyAuth"

    def get_security_definition(self, auto_schema):  # noqa: ANN001, ANN201
        return {"type": "http", "scheme": "bearer"}
