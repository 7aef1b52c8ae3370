"""JSON bodies under /api/ (core.parsers, core.middleware.ChunkedBodyMiddleware): a
NUL, a lone surrogate or nesting past MAX_DEPTH is a 400 in the shared body naming
the field, never a 500, and nothing is written; a chunked body is read on the
embedded default's server too, and 413 over the limit."""

import io
import json

import httpx2
import pytest
from rest_framework.exceptions import ParseError, ValidationError

from chat.models import ChatSession
from core.parsers import MAX_DEPTH, JSONParser, NulStorableJSONParser
from tests.conftest import client_for

MIB = 1024 * 1024
SURROGATE = "\\ud800"  # the JSON escape: json accepts it, UTF-8 cannot encode it


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def with_title(value: str) -> str:
    """A sessions body whose title is `value`, written into the JSON as it is."""
    return '{"mode": "single", "title": ' + value + "}"


REFUSED = {
    # name: (the raw JSON body, the field named)
    "a NUL in a field": (with_title('"a\\u0000b"'), "title"),
    "a NUL in a key": ('{"title": "ok", "extra\\u0000": 1}', "extra\x00"),
    "a NUL deep in a value": ('{"title": "ok", "extra": {"list": ["x", "\\u0000"]}}', "extra.list[1]"),
    "a lone surrogate in a field": (with_title(f'"a{SURROGATE}"'), "title"),
    "a lone low surrogate": (with_title('"\\udfff"'), "title"),
    "a lone surrogate in a key": (f'{{"title": "ok", "k{SURROGATE}": 1}}', "k\\ud800"),
    "deep nesting in a field": (with_title(nested(50_000)), "title"),
    "nesting just past the bound": (with_title(nested(MAX_DEPTH)), "title"),
    "a body that is deep nesting": (nested(50_000), "non_field_errors"),
    "an object body nested deep": ('{"a": ' * 50_000 + "1" + "}" * 50_000, "a"),
}


@pytest.mark.django_db
@pytest.mark.parametrize("name", REFUSED)
def test_text_that_cannot_be_stored_or_walked_is_a_400_naming_the_field(owner, name):
    text, field = REFUSED[name]
    client = client_for(owner)
    response = client.post("/api/v1/sessions", text, content_type="application/json")
    assert response.status_code == 400, response.content[:500]
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert list(error["fields"]) == [field], error
    assert not ChatSession.objects.exists()


@pytest.mark.django_db
def test_a_patch_with_a_lone_surrogate_changes_nothing(owner):
    client = client_for(owner)
    session = client.post("/api/v1/sessions", {"title": "Kept"}, format="json").json()
    response = client.patch(
        f"/api/v1/sessions/{session['id']}", with_title(f'"x{SURROGATE}"'), content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"title": [response.json()["error"]["fields"]["title"][0]]}
    assert "surrogate" in response.json()["error"]["fields"]["title"][0]
    assert ChatSession.objects.get().title == "Kept"


@pytest.mark.django_db
def test_surrogate_pairs_and_ordinary_text_are_accepted(owner):
    client = client_for(owner)
    response = client.post(
        "/api/v1/sessions", with_title('"caf\\u00e9 \\ud83d\\ude00"'), content_type="application/json"
    )
    assert response.status_code == 201, response.content
    assert response.json()["title"] == "caf\u00e9 \U0001f600"


# --- the parser itself ---------------------------------------------------------------


def parse(text: str, parser: JSONParser | None = None):  # noqa: ANN201
    return (parser or JSONParser()).parse(io.BytesIO(text.encode()), "application/json", {})


def refused_at(text: str, parser: JSONParser | None = None) -> dict:
    with pytest.raises(ValidationError) as refused:
        parse(text, parser)
    return refused.value.detail


def test_the_parser_names_the_path_of_the_first_bad_text():
    assert list(refused_at('{"a": [{"b": "ok"}, {"c": "\\u0000"}]}')) == ["a[1].c"]
    assert list(refused_at(f'{{"a": {{"b": ["{SURROGATE}"]}}}}')) == ["a.b[0]"]
    assert refused_at(f'["{SURROGATE}"]') == {"[0]": [refused_at(f'["{SURROGATE}"]')["[0]"][0]]}


def test_an_escaped_backslash_before_u0000_or_ud800_is_plain_text():
    assert parse('{"a": "\\\\u0000 \\\\ud800"}') == {"a": "\\u0000 \\ud800"}


def test_the_v1_parser_keeps_a_nul_and_refuses_the_rest():
    v1 = NulStorableJSONParser()
    assert parse('{"a": "x\\u0000", "b\\u0000": 1}', v1) == {"a": "x\x00", "b\x00": 1}
    assert list(refused_at(f'{{"a": "{SURROGATE}"}}', v1)) == ["a"]
    assert list(refused_at('{"a": ' + nested(MAX_DEPTH) + "}", v1)) == ["a"]


def test_nesting_up_to_the_bound_is_parsed():
    assert parse(nested(MAX_DEPTH)) is not None
    assert parse('{"a": ' + nested(MAX_DEPTH - 1) + "}") == {"a": json.loads(nested(MAX_DEPTH - 1))}
    assert refused_at(nested(MAX_DEPTH + 1)) == [refused_at(nested(MAX_DEPTH + 1))[0]]


def test_the_key_under_which_deep_nesting_starts_is_named_even_past_the_parsers_recursion():
    # Strings holding brackets and escaped quotes are not nesting.
    text = '{"a": "[[[{{\\"[", "b": {"c": 1}, "d\\"e": ' + nested(50_000) + "}"
    assert list(refused_at(text)) == ['d"e']


def test_a_body_that_is_not_json_is_still_a_parse_error():
    with pytest.raises(ParseError):
        parse("{not json")
    with pytest.raises(ParseError):
        JSONParser().parse(io.BytesIO(b'"\xff"'), "application/json", {})


# --- chunked bodies on the embedded default's server -------------------------------------


def chunked(body: bytes, size: int = 65536):  # noqa: ANN201
    for start in range(0, len(body), size):
        yield body[start : start + size]


@pytest.mark.django_db(transaction=True)
def test_a_chunked_body_is_read_on_the_embedded_default_and_413_over_the_limit(live_server, owner):
    from accounts.services import api_key_create

    _, raw_key = api_key_create(user=owner, name="chunked")
    headers = {"Authorization": f"Bearer {raw_key}", "Content-Type": "application/json"}
    url = f"{live_server.url}/api/v1/sessions"
    with httpx2.Client(timeout=30, headers=headers) as client:
        response = client.post(url, content=chunked(json.dumps({"title": "sent in chunks"}).encode(), 4))
        assert "content-length" not in response.request.headers
        assert response.status_code == 201, response.text
        assert response.json()["title"] == "sent in chunks"

        response = client.post(url, content=chunked(json.dumps({"title": "x" * (3 * MIB)}).encode()))
        assert response.status_code == 413, response.text
        assert response.json()["error"]["code"] == "request_too_large"

        # The connection is still in step.
        response = client.post(url, content=chunked(json.dumps({"title": "after"}).encode(), 3))
        assert response.status_code == 201, response.text
    assert sorted(ChatSession.objects.values_list("title", flat=True)) == ["after", "sent in chunks"]
