"""/v1 bodies: one over DATA_UPLOAD_MAX_MEMORY_SIZE is a 413 in OpenAI's body, a
chunked one (no Content-Length) is read within the limit, and text that could never
be stored or walked (a lone surrogate, nesting past core.parsers.MAX_DEPTH, a NUL
where it cannot become U+FFFD) is a 400 naming the param; never a 500, and nothing is
written for a refused request. On the embedded default's server (Django's development
server: the live server here) and through the web process's ASGI handler."""

import asyncio
import json
import logging
import socket
from urllib.parse import urlsplit

import httpx2
import openai
import pytest

from billing.models import CreditHold
from chat.models import Message, Turn
from core.parsers import MAX_DEPTH
from tests.asgi import asgi_call
from tests.openai_api.conftest import raw_post

pytestmark = pytest.mark.django_db(transaction=True)

MIB = 1024 * 1024
FFFD = "\ufffd"
HELLO = [{"role": "user", "content": "Hello"}]


def nothing_written() -> bool:
    return not Turn.objects.exists() and not CreditHold.objects.exists() and not Message.objects.exists()


def openai_error(response) -> dict:  # noqa: ANN001
    assert response.headers["content-type"].startswith("application/json"), response.headers["content-type"]
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def post_text(base_url: str, key: str, text: str, **headers: str) -> httpx2.Response:
    """POSTs `text` as it is: a JSON body no encoder would write (a lone surrogate's
    escape, 50,000 brackets)."""
    return httpx2.post(
        f"{base_url}/chat/completions", content=text.encode(), timeout=30,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", **headers},
    )  # fmt: skip


# --- over the size limit -----------------------------------------------------------


def test_a_body_over_the_limit_is_a_413_the_sdk_raises_and_no_error_is_logged(sdk, base_url, raw_key, fast, caplog):
    big = [{"role": "user", "content": "x" * (3 * MIB)}]
    with caplog.at_level(logging.WARNING):
        with pytest.raises(openai.APIStatusError) as refused:
            sdk.chat.completions.create(model="fast", messages=big)
        answer = raw_post(base_url, raw_key, {"model": "fast", "messages": big})
    assert refused.value.status_code == 413
    assert refused.value.code == "request_too_large" and refused.value.type == "invalid_request_error"
    assert answer.status_code == 413
    error = openai_error(answer)
    assert error["code"] == "request_too_large" and error["type"] == "invalid_request_error"
    assert "2621440 bytes" in error["message"]
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert nothing_written()


# --- chunked bodies ------------------------------------------------------------------


def chunked(body: bytes, size: int = 65536):  # noqa: ANN201
    """The body in pieces: httpx sends an iterator without a Content-Length, chunked."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def test_a_chunked_body_is_read_on_the_embedded_default_and_413_over_the_limit(base_url, raw_key, fast):
    headers = {"Authorization": f"Bearer {raw_key}", "Content-Type": "application/json"}
    url = f"{base_url}/chat/completions"
    with httpx2.Client(timeout=30, headers=headers) as client:
        small = json.dumps({"model": "fast", "messages": HELLO}).encode()
        answer = client.post(url, content=chunked(small, 7))
        assert answer.request.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in answer.request.headers
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"] == "Echo: Hello"

        # 2 MB is read whole: it is the content's own limit that refuses it, by its param.
        near = json.dumps({"model": "fast", "messages": [{"role": "user", "content": "y" * (2 * MIB)}]}).encode()
        answer = client.post(url, content=chunked(near))
        assert answer.status_code == 400, answer.text
        assert openai_error(answer)["param"] == "messages[0].content"

        over = json.dumps({"model": "fast", "messages": [{"role": "user", "content": "z" * (3 * MIB)}]}).encode()
        answer = client.post(url, content=chunked(over))
        assert answer.status_code == 413, answer.text
        assert openai_error(answer)["code"] == "request_too_large"

        # The connection is still in step: its next request is answered as it should be.
        answer = client.post(url, content=chunked(small, 5))
        assert answer.status_code == 200, answer.text
    assert Turn.objects.count() == 2


def test_a_chunked_body_with_trailers_and_extensions_is_read(base_url, raw_key, fast):
    """Straight on the socket: a chunk extension and a trailer field, as HTTP/1.1 allows."""
    url = urlsplit(base_url)
    body = json.dumps({"model": "fast", "messages": HELLO}).encode()
    wire = b"".join(
        [
            f"POST {url.path}/chat/completions HTTP/1.1\r\nHost: {url.netloc}\r\n".encode(),
            f"Authorization: Bearer {raw_key}\r\nContent-Type: application/json\r\n".encode(),
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            f"{len(body[:10]):x};note=first\r\n".encode(), body[:10], b"\r\n",
            f"{len(body[10:]):X}\r\n".encode(), body[10:], b"\r\n",
            b"0\r\nX-Trailer: yes\r\n\r\n",
        ]
    )  # fmt: skip
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(wire)
        answer = b""
        while piece := sock.recv(65536):
            answer += piece
    head, _, content = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer[:300]
    assert b"Echo: Hello" in content


def _asgi_post(key: str, body: bytes) -> tuple[int, dict, bytes]:
    from core.asgi import ASGIHandler

    headers = [(b"authorization", f"Bearer {key}".encode()), (b"content-type", b"application/json")]
    return asyncio.run(
        asgi_call(ASGIHandler(), "POST", "/v1/chat/completions", body=body, headers=headers, chunked=True)
    )


def test_a_chunked_body_is_read_under_the_asgi_handler_and_413_over_the_limit(raw_key, fast):
    status, _, content = _asgi_post(raw_key, json.dumps({"model": "fast", "messages": HELLO}).encode())
    assert status == 200, content
    assert json.loads(content)["choices"][0]["message"]["content"] == "Echo: Hello"

    over = json.dumps({"model": "fast", "messages": [{"role": "user", "content": "z" * (3 * MIB)}]}).encode()
    status, head, content = _asgi_post(raw_key, over)
    assert status == 413, content
    assert head["content-type"].startswith("application/json")
    error = json.loads(content)["error"]
    assert error["code"] == "request_too_large" and error["type"] == "invalid_request_error"
    assert Turn.objects.count() == 1


def test_a_malformed_chunked_body_is_a_400(base_url, raw_key, fast):
    url = urlsplit(base_url)
    wire = (
        f"POST {url.path}/chat/completions HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {raw_key}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
    ).encode()
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(wire)
        answer = b""
        while piece := sock.recv(65536):
            answer += piece
    assert answer.startswith(b"HTTP/1.1 400"), answer[:300]
    assert b'"type": "invalid_request_error"' in answer or b'"type":"invalid_request_error"' in answer
    assert nothing_written()


# --- text that cannot be stored or walked ----------------------------------------------

SURROGATE = "\\ud800"  # as the JSON escape: json accepts it, UTF-8 cannot encode it
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}


def body_with(**fields: object) -> str:
    return json.dumps({"model": "fast", "messages": HELLO, **fields})


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


REFUSED = {
    # name: (the raw JSON body, the param named)
    "a lone surrogate in content": (
        json.dumps({"model": "fast", "messages": [{"role": "user", "content": "a@b"}]}).replace("@", SURROGATE),
        "messages[0].content",
    ),
    "a lone surrogate in a content part": (
        json.dumps(
            {"model": "fast", "messages": [{"role": "user", "content": [{"type": "text", "text": "@"}]}]}
        ).replace("@", SURROGATE),
        "messages[0].content[0].text",
    ),
    "a lone surrogate in stop": (body_with(stop="a@").replace("@", SURROGATE), "stop"),
    "a lone surrogate in a list of stops": (body_with(stop=["end", "a@"]).replace("@", SURROGATE), "stop[1]"),
    "a lone surrogate in tool parameters": (
        body_with(tools=[{**TOOL, "function": {**TOOL["function"], "parameters": {"description": "@"}}}]).replace(
            "@", SURROGATE
        ),
        "tools[0].function.parameters.description",
    ),
    "a lone surrogate in a key": (body_with(extra={"k@": 1}).replace("@", SURROGATE), "extra.k\\ud800"),
    "a lone surrogate in user": (body_with(user="@").replace("@", SURROGATE), "user"),
    "a low surrogate alone": (body_with(user="@").replace("@", "\\udc00"), "user"),
    "a NUL in model": (json.dumps({"model": "fa\x00st", "messages": HELLO}), "model"),
    "a NUL in user": (body_with(user="me\x00"), "user"),
    "deep nesting in messages": (f'{{"model": "fast", "messages": {nested(50_000)}}}', "messages"),
    "nesting past the bound in tool parameters": (
        body_with(tools=[{**TOOL, "function": {**TOOL["function"], "parameters": {"p": "@"}}}]).replace(
            '"@"', nested(MAX_DEPTH)
        ),
        "tools",
    ),
    "a body that is deep nesting": (nested(50_000), None),
    "a body nested past the bound": (nested(MAX_DEPTH + 1), None),
}


@pytest.mark.parametrize("name", REFUSED)
def test_text_that_cannot_be_stored_or_walked_is_a_400_naming_the_param(sdk, base_url, raw_key, fast, name):
    text, param = REFUSED[name]
    answer = post_text(base_url, raw_key, text)
    assert answer.status_code == 400, answer.text
    error = openai_error(answer)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    assert nothing_written()


def test_nesting_up_to_the_bound_is_accepted(sdk, fast):
    # The body (level 0), tools, the tool, function: parameters is at level 4, each
    # wrapping two more (the schema, its properties), the enum's list at MAX_DEPTH - 1.
    deep: dict = {"type": "string", "enum": ["a"]}
    for _ in range((MAX_DEPTH - 1 - 4) // 2):
        deep = {"type": "object", "properties": {"p": deep}}
    tool = {"type": "function", "function": {"name": "lookup", "parameters": deep}}
    answer = sdk.chat.completions.create(model="fast", messages=HELLO, tools=[tool])
    assert answer.choices[0].message.content == "Echo: Hello"


STORED = {
    # name: (the request's fields, where the U+FFFD shows)
    "a NUL in content": ({"messages": [{"role": "user", "content": "a\x00b"}]}, "content"),
    "a NUL in stop": ({"stop": "x\x00"}, "stop"),
    "a NUL in a list of stops": ({"stop": ["end", "x\x00"]}, "stop"),
    "a NUL in tool parameters": (
        {"tools": [{**TOOL, "function": {**TOOL["function"], "parameters": {"description": "a\x00b"}}}]},
        "tools",
    ),
    "a NUL in a tool parameters key": (
        {"tools": [{**TOOL, "function": {**TOOL["function"], "parameters": {"a\x00": {"type": "string"}}}}]},
        "tools",
    ),
    "a NUL in an unknown field's key": ({"extra\x00": {"k\x00": "v\x00"}}, None),
}


@pytest.mark.parametrize("name", STORED)
def test_a_nul_where_a_replacement_character_can_stand_is_stored_as_one(base_url, raw_key, fast, name):
    fields, where = STORED[name]
    answer = raw_post(base_url, raw_key, {"model": "fast", "messages": HELLO, **fields})
    assert answer.status_code == 200, answer.text
    turn = Turn.objects.get()
    assert turn.status == "completed"
    if where == "content":
        assert Message.objects.filter(role="user").get().content == f"a{FFFD}b"
    elif where is not None:
        assert FFFD in json.dumps(turn.completion_options[where], ensure_ascii=False)
        assert "\x00" not in json.dumps(turn.completion_options, ensure_ascii=False)


# --- on the Procfile's own web process (gunicorn's ASGI worker) ------------------------


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.worker
@pytest.mark.xdist_group("stack")  # the Procfile's stacks run on one xdist worker, one at a time (tests/conftest.py)
def test_on_the_procfile_stack_a_chunked_body_is_read_and_bad_bodies_are_4xx_without_an_error_logged(
    tmp_path, owner, raw_key, fast
):  # fmt: skip

    from bench.stack import Stack
    from tests.conftest import _worker_env, spare_redis_url

    env = {**_worker_env(), "REDIS_URL": spare_redis_url()}
    env.pop("DEBUG")
    log = tmp_path / "procfile.log"
    stack = Stack(env, log)
    stack.start(("web", "worker"))
    base_url = f"http://127.0.0.1:{stack.port}/v1"
    headers = {"Authorization": f"Bearer {raw_key}", "Content-Type": "application/json"}
    try:
        with httpx2.Client(timeout=60, headers=headers) as client:
            small = json.dumps({"model": "fast", "messages": HELLO}).encode()
            read = client.post(f"{base_url}/chat/completions", content=chunked(small, 7))
            over = json.dumps({"model": "fast", "messages": [{"role": "user", "content": "z" * (3 * MIB)}]}).encode()
            chunked_over = client.post(f"{base_url}/chat/completions", content=chunked(over))
            sized_over = client.post(f"{base_url}/chat/completions", content=over)
        refused = {name: post_text(base_url, raw_key, text) for name, (text, _) in REFUSED.items()}
    finally:
        stack.stop()

    assert read.status_code == 200, read.text
    assert read.json()["choices"][0]["message"]["content"] == "Echo: Hello"
    for answer in (chunked_over, sized_over):
        assert answer.status_code == 413, answer.text
        assert openai_error(answer)["code"] == "request_too_large"
    assert {name: (answer.status_code, answer.json()["error"]["param"]) for name, answer in refused.items()} == {
        name: (400, param) for name, (_, param) in REFUSED.items()
    }
    assert " ERROR " not in log.read_text() and "Traceback" not in log.read_text()
    assert Turn.objects.count() == 1
