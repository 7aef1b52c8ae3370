"""The OpenAPI document: built without a drf-spectacular warning, with readable enum
names that do not change when a choice is added (no hash suffixes)."""

import re

import pytest
import yaml
from django.conf import settings
from django.core.management import call_command
from django.utils.module_loading import import_string
from drf_spectacular.plumbing import deep_import_string


@pytest.fixture
def schema(tmp_path) -> dict:  # noqa: ANN001
    path = tmp_path / "schema.yaml"
    # --fail-on-warn makes any warning (an enum naming collision among them) an error.
    call_command("spectacular", "--fail-on-warn", "--file", str(path))
    return yaml.safe_load(path.read_text())


def test_the_schema_builds_without_warnings_and_names_its_enums(schema):
    names = set(schema["components"]["schemas"])
    assert {"TurnStatus", "TopUpStatus", "TransactionKind", "SessionMode", "LLMCallStatus", "UsageBucket"} <= names
    assert not [name for name in names if re.search(r"[0-9A-F]{3}Enum$", name, re.IGNORECASE)]
    assert schema["components"]["schemas"]["TurnStatus"]["enum"] == ["queued", "running", "completed", "failed", "cancelled"]


def test_every_enum_override_path_still_resolves():
    for name, choices in settings.SPECTACULAR_SETTINGS["ENUM_NAME_OVERRIDES"].items():
        if isinstance(choices, str):
            assert deep_import_string(choices), f"{name}: {choices} does not import"


def test_json_is_the_only_default_parser():
    parsers = [import_string(path) for path in settings.REST_FRAMEWORK["DEFAULT_PARSER_CLASSES"]]
    assert [parser.media_type for parser in parsers] == ["application/json"]


def test_the_schema_describes_the_openai_compatible_endpoint(schema):
    paths = schema["paths"]
    assert {"/v1/models", "/v1/chat/completions"} <= set(paths)
    create = paths["/v1/chat/completions"]["post"]
    request = create["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    fields = schema["components"]["schemas"][request]["properties"]
    assert {"model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature",
            "top_p", "stop", "tools", "tool_choice", "user", "n"} <= set(fields)  # fmt: skip
    assert {"application/json", "text/event-stream"} <= set(create["responses"]["200"]["content"])
    # Errors in OpenAI's body there, the shared body everywhere else.
    assert create["responses"]["429"]["content"]["application/json"]["schema"]["$ref"].endswith("/OpenAIError")
    turns = paths["/api/v1/sessions/{session_id}/turns"]["post"]
    assert turns["responses"]["429"]["content"]["application/json"]["schema"]["$ref"].endswith("/Error")
