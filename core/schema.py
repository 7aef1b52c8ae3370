"""OpenAPI post-processing: every operation documents the shared error body for the
4xx answers any endpoint can give, so clients (and the schema fuzz) know its shape."""

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
    "401": "Missing, unknown or revoked API key.",
    "402": "Not enough available credits (enforcement `block`).",
    "403": "Not allowed (staff only).",
    "404": "Not found, or not yours.",
    "405": "Method not allowed.",
    "406": "The Accept header asks only for formats the endpoint cannot produce.",
    "413": "The request body is larger than the server accepts.",
    "415": "Unsupported media type: the body must be JSON (uploads: multipart).",
    "422": "Well-formed but impossible in the current state.",
    "429": "Rate limited.",
    "503": "A dependency is not configured or not reachable.",
}


def add_error_responses(result: dict, generator, request, public) -> dict:  # noqa: ANN001
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    ref = {"$ref": "#/components/schemas/Error"}
    for path_item in result.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            for status, description in ERROR_STATUSES.items():
                responses.setdefault(
                    status, {"description": description, "content": {"application/json": {"schema": ref}}}
                )
    return result
