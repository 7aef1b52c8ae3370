"""/v1 on the Procfile's own `web` (gunicorn's ASGI worker) and `worker` processes,
with PostgreSQL and Redis: the `openai` SDK (sync and async, plain and streaming, a
tool round trip) and langchain-openai get their answers from the worker; 50 streams
open at once are fed live while health keeps answering; a stream left early stops
its turn; every request is one turn, charged once, and the ledger adds up."""

import asyncio
import json
import time
from decimal import Decimal
from pathlib import Path

import openai
import pytest
from django.db.models import Sum
from langchain_openai import ChatOpenAI

from accounts.services import api_key_create, user_create
from bench.stack import Stack, http_json, http_open, http_request, read_head, sse_events
from billing.models import CreditHold, CreditTransaction, Wallet
from billing.services import wallet_grant
from chat.models import ChatSession, LLMCall, Turn
from reporting.selectors import usage_summary
from tests.conftest import _worker_env, spare_redis_url
from tests.openai_api.test_sdk import WEATHER

# xdist_group: the Procfile's stacks run on one xdist worker, one at a time (tests/conftest.py).
pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.worker, pytest.mark.xdist_group("stack")]

USERS, STREAMS_EACH = 5, 10
LATENCY_MS = 3000
CREDITS = Decimal("100")


async def _stream(client: openai.AsyncOpenAI, n: int) -> dict:
    began = time.perf_counter()
    stream = await client.chat.completions.create(
        model="fast", messages=[{"role": "user", "content": f"question {n} " + "word " * 30}], stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks, first_text = [], None
    async for chunk in stream:
        if first_text is None and chunk.choices and chunk.choices[0].delta.content:
            first_text = time.perf_counter() - began
        chunks.append(chunk)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return {
        "text": text, "expected": f"Echo: question {n} " + "word " * 30, "pieces": sum(
            1 for c in chunks if c.choices and c.choices[0].delta.content
        ), "usage": chunks[-1].usage, "first_text": first_text, "seconds": time.perf_counter() - began,
    }  # fmt: skip


async def _scenario(port: int, keys: list[str]) -> dict:
    base = f"http://127.0.0.1:{port}/v1"
    clients = [openai.AsyncOpenAI(base_url=base, api_key=key, max_retries=0, timeout=120) for key in keys]
    streams = asyncio.gather(*(_stream(clients[n % USERS], n) for n in range(USERS * STREAMS_EACH)))
    await asyncio.sleep(1.0)  # all open, the model still answering: the API must keep answering
    health = []
    for _ in range(5):
        began = time.perf_counter()
        status, _ = await asyncio.wait_for(http_json(port, "GET", "/api/v1/health", {}), timeout=5)
        health.append((status, time.perf_counter() - began))
        await asyncio.sleep(0.1)
    results = await streams
    plain = await clients[0].chat.completions.with_raw_response.create(
        model="fast", messages=[{"role": "user", "content": "async plain"}]
    )
    status, turn = await http_json(
        port, "GET", f"/api/v1/turns/{plain.headers['X-Parley-Turn']}", {"Authorization": f"Bearer {keys[0]}"}
    )
    # A client that goes away mid-stream stops its turn (what was said is charged).
    reader, writer = await http_open(port)
    body = {"model": "fast", "stream": True, "messages": [{"role": "user", "content": "leave early " + "word " * 60}]}
    writer.write(
        http_request(
            "POST", "/v1/chat/completions",
            {"Authorization": f"Bearer {keys[2]}", "Content-Type": "application/json"}, json.dumps(body).encode(),
        )
    )  # fmt: skip
    _, headers = await read_head(reader)
    pieces = 0
    async for _, data in sse_events(reader, headers):
        chunk = json.loads(data)
        pieces += bool(chunk["choices"] and chunk["choices"][0]["delta"].get("content"))
        if pieces == 2:
            break
    writer.close()
    left = headers["x-parley-turn"]
    for _ in range(100):
        status, body = await http_json(port, "GET", f"/api/v1/turns/{left}", {"Authorization": f"Bearer {keys[2]}"})
        if body["status"] not in ("queued", "running"):
            break
        await asyncio.sleep(0.1)
    for client in clients:
        await client.close()
    return {"health": health, "streams": results, "plain": plain.parse(), "turn": (status, turn), "left": body}


def _sync_clients(port: int, key: str) -> dict:
    base = f"http://127.0.0.1:{port}/v1"
    client = openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=60)
    plain = client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "sync plain"}])
    streamed = list(
        client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "sync stream"}], stream=True)
    )
    asked = [{"role": "user", "content": '[[tool get_weather {"city": "Turin"}]]'}]
    tool_call = client.chat.completions.create(model="fast", messages=asked, tools=[WEATHER]).choices[0].message
    (call,) = tool_call.tool_calls
    answered = client.chat.completions.create(
        model="fast", tools=[WEATHER], messages=[
            *asked, {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "foggy"},
        ],
    )  # fmt: skip
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    langchain = ChatOpenAI(model="fast", base_url=base, api_key=key, max_retries=0, timeout=60).invoke("via langchain")
    client.close()
    return {
        "plain": plain.choices[0].message.content,
        "streamed": "".join(c.choices[0].delta.content or "" for c in streamed if c.choices),
        "tool": (call.function.name, json.loads(call.function.arguments)),
        "answered": answered.choices[0].message.content,
        "langchain": langchain.content,
    }


@pytest.mark.django_db(transaction=True)
def test_the_procfile_stack_serves_v1_with_50_concurrent_streams(tmp_path: Path) -> None:
    from tests.chat.conftest import make_price

    make_price("fast")
    keys = []
    for n in range(USERS):
        user = user_create(email=f"v1-{n}@example.com")
        wallet_grant(user=user, amount=CREDITS, reason="test credits")
        keys.append(api_key_create(user=user, name="sdk")[1])
    env = {**_worker_env(), "REDIS_URL": spare_redis_url(), "LOCAL_LLM_LATENCY_MS": str(LATENCY_MS)}
    env.pop("DEBUG")
    stack = Stack(env, tmp_path / "procfile.log")
    stack.start(("web", "worker"))
    try:
        result = asyncio.run(_scenario(stack.port, keys))
        synced = _sync_clients(stack.port, keys[1])
    finally:
        stack.stop()

    assert all(status == 200 and seconds < 1.0 for status, seconds in result["health"]), result["health"]
    streams = result["streams"]
    assert [s["text"] for s in streams] == [s["expected"] for s in streams]
    # Fed live from the worker: in pieces, the first long before the model finished.
    assert all(s["pieces"] > 1 and s["first_text"] < s["seconds"] - 1.0 for s in streams), [(s["pieces"], s["first_text"], s["seconds"]) for s in streams]
    assert all(s["usage"] is not None and s["usage"].completion_tokens > 0 for s in streams)
    assert result["plain"].choices[0].message.content == "Echo: async plain"
    status, turn = result["turn"]
    assert status == 200 and turn["status"] == "completed" and turn["llm_calls"][0]["finish_reason"] == "stop"
    assert synced == {
        "plain": "Echo: sync plain", "streamed": "Echo: sync stream", "tool": ("get_weather", {"city": "Turin"}),
        "answered": "Tool get_weather returned: foggy", "langchain": "Echo: via langchain",
    }  # fmt: skip

    left = result["left"]
    assert left["status"] == "cancelled"
    assert len(left["messages"][-1]["content"]) < len("Echo: leave early " + "word " * 60)
    turns = Turn.objects.exclude(pk=left["id"])
    assert turns.count() == USERS * STREAMS_EACH + 1 + 5
    assert set(turns.values_list("status", flat=True)) == {"completed"}
    assert ChatSession.objects.filter(source="openai").count() == USERS
    # One debit per turn, the turn's id its reference (the stopped one: what was said).
    debits = CreditTransaction.objects.filter(kind="debit").exclude(reference=left["id"])
    assert sorted(debits.values_list("reference", flat=True)) == sorted(str(pk) for pk in turns.values_list("pk", flat=True))
    assert not CreditHold.objects.filter(status=CreditHold.Status.ACTIVE).exists()
    for wallet in Wallet.objects.filter(user__email__startswith="v1-"):
        charged = Turn.objects.filter(user_id=wallet.user_id).aggregate(total=Sum("credits_charged"))["total"]
        assert wallet.balance == CREDITS - charged and wallet.held == 0
    summary = usage_summary(source="openai")
    assert summary["totals"]["calls"] == LLMCall.objects.count() == turns.count() + 1
    assert [row["source"] for row in usage_summary()["by_source"]] == ["openai"]
