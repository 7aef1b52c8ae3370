"""OpenAPI post-processing: every operation documents the shared error body for the
4xx answers any endpoint can give, so clients (and the schema fuzz) know its shape.
The OpenAI-compatible endpoint (/v1/) documents OpenAI's error body instead."""

ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "fields": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
            },
            "required": ["code", "message"],
        }
    },
    "required": ["error"],
}

ERROR_STATUSES = {
    "400": "Invalid input; `fields` names the offending fields.",
    "401": "Missing, unknown, revoked or expired API key (the message names the expiry).",
    "402": "Not enough available credits (enforcement `block`, or past the overdraft limit), or over an API key's "
    "budget or the account's spending cap (`spend_limit_exceeded`; the message names the limit, what is spent or "
    "held and when it resets).",
    "403": "Not allowed (staff only), or the API key lacks the scope this needs (`chat`; `keys` to make keys, change "
    "limits or scopes, save a card or turn on auto top-up; the message names it).",
    "404": "Not found, or not yours.",
    "405": "Method not allowed.",
    "406": "The Accept header asks only for formats the endpoint cannot produce.",
    "413": "The request body is larger than the server accepts.",
    "415": "Unsupported media type: the body must be JSON (uploads: multipart).",
    "422": "Well-formed but impossible in the current state.",
    "429": "Rate limited: the throttle, turns in flight, or an API key's `rpm` / `tpm` (named); Retry-After "
    "says in how many seconds to try again.",
    "503": "A dependency is not configured or not reachable.",
}


OPENAI_ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": "string", "nullable": True},
                "code": {"type": "string", "nullable": True},
            },
            "required": ["message", "type", "param", "code"],
        }
    },
    "required": ["error"],
}

OPENAI_ERROR_STATUSES = {
    "400": "`invalid_request_error`; `param` names the offending field.",
    "401": "`invalid_api_key`: missing, unknown, revoked or expired API key.",
    "403": "`permission_denied`: the API key lacks the `openai` scope.",
    "404": "`model_not_found`: `model` is not an active alias.",
    "405": "Method not allowed.",
    "413": "The request body is larger than the server accepts.",
    "415": "Unsupported media type: the body must be JSON.",
    "429": "`insufficient_quota`: not enough available credits, or over an API key's budget or the account's spending "
    "cap (named, with its reset time); `rate_limit_exceeded`: fair use or the key's `rpm` / `tpm` (Retry-After).",
    "502": "The model provider failed (`upstream_error`); only calls that reported usage are charged.",
    "504": "The model did not finish in time (`timeout`); the turn goes on and is charged as any other.",
}


def add_error_responses(result: dict, generator, request, public) -> dict:  # noqa: ANN001
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"], schemas["OpenAIError"] = ERROR_SCHEMA, OPENAI_ERROR_SCHEMA
    for path, path_item in result.get("paths", {}).items():
        openai = path.startswith("/v1/")
        ref = {"$ref": "#/components/schemas/OpenAIError" if openai else "#/components/schemas/Error"}
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            for status, description in (OPENAI_ERROR_STATUSES if openai else ERROR_STATUSES).items():
                responses.setdefault(
                    status, {"description": description, "content": {"application/json": {"schema": ref}}}
                )
    return result
