import json
import socket

import pytest

from chat.models import LLMCall, ToolCall, Turn
from chat.services.files import file_create
from chat.tools import (
    REGISTRY,
    Tool,
    ToolResult,
    tool_call_build,
    tool_definitions,
    tool_dispatch,
    tools_for_turn,
)
from chat.tools import registry as registry_module
from chat.tools.file_read import MAX_CHARS

pytestmark = pytest.mark.django_db


@pytest.fixture
def own_file(owner):  # noqa: ANN001, ANN201
    # 10,000 characters: 0123456789 repeated, so any window's content is predictable.
    return file_create(owner=owner, name="digits.txt", declared_type="text/plain", data=b"0123456789" * 1000)


def read(user, **arguments):  # noqa: ANN001, ANN201
    return tool_dispatch(user=user, name="file_read", arguments=json.dumps(arguments))


# --- registry and definitions -----------------------------------------------------


def test_web_search_is_not_offered_when_web_search_url_is_unset(settings):
    settings.WEB_SEARCH_URL = ""
    assert [d["name"] for d in tools_for_turn()] == ["file_read"]
    assert tool_definitions(enabled=["web_search"]) == []


def test_both_tools_are_offered_when_web_search_url_is_set(settings):
    settings.WEB_SEARCH_URL = "http://127.0.0.1:9/search"
    assert [d["name"] for d in tools_for_turn()] == ["file_read", "web_search"]
    assert [d["name"] for d in tool_definitions(enabled={"web_search"})] == ["web_search"]


def test_definitions_are_copies_and_the_registry_is_built_once():
    validator = REGISTRY["file_read"].validator
    definitions = tool_definitions()
    definitions[0]["parameters"]["required"].append("offset")
    assert REGISTRY["file_read"].parameters["required"] == ["file_id"]
    assert REGISTRY["file_read"].validator is validator
    with pytest.raises(TypeError):
        REGISTRY["extra"] = REGISTRY["file_read"]  # read-only mapping


# --- file_read ----------------------------------------------------------------------


def test_file_read_returns_the_start_of_an_own_file(owner, own_file):
    result = read(owner, file_id=own_file.id)
    assert result.status == "ok"
    header, rest = result.content.split("\n", 1)
    assert header == f'File {own_file.id} "digits.txt" (text/plain), characters 0-4000 of 10000:'
    text, note = rest.split("\n\n")
    assert text == "0123456789" * 400
    assert note == "[6000 more characters; call file_read with offset=4000 to continue.]"


def test_file_read_windows_by_offset_and_limit(owner, own_file):
    result = read(owner, file_id=own_file.id, offset=9995, limit=10)
    assert result.status == "ok"
    assert result.content == f'File {own_file.id} "digits.txt" (text/plain), characters 9995-10000 of 10000:\n56789'

    middle = read(owner, file_id=own_file.id, offset=3, limit=4)
    assert middle.content.splitlines()[1] == "3456"


def test_file_read_caps_a_large_limit(owner, own_file):
    result = read(owner, file_id=own_file.id, limit=10**12)
    assert result.status == "ok"
    assert f"characters 0-{MAX_CHARS} of 10000" in result.content
    assert result.content.splitlines()[1] == ("0123456789" * 1000)[:MAX_CHARS]


def test_file_read_offset_past_the_end_is_an_error(owner, own_file):
    result = read(owner, file_id=own_file.id, offset=10000)
    assert result.status == "error"
    assert "past the end" in result.content
    assert "10000 characters" in result.content


def test_file_read_of_another_users_file_is_an_error_without_its_data(other_user, own_file):
    result = read(other_user, file_id=own_file.id)
    assert result.status == "error"
    assert result.content == f"No file with id {own_file.id}. Only files the user uploaded can be read."
    assert "0123" not in result.content
    assert "digits" not in result.content


def test_file_read_of_an_unknown_id_reads_the_same_as_another_users(owner, other_user, own_file):
    unknown = read(other_user, file_id=own_file.id + 999)
    assert unknown.status == "error"
    assert unknown.content == f"No file with id {own_file.id + 999}. Only files the user uploaded can be read."


def test_file_read_of_a_file_without_text(owner):
    from tests.chat.pdf import make_pdf

    scan = file_create(owner=owner, name="scan.pdf", declared_type="application/pdf", data=make_pdf([[]]))
    result = read(owner, file_id=scan.id)
    assert result.status == "ok"
    assert result.content == f'File {scan.id} "scan.pdf" (application/pdf) has no extractable text.'


def test_file_read_accepts_an_integral_float_from_the_model(owner, own_file):
    result = tool_dispatch(user=owner, name="file_read", arguments={"file_id": float(own_file.id), "limit": 3.0})
    assert result.status == "ok"
    assert result.content.splitlines()[1] == "012"


def test_file_read_at_the_largest_offset_allowed_is_a_clean_error(owner, own_file):
    result = read(owner, file_id=own_file.id, offset=2**31 - 2, limit=5)
    assert result.status == "error"
    assert "past the end" in result.content


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        ({"file_id": 1, "offset": -1}, "(offset): -1 is less than the minimum of 0"),
        ({"file_id": 1, "limit": 0}, "(limit): 0 is less than the minimum of 1"),
        ({"file_id": "1"}, "(file_id): '1' is not of type 'integer'"),
        ({"file_id": 0}, "(file_id): 0 is less than the minimum of 1"),
        ({"file_id": 2**64}, "(file_id)"),
        ({"file_id": 1, "offset": 2**40}, "(offset)"),
        ({"file_id": 1, "offset": 1.5}, "(offset): 1.5 is not of type 'integer'"),
        ({"file_id": True}, "(file_id): True is not of type 'integer'"),
        ({}, "'file_id' is a required property"),
        ({"file_id": 1, "path": "/etc/passwd"}, "Additional properties are not allowed ('path' was unexpected)"),
    ],
)
def test_file_read_arguments_are_validated(owner, own_file, arguments, fragment):
    result = tool_dispatch(user=owner, name="file_read", arguments=arguments)
    assert result.status == "error"
    assert result.content.startswith("file_read: invalid arguments")
    assert fragment in result.content


# --- dispatcher --------------------------------------------------------------------


def test_unknown_tool_is_an_error_result(owner, settings):
    settings.WEB_SEARCH_URL = ""
    result = tool_dispatch(user=owner, name="shell", arguments='{"cmd": "ls"}')
    assert result == ToolResult(
        status="error", content="Unknown tool 'shell'. Available tools: file_read.", latency_ms=result.latency_ms
    )


def test_web_search_asked_for_while_disabled_is_an_unknown_tool(owner, settings):
    settings.WEB_SEARCH_URL = ""
    result = tool_dispatch(user=owner, name="web_search", arguments='{"query": "x"}')
    assert result.status == "error"
    assert result.content.startswith("Unknown tool 'web_search'")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ('{"file_id": ', "file_read: arguments are not valid JSON."),
        ("[1, 2]", "file_read: arguments must be a JSON object."),
        ('"text"', "file_read: arguments must be a JSON object."),
        (42, "file_read: arguments must be a JSON object."),
        ("[" * 100_000, "file_read: arguments are not valid JSON."),
        ("", "file_read: invalid arguments: 'file_id' is a required property"),
        (None, "file_read: invalid arguments: 'file_id' is a required property"),
    ],
)
def test_malformed_arguments_are_error_results(owner, arguments, message):
    result = tool_dispatch(user=owner, name="file_read", arguments=arguments)
    assert result.status == "error"
    assert result.content == message


def test_a_tool_that_raises_gives_an_error_result(owner, monkeypatch):
    def explode(*, user, arguments):  # noqa: ANN001, ANN202
        raise RuntimeError("bug inside a tool")

    broken = Tool(name="broken", description="Always fails.", parameters={"type": "object"}, run=explode)
    monkeypatch.setattr(registry_module, "REGISTRY", {**REGISTRY, "broken": broken})
    result = tool_dispatch(user=owner, name="broken", arguments="{}")
    assert result.status == "error"
    assert result.content == "broken failed unexpectedly."
    assert "bug inside" not in result.content


def test_tool_call_build_gives_a_row_the_engine_can_save(owner, panel_session, prices, own_file):
    turn = Turn.objects.create(session=panel_session, user=owner, model_alias="fast")
    llm_call = LLMCall.objects.create(
        turn=turn, user=owner, price=prices["fast"], model_alias="fast", provider="local", provider_model="local-fast"
    )
    arguments = json.dumps({"file_id": own_file.id, "limit": 2000})
    result = tool_dispatch(user=owner, name="file_read", arguments=arguments)
    row = tool_call_build(turn=turn, llm_call=llm_call, name="file_read", arguments=arguments, result=result)
    assert row.pk is None
    row.save()

    stored = ToolCall.objects.get()
    assert stored.tool == "file_read"
    assert stored.arguments == {"file_id": own_file.id, "limit": 2000}
    assert stored.status == ToolCall.Status.OK
    assert stored.result_excerpt == result.content[:500]
    assert len(stored.result_excerpt) == 500
    assert stored.latency_ms == result.latency_ms

    bad = tool_dispatch(user=owner, name="file_read", arguments="{oops")
    row = tool_call_build(turn=turn, llm_call=llm_call, name="file_read", arguments="{oops", result=bad)
    row.save()
    assert ToolCall.objects.get(pk=row.pk).arguments == {"_unparsed": "{oops"}
    assert row.status == ToolCall.Status.ERROR


# --- web_search against a fake SearXNG ------------------------------------------------


RESULTS = [
    {"title": f"Result {n}", "url": f"https://example.org/{n}", "content": f"Snippet   number\n{n}", "engine": "x"}
    for n in range(1, 8)
]


def test_web_search_returns_the_top_results_compactly(owner, searxng):
    searxng.results = RESULTS
    result = tool_dispatch(user=owner, name="web_search", arguments='{"query": "  django   ledger "}')

    assert result.status == "ok"
    assert searxng.queries == ["django ledger"]
    assert searxng.requests[0]["format"] == ["json"]
    lines = result.content.splitlines()
    assert lines[0] == 'Web results for "django ledger":'
    assert lines[1:4] == ["1. Result 1", "   https://example.org/1", "   Snippet number 1"]
    assert lines[-3:] == ["5. Result 5", "   https://example.org/5", "   Snippet number 5"]
    assert "Result 6" not in result.content


def test_web_search_clips_long_snippets_and_skips_junk(owner, searxng):
    searxng.results = ["not a dict", {"title": None, "url": "https://a.example", "content": "w" * 1000}]
    result = tool_dispatch(user=owner, name="web_search", arguments={"query": "q"})
    assert result.status == "ok"
    lines = result.content.splitlines()
    assert lines[1] == "1. (untitled)"
    assert lines[3] == "   " + "w" * 399 + "…"


def test_web_search_with_no_results(owner, searxng):
    result = tool_dispatch(user=owner, name="web_search", arguments={"query": "nothing"})
    assert result == ToolResult(status="ok", content='No web results for "nothing".', latency_ms=result.latency_ms)


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("http_error", "Web search failed: the search service answered HTTP 503."),
        ("not_json", "Web search failed: the search service's answer was not JSON."),
        ("no_results_key", "Web search failed: the search service's answer had no results list."),
        ("huge", "Web search failed: the search service's answer was too large."),
    ],
)
def test_web_search_service_failures_are_error_results(owner, searxng, mode, message):
    searxng.mode = mode
    result = tool_dispatch(user=owner, name="web_search", arguments={"query": "q"})
    assert result.status == "error"
    assert result.content == message
    assert searxng.url not in result.content


def test_web_search_timeout_is_an_error_result(owner, searxng, settings):
    settings.WEB_SEARCH_TIMEOUT_SECONDS = 0.3
    searxng.mode, searxng.delay = "slow", 2.0
    result = tool_dispatch(user=owner, name="web_search", arguments={"query": "slow"})
    assert result.status == "error"
    assert result.content == "Web search failed: the search service could not be reached (ReadTimeout)."
    assert 300 <= result.latency_ms < 2000


def test_web_search_unreachable_service_is_an_error_result(owner, settings):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings.WEB_SEARCH_URL = f"http://127.0.0.1:{port}/search?token=secret-token"
    result = tool_dispatch(user=owner, name="web_search", arguments={"query": "q"})
    assert result.status == "error"
    assert result.content == "Web search failed: the search service could not be reached (ConnectionError)."
    assert "secret-token" not in result.content


def test_web_search_keeps_query_parameters_of_the_configured_url(owner, searxng, settings):
    settings.WEB_SEARCH_URL = searxng.url + "?language=en"
    assert tool_dispatch(user=owner, name="web_search", arguments={"query": "q"}).status == "ok"
    assert searxng.requests[0] == {"language": ["en"], "q": ["q"], "format": ["json"]}


@pytest.mark.parametrize("query", ["", "   ", "x" * 401])
def test_web_search_query_is_validated(owner, searxng, query):
    result = tool_dispatch(user=owner, name="web_search", arguments={"query": query})
    assert result.status == "error"
    assert searxng.queries == []
