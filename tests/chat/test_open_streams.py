"""The Procfile's own `web` and `worker` processes hold 100 open streams of a slow
model while health keeps answering within a second, with PostgreSQL connections
bounded (a reduced bench/concurrency.py)."""

import asyncio
import json
import time
from decimal import Decimal
from pathlib import Path

import pytest
import redis
from django.db import connection
from django.db.models import Sum

from accounts.services import api_key_create, user_create
from bench.stack import Stack, connections_to, http_json, http_open, http_request, read_head, sse_events
from billing.models import CreditHold, CreditTransaction, Wallet
from billing.services import wallet_grant
from chat.models import ChatSession, Turn
from tests.chat.conftest import make_price
from tests.conftest import _worker_env, spare_redis_url

# xdist_group: the Procfile's stacks run on one xdist worker, one at a time (tests/conftest.py).
pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.worker, pytest.mark.xdist_group("stack")]

USERS, TURNS_EACH = 10, 10
LATENCY_MS = 8000


async def _open_stream(port: int, key: str, turn_id: str) -> tuple[asyncio.StreamWriter, object]:
    reader, writer = await http_open(port)
    writer.write(http_request("GET", f"/api/v1/turns/{turn_id}/stream", {"Authorization": f"Bearer {key}"}))
    status, headers = await read_head(reader)
    assert status == 200
    events = sse_events(reader, headers)
    assert (await anext(events))[0] == "status"  # subscribed: the stream is open
    return writer, events


async def _scenario(port: int, seeds: list[tuple[str, int]], env: dict[str, str], owner_id: int) -> dict:
    turns = []
    for key, session_id in seeds:
        for n in range(TURNS_EACH):
            status, body = await http_json(
                port, "POST", f"/api/v1/sessions/{session_id}/turns", {"Authorization": f"Bearer {key}"},
                {"content": f"question {n} " + "word " * 40},
            )  # fmt: skip
            assert status == 202, body
            turns.append((key, body["id"]))
    streams = await asyncio.gather(*(_open_stream(port, key, turn_id) for key, turn_id in turns))
    # All 100 are open now, the model still answering: the API must keep answering.
    health = []
    for _ in range(10):
        began = time.perf_counter()
        status, _ = await asyncio.wait_for(http_json(port, "GET", "/api/v1/health", {}), timeout=5)
        health.append((status, time.perf_counter() - began))
        await asyncio.sleep(0.1)
    connections = await asyncio.to_thread(connections_to, env["DATABASE_URL"], connection.settings_dict["NAME"])

    async def finish(events) -> str:  # noqa: ANN001
        async for name, data in events:
            if name == "done":
                return json.loads(data)["status"]
        return "no done event"

    finals = await asyncio.gather(*(finish(events) for _, events in streams))
    for writer, _ in streams:
        writer.close()

    # A client that goes away mid-stream frees its slot at once (the turn goes on).
    key, session_id = seeds[0]
    status, body = await http_json(
        port, "POST", f"/api/v1/sessions/{session_id}/turns", {"Authorization": f"Bearer {key}"}, {"content": "bye"}
    )
    writer, _ = await _open_stream(port, key, body["id"])
    writer.close()
    await asyncio.sleep(1.0)
    streams_open = await asyncio.to_thread(redis.Redis.from_url(env["REDIS_URL"]).zcard, f"parley:streams:{owner_id}")
    # `Prefer: wait` through the real server: the wait on the event loop, then 201.
    status_waited, waited = await http_json(
        port, "POST", f"/api/v1/sessions/{session_id}/turns",
        {"Authorization": f"Bearer {key}", "Prefer": "wait=30"}, {"content": "wait for me"},
    )  # fmt: skip
    for _ in range(150):  # ...and the turn goes on, to be charged as any other
        status, body = await http_json(port, "GET", f"/api/v1/turns/{body['id']}", {"Authorization": f"Bearer {key}"})
        if body["status"] in ("completed", "failed"):
            break
        await asyncio.sleep(0.1)
    return {
        "health": health, "finals": finals, "connections": connections, "streams_open": streams_open,
        "left": body["status"], "waited": (status_waited, waited.get("status")),
    }  # fmt: skip


@pytest.mark.django_db(transaction=True)
def test_the_procfile_stack_holds_100_open_streams_and_health_keeps_answering(tmp_path: Path) -> None:
    price = make_price(alias="slow")
    seeds, owners = [], []
    for n in range(USERS):
        user = user_create(email=f"streamer{n}@example.com")
        wallet_grant(user=user, amount=Decimal("100"), reason="test credits")
        _, key = api_key_create(user=user, name="streams")
        seeds.append((key, ChatSession.objects.create(user=user, model_alias=price.alias).pk))
        owners.append(user.pk)
    env = {**_worker_env(), "REDIS_URL": spare_redis_url(), "LOCAL_LLM_LATENCY_MS": str(LATENCY_MS)}
    env.pop("DEBUG")
    stack = Stack(env, tmp_path / "procfile.log")
    stack.start(("web", "worker"))
    try:
        result = asyncio.run(_scenario(stack.port, seeds, env, owners[0]))
    finally:
        stack.stop()

    assert all(status == 200 and seconds < 1.0 for status, seconds in result["health"]), result["health"]
    assert result["finals"] == ["completed"] * USERS * TURNS_EACH
    assert result["connections"] <= 50
    assert result["streams_open"] == 0  # the stream whose client went away freed its slot
    assert result["left"] == "completed"
    assert result["waited"] == (201, "completed")
    assert not CreditHold.objects.filter(status=CreditHold.Status.ACTIVE).exists()
    for wallet in Wallet.objects.filter(user__email__startswith="streamer"):
        ledger = CreditTransaction.objects.filter(wallet=wallet).aggregate(total=Sum("amount"))["total"]
        charged = Turn.objects.filter(user_id=wallet.user_id).aggregate(total=Sum("credits_charged"))["total"]
        assert wallet.balance == ledger == Decimal("100") - charged and wallet.held == 0
