"""POST /v1/embeddings: OpenAI's shapes through the real `openai` SDK and
langchain-openai's OpenAIEmbeddings, each request a turn of the key's `embeddings`
session, held at its counted tokens and charged once (reference = turn id) at the
tokens the provider reported and the alias's input price; failover, the errors
OpenAI's clients expect, the event loop's path (core.asgi) and a client that leaves
mid-call on a live ASGI server; a web process that died mid-call leaves a turn the
sweep fails with its hold released. On the embedded default and on PostgreSQL."""

import asyncio
import base64
import contextlib
import json
import math
import os
import socket
import sqlite3
import struct
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from decimal import ROUND_CEILING, Decimal
from pathlib import Path

import httpx2
import openai
import pytest
import tiktoken
from django.db import connection
from django.utils import timezone
from langchain_openai import OpenAIEmbeddings

from accounts.services import api_key_create
from billing.models import CreditHold, CreditTransaction, ModelPrice, Wallet
from billing.services import wallet_grant
from chat.engine.embedding import EmbeddingRequest, token_id_limit
from chat.llm import counting
from chat.llm.local import DEFAULT_DIMENSIONS, local_tokens, local_vector
from chat.models import ChatSession, LLMCall, Message, Turn
from chat.services.embeddings import embedding_turn_create
from chat.services.turns import EMBEDDINGS_INTERRUPTED, turns_sweep
from core.asgi import ASGIHandler
from routing.models import Deployment, Upstream
from tests.asgi import asgi_call
from tests.chat.conftest import IN_PRICE, make_price
from tests.fakes.llm_servers import Error, FakeOpenAIServer, Reply, fake_embedding
from tests.openai_api.conftest import START_BALANCE

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent.parent


def make_embed(alias: str = "embed", **extra) -> ModelPrice:  # noqa: ANN003
    """An embedding alias (the local model unless told), input at IN_PRICE."""
    values = {"provider_model": "local-embed", "max_output_tokens": 1, "context_tokens": 8191, **extra}
    return make_price(alias, kind=ModelPrice.Kind.EMBEDDING, **values)


@pytest.fixture
def embed(db) -> ModelPrice:  # noqa: ANN001
    return make_embed()


def cost(tokens: int, price: Decimal = IN_PRICE) -> Decimal:
    """The input price's charge, rounded up at the 8th place (computed here)."""
    return (Decimal(tokens) * price / Decimal(1_000_000)).quantize(Decimal("0.00000001"), rounding=ROUND_CEILING)


def held_for(texts: list[str]) -> int:
    """What a `bytes` alias holds for texts: their UTF-8 bytes and 2 a text."""
    return sum(len(text.encode()) + 2 for text in texts)


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def debits() -> list[CreditTransaction]:
    return list(CreditTransaction.objects.filter(kind="debit").order_by("id"))


def error_of(response: httpx2.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


def post(base_url: str, key: str, body: dict, path: str = "/embeddings", **headers: str) -> httpx2.Response:
    return httpx2.post(f"{base_url}{path}", json=body, headers={"Authorization": f"Bearer {key}", **headers},
                       timeout=30)  # fmt: skip


# --- the openai SDK ------------------------------------------------------------------


def test_models_lists_chat_and_embedding_aliases(sdk, fast, embed):
    assert sorted(model.id for model in sdk.models.list().data) == ["embed", "fast"]


def test_floats_are_one_turn_charged_once_at_the_reported_tokens(sdk, embed, owner, owner_client):
    texts = ["The cat sat on the mat", "Quarterly revenue grew"]
    raw = sdk.embeddings.with_raw_response.create(model="embed", input=texts, encoding_format="float")
    answer = raw.parse()

    assert answer.object == "list" and answer.model == "embed"
    assert [(item.object, item.index) for item in answer.data] == [("embedding", 0), ("embedding", 1)]
    assert [item.embedding for item in answer.data] == [pytest.approx(local_vector(text)) for text in texts]
    assert all(len(item.embedding) == DEFAULT_DIMENSIONS for item in answer.data)
    assert math.isclose(dot(answer.data[0].embedding, answer.data[0].embedding), 1.0)
    reported = sum(local_tokens(text) for text in texts)
    assert (answer.usage.prompt_tokens, answer.usage.total_tokens) == (reported, reported)

    turn = Turn.objects.get(pk=raw.headers["X-Parley-Turn"])
    assert turn.status == "completed" and turn.credits_charged == cost(reported)
    assert raw.headers["X-Parley-Credits-Charged"] == f"{cost(reported):.8f}"
    assert turn.session.source == ChatSession.Source.EMBEDDINGS and turn.session.api_key.user == owner
    [debit] = debits()
    assert (debit.reference, debit.amount) == (str(turn.pk), -cost(reported))
    assert Wallet.objects.get(user=owner).balance == START_BALANCE - cost(reported)
    assert not CreditHold.objects.filter(status=CreditHold.Status.ACTIVE).exists()
    hold = CreditHold.objects.get(reference=str(turn.pk))
    assert hold.amount == cost(held_for(texts))  # the bytes rule's count, 2 more a text
    call = LLMCall.objects.get(turn=turn)
    assert (call.purpose, call.input_tokens, call.output_tokens, call.usage_reported, call.upstream) == (
        "embedding", reported, 0, True, "local"
    )  # fmt: skip
    shown = owner_client.get(f"/api/v1/turns/{turn.pk}").json()
    assert (shown["status"], shown["credits_charged"], shown["llm_calls"][0]["purpose"]) == (
        "completed", f"{cost(reported):.8f}", "embedding"
    )  # fmt: skip
    # What was asked, in short: no text, no vector.
    assert list(Message.objects.filter(turn=turn).values_list("role", "content")) == [
        ("user", f"Embeddings: 2 inputs, {held_for(texts)} tokens counted.")
    ]


def test_base64_the_sdks_default_decodes_to_the_same_vectors(sdk, embed):
    default = sdk.embeddings.create(model="embed", input="Hello there")  # the SDK asks for base64
    raw = post(str(sdk.base_url).rstrip("/"), sdk.api_key, {"model": "embed", "input": "Hello there",
                                                            "encoding_format": "base64"})  # fmt: skip
    nulls = post(str(sdk.base_url).rstrip("/"), sdk.api_key, {"model": "embed", "input": "Hello there",
                                                              "encoding_format": None, "user": None,
                                                              "dimensions": None})  # fmt: skip
    assert nulls.json()["data"][0]["embedding"] == pytest.approx(local_vector("Hello there"))  # null: floats
    packed = base64.b64decode(raw.json()["data"][0]["embedding"])
    floats = list(struct.unpack(f"<{DEFAULT_DIMENSIONS}f", packed))
    assert default.data[0].embedding == pytest.approx(local_vector("Hello there"), abs=1e-6)
    assert floats == pytest.approx(default.data[0].embedding)
    assert len(debits()) == 3


def test_token_arrays_are_counted_exactly_and_dimensions_are_honoured(sdk, embed):
    answer = sdk.embeddings.create(model="embed", input=[[1, 2, 3], [400, 5]], dimensions=64,
                                   encoding_format="float")  # fmt: skip
    assert [len(item.embedding) for item in answer.data] == [64, 64]
    assert answer.data[0].embedding == pytest.approx(local_vector([1, 2, 3], 64))
    assert answer.usage.prompt_tokens == 5
    turn = Turn.objects.get()
    assert CreditHold.objects.get(reference=str(turn.pk)).amount == cost(5)
    assert turn.credits_charged == cost(5)
    one = sdk.embeddings.create(model="embed", input=[7, 8, 9], encoding_format="float")  # one token array
    assert len(one.data) == 1 and one.usage.prompt_tokens == 3


def test_same_text_same_vector_and_similar_texts_are_closer(sdk, embed):
    texts = ["the cat sat on the mat", "the cat sat on the mat", "a cat sat on a mat", "stock prices fell sharply"]
    vectors = [item.embedding for item in sdk.embeddings.create(model="embed", input=texts).data]
    assert vectors[0] == vectors[1]
    assert dot(vectors[0], vectors[2]) > dot(vectors[0], vectors[3]) + 0.3


def test_refusals_name_the_param_and_write_nothing(sdk, base_url, raw_key, embed, fast, owner, owner_client):
    make_price("claude", provider="anthropic", provider_model="claude-haiku", kind="embedding")
    make_embed("exact", counting="o200k_base", context_tokens=10)
    cases = {
        "unknown alias": ({"model": "nope", "input": "x"}, 404, "model"),
        "a chat alias": ({"model": "fast", "input": "x"}, 400, "model"),
        "anthropic": ({"model": "claude", "input": "x"}, 400, "model"),
        "empty list": ({"model": "embed", "input": []}, 400, "input"),
        "empty string": ({"model": "embed", "input": ["a", ""]}, 400, "input"),
        "empty token array": ({"model": "embed", "input": [[1], []]}, 400, "input"),
        "mixed": ({"model": "embed", "input": ["a", [1]]}, 400, "input"),
        "too many": ({"model": "embed", "input": ["a"] * 2049}, 400, "input"),
        "too long": ({"model": "exact", "input": ["short", "word " * 11]}, 400, "input"),
        "token id out of range": ({"model": "exact", "input": [[1, token_id_limit("o200k_base") + 1]]}, 400, "input"),
        "negative token id": ({"model": "embed", "input": [[1, -1]]}, 400, "input"),
        "format": ({"model": "embed", "input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
    }
    answers = {name: post(base_url, raw_key, body) for name, (body, _, _) in cases.items()}
    assert {name: (a.status_code, error_of(a)["param"]) for name, a in answers.items()} == {
        name: (status, param) for name, (_, status, param) in cases.items()
    }
    assert "Anthropic" in error_of(answers["anthropic"])["message"]
    assert "10" in error_of(answers["too long"])["message"]
    # An embedding alias is no chat model, on /v1 and on the chat API.
    chat = post(base_url, raw_key, {"model": "embed", "messages": [{"role": "user", "content": "hi"}]},
                path="/chat/completions")  # fmt: skip
    assert (chat.status_code, error_of(chat)["param"]) == (400, "model")
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model="embed", messages=[{"role": "user", "content": "hi"}])
    session = ChatSession.objects.create(user=owner, model_alias="fast")
    turn = owner_client.post(f"/api/v1/sessions/{session.pk}/turns", {"content": "hi", "model_alias": "embed"},
                       format="json")  # fmt: skip
    assert turn.status_code == 400 and "model_alias" in turn.json()["error"]["fields"]
    made = owner_client.post("/api/v1/sessions", {"model_alias": "embed"}, format="json")
    assert made.status_code == 400 and "model_alias" in made.json()["error"]["fields"]
    assert not Turn.objects.exists() and not CreditHold.objects.exists() and not LLMCall.objects.exists()


def test_an_end_user_over_budget_gets_insufficient_quota_by_user_field_or_header(base_url, owner, embed):
    wallet_grant(user=owner, amount=START_BALANCE, reason="test credits")
    _, key = api_key_create(user=owner, name="webui", end_user_budget_credits=Decimal("0.0001"))
    sdk = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=30)
    sdk.embeddings.create(model="embed", input="small", user="alice")  # within alice's budget
    with pytest.raises(openai.RateLimitError) as refused:
        sdk.embeddings.create(model="embed", input="word " * 1000, user="alice")
    assert refused.value.code == "insufficient_quota" and "alice" in refused.value.message
    headers = {"X-OpenWebUI-User-Id": "bob"}
    with pytest.raises(openai.RateLimitError) as by_header:
        sdk.embeddings.create(model="embed", input="word " * 1000, extra_headers=headers)
    assert by_header.value.code == "insufficient_quota" and "bob" in by_header.value.message
    sdk.embeddings.create(model="embed", input="small", extra_headers=headers)  # bob's own budget
    turns = Turn.objects.order_by("created_at")
    assert [(t.end_user.external_id, t.status) for t in turns] == [("alice", "completed"), ("bob", "completed")]
    assert len(debits()) == 2


def test_the_usage_report_shows_embeddings_as_their_source(sdk, embed, owner_client, fast):
    sdk.embeddings.create(model="embed", input=["one", "two"], extra_headers={"X-Parley-Purpose": "rag"})
    sdk.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi"}])
    report = owner_client.get("/api/v1/users/me/usage", {"source": "embeddings"}).json()
    assert report["totals"]["calls"] == 1
    assert [row["model_alias"] for row in report["by_model"]] == ["embed"]
    everything = owner_client.get("/api/v1/users/me/usage").json()
    assert {row["source"]: row["calls"] for row in everything["by_source"]} == {"embeddings": 1, "openai": 1}
    assert {row["purpose"] for row in everything["by_purpose"]} >= {"rag"}


# --- langchain-openai ------------------------------------------------------------------


@pytest.fixture
def offline_tiktoken(monkeypatch) -> None:  # noqa: ANN001
    """tiktoken's encodings from the installed package (chat.llm.counting), not downloaded."""
    monkeypatch.setattr(tiktoken, "get_encoding", counting.encoding)


def test_langchain_embeds_documents_and_a_query_as_token_arrays(base_url, raw_key, embed, offline_tiktoken):
    embeddings = OpenAIEmbeddings(model="embed", base_url=base_url, api_key=raw_key, max_retries=0)
    documents = embeddings.embed_documents(["Parley meters every token.", "Holds bound every charge."])
    query = embeddings.embed_query("What bounds a charge?")
    assert [len(vector) for vector in [*documents, query]] == [DEFAULT_DIMENSIONS] * 3
    tokens = counting.encoding("cl100k_base").encode_ordinary("Parley meters every token.")
    assert documents[0] == pytest.approx(local_vector(tokens), abs=1e-6)  # sent as cl100k token ids
    calls = list(LLMCall.objects.order_by("id"))
    assert [c.input_tokens for c in calls][0] == len(tokens) + len(
        counting.encoding("cl100k_base").encode_ordinary("Holds bound every charge.")
    )
    assert len(debits()) == 2


def test_langchain_sends_text_without_the_length_check(base_url, raw_key, embed):
    embeddings = OpenAIEmbeddings(model="embed", base_url=base_url, api_key=raw_key, max_retries=0,
                                  check_embedding_ctx_length=False)  # fmt: skip
    assert embeddings.embed_query("plain text") == pytest.approx(local_vector("plain text"), abs=1e-6)


# --- an OpenAI-compatible upstream ----------------------------------------------------------


@pytest.fixture
def upstream_alias(fake_openai_server) -> ModelPrice:  # noqa: ANN001
    return make_embed("te3", provider="openai", provider_model="text-embedding-3-small")


def test_an_openai_upstream_is_asked_for_floats_and_charged_its_reported_tokens(sdk, upstream_alias,
                                                                                  fake_openai_server):  # fmt: skip
    dense = "中文😀 " * 40  # dense text: far more bytes than any tokenizer's tokens
    reported = len(counting.encoding("o200k_base").encode_ordinary(dense))
    fake_openai_server.script(Reply(input_tokens=reported))
    answer = sdk.embeddings.create(model="te3", input=[dense], dimensions=16, user="carol")
    assert answer.data[0].embedding == pytest.approx(fake_embedding(dense, 16))
    assert answer.usage.prompt_tokens == reported
    [sent] = fake_openai_server.requests
    assert sent.path.endswith("/embeddings")
    assert {k: sent.body[k] for k in ("model", "input", "encoding_format", "dimensions", "user")} == {
        "model": "text-embedding-3-small", "input": [dense], "encoding_format": "float", "dimensions": 16,
        "user": "carol",
    }  # fmt: skip
    turn = Turn.objects.get()
    hold = CreditHold.objects.get(reference=str(turn.pk))
    assert turn.credits_charged == cost(reported) < hold.amount == cost(held_for([dense]))
    call = LLMCall.objects.get()
    assert (call.upstream, call.provider_model, call.usage_reported) == ("openai", "text-embedding-3-small", True)


def test_an_upstream_without_usage_is_charged_the_count(sdk, upstream_alias, fake_openai_server):
    fake_openai_server.script(Reply(include_usage=False))
    sdk.embeddings.create(model="te3", input=["abc", "de"])
    call = LLMCall.objects.get()
    assert (call.usage_reported, call.input_tokens) == (False, held_for(["abc", "de"]))
    assert Turn.objects.get().credits_charged == cost(held_for(["abc", "de"]))


def test_a_503_fails_over_to_the_next_upstream_and_only_the_answer_is_charged(sdk, settings, monkeypatch):
    servers = [FakeOpenAIServer().start(), FakeOpenAIServer().start()]
    settings.LLM_MAX_RETRIES = 0
    try:
        monkeypatch.setenv("PARLEY_TEST_EMBED_KEY", "sk-embed-test-0001")
        price = make_embed("routed", provider="openai", provider_model="text-embedding-3-small")
        for priority, (name, server) in enumerate(zip(("primary", "backup"), servers, strict=True)):
            upstream = Upstream.objects.create(name=name, kind="openai", base_url=server.base_url,
                                               api_key_env="PARLEY_TEST_EMBED_KEY", timeout_seconds=5)  # fmt: skip
            Deployment.objects.create(alias=price.alias, upstream=upstream, provider_model="m", priority=priority)
        servers[0].script(Error(503))
        servers[1].script(Reply(input_tokens=9))
        answer = sdk.embeddings.create(model="routed", input="fail over")
    finally:
        for server in servers:
            server.stop()
    assert answer.usage.prompt_tokens == 9
    calls = list(LLMCall.objects.order_by("id"))
    assert [(c.upstream, c.status, c.cost) for c in calls] == [
        ("primary", "failed", Decimal(0)), ("backup", "ok", cost(9))
    ]  # fmt: skip
    assert "503" in calls[0].error
    [debit] = debits()
    assert debit.amount == -cost(9)


def test_every_upstream_failing_is_a_502_and_nothing_is_charged(sdk, upstream_alias, fake_openai_server, owner):
    fake_openai_server.script(Error(500))
    with pytest.raises(openai.APIStatusError) as failed:
        sdk.embeddings.create(model="te3", input="x")
    assert failed.value.status_code == 502
    assert Turn.objects.get().status == "failed" and not debits()
    assert Wallet.objects.get(user=owner).balance == START_BALANCE
    assert not CreditHold.objects.filter(status=CreditHold.Status.ACTIVE).exists()


# --- the event loop's path (core.asgi) -------------------------------------------------------


def _asgi_post(key: str, body: dict) -> tuple[int, dict, bytes]:
    headers = [(b"authorization", f"Bearer {key}".encode()), (b"content-type", b"application/json")]
    return asyncio.run(asgi_call(ASGIHandler(), "POST", "/v1/embeddings", body=json.dumps(body).encode(),
                                 headers=headers))  # fmt: skip


def test_under_asgi_the_call_is_made_on_the_event_loop(raw_key, embed, upstream_alias, fake_openai_server,
                                                       monkeypatch):  # fmt: skip
    from chat.engine import embedding as engine  # noqa: PLC0415  patched here only
    from chat.llm.local import LocalProvider  # noqa: PLC0415  patched here only

    def no_thread(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
        raise AssertionError("a thread waited on the model")

    monkeypatch.setattr(engine, "embedding_call", no_thread)
    monkeypatch.setattr(LocalProvider, "embed", no_thread)
    status, headers, body = _asgi_post(raw_key, {"model": "embed", "input": ["a b", "c"], "encoding_format": "float"})
    assert status == 200, body
    answer = json.loads(body)
    assert answer["data"][1]["embedding"] == pytest.approx(local_vector("c"))
    assert answer["usage"]["prompt_tokens"] == local_tokens("a b") + local_tokens("c")
    fake_openai_server.script(Reply(input_tokens=4))
    status, headers, body = _asgi_post(raw_key, {"model": "te3", "input": "upstream", "encoding_format": "base64"})
    assert status == 200, body
    packed = base64.b64decode(json.loads(body)["data"][0]["embedding"])
    assert list(struct.unpack("<8f", packed)) == fake_embedding("upstream", 8)
    # A big answer (100 vectors of 256 floats) is encoded off the loop, the same JSON.
    status, _, body = _asgi_post(raw_key, {"model": "embed", "input": [f"text {n}" for n in range(100)]})
    assert status == 200 and json.loads(body)["data"][99]["embedding"] == pytest.approx(local_vector("text 99"))
    assert [t.credits_charged for t in Turn.objects.order_by("created_at")][:2] == [cost(2), cost(4)]
    assert len(debits()) == 3


# --- a web process that died mid-call -----------------------------------------------------------


def test_the_sweep_fails_an_embeddings_turn_whose_lease_lapsed_and_releases_its_hold(owner, embed):
    wallet_grant(user=owner, amount=START_BALANCE, reason="test credits")
    api_key, _ = api_key_create(user=owner, name="died")
    request = EmbeddingRequest(price=embed, inputs=["the web process dies during this call"])
    turn, _, _ = embedding_turn_create(user=owner, api_key=api_key, request=request)
    assert CreditHold.objects.get(reference=str(turn.pk)).status == CreditHold.Status.ACTIVE
    Turn.objects.filter(pk=turn.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))

    turns_sweep()  # eager: the worker's turn_run runs here

    turn.refresh_from_db()
    assert (turn.status, turn.error, turn.credits_charged) == ("failed", EMBEDDINGS_INTERRUPTED, Decimal(0))
    assert CreditHold.objects.get(reference=str(turn.pk)).status != CreditHold.Status.ACTIVE
    assert not debits() and not LLMCall.objects.exists()
    assert Wallet.objects.get(user=owner).balance == START_BALANCE


# --- a client that leaves mid-call, on a live ASGI server -----------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def asgi_server(directory: Path, **extra: str) -> Iterator[tuple[str, Path | None]]:
    """The web process's ASGI server (gunicorn's ASGI worker, config.asgi) on a free
    port: (its base URL, the SQLite copy it serves on the embedded default, else None:
    it serves the test database itself)."""
    from tests.conftest import _worker_env  # noqa: PLC0415  PostgreSQL only

    copy = None
    if connection.vendor == "sqlite":
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        copy = directory / "db.sqlite3"
        connection.ensure_connection()
        with contextlib.closing(sqlite3.connect(copy)) as target:
            connection.connection.backup(target)
        env["DATABASE_URL"] = f"sqlite:///{copy}"
    else:
        env = {**_worker_env(), "CELERY_TASK_ALWAYS_EAGER": "true"}
    from django.conf import settings  # noqa: PLC0415  the settings this run has

    env.update(DEBUG="true", SECRET_KEY=settings.SECRET_KEY, ALLOWED_HOSTS="127.0.0.1,localhost", **extra)
    addr = f"127.0.0.1:{_free_port()}"
    log = directory / "asgi.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "python"), "-m", "gunicorn", "config.asgi", "-c", "config/gunicorn.conf.py",
             "--bind", addr, "--workers", "1", "--worker-class", "asgi", "--timeout", "120"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            with contextlib.suppress(OSError), urllib.request.urlopen(f"http://{addr}/api/v1/health", timeout=2) as up:
                if up.status == 200:
                    break
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        yield f"http://{addr}", copy
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(5)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def _rows(copy: Path | None) -> tuple[list[tuple], list[tuple]]:
    """(turns: status, credits_charged; debits: reference, amount) as the server wrote them."""
    if copy is None:
        return (
            [(t.status, t.credits_charged) for t in Turn.objects.all()],
            [(d.reference, d.amount) for d in debits()],
        )
    with contextlib.closing(sqlite3.connect(copy)) as db:
        turns = [(s, Decimal(str(c)) if c is not None else None)
                 for s, c in db.execute("SELECT status, credits_charged FROM chat_turn")]  # fmt: skip
        rows = db.execute("SELECT reference, amount FROM billing_credittransaction WHERE kind = 'debit'")
        return turns, [(r, Decimal(str(a))) for r, a in rows]


def test_a_client_that_leaves_mid_call_is_charged_once_when_the_provider_answered(tmp_path, raw_key, embed):
    with asgi_server(tmp_path, LOCAL_LLM_LATENCY_MS="1500") as (base, copy):
        body = json.dumps({"model": "embed", "input": ["left early", "and gone"]}).encode()
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(
                b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                + f"Authorization: Bearer {raw_key}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
            )
            time.sleep(0.5)  # the model is answering
        deadline = time.monotonic() + 20
        while (turns := _rows(copy)[0]) and turns[0][0] == "running" and time.monotonic() < deadline:
            time.sleep(0.2)
        after = httpx2.post(f"{base}/v1/embeddings", json={"model": "embed", "input": "stayed"},
                            headers={"Authorization": f"Bearer {raw_key}"}, timeout=30)  # fmt: skip
        assert after.status_code == 200
        turns, charged = _rows(copy)
    reported = local_tokens("left early") + local_tokens("and gone")
    assert sorted(turns) == sorted([("completed", cost(reported)), ("completed", cost(local_tokens("stayed")))])
    assert sorted(amount for _, amount in charged) == sorted([-cost(reported), -cost(local_tokens("stayed"))])
    assert len({reference for reference, _ in charged}) == 2
