"""Turns run by a real Celery worker on Redis against the (PostgreSQL) test database:
the request answers 202 and the worker completes the turn; `Prefer: wait` answers
201 without ever waiting on a task result; the stream is fed live by the worker; a
worker SIGKILLed mid-turn leaves a turn that another worker takes over once its
lease runs out, completes once and charges once."""

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone

from billing.models import CreditHold, CreditTransaction
from chat.models import LLMCall, Message, Turn
from chat.services import turns_sweep
from tests.chat.conftest import (
    START_BALANCE,
    expected_cost,
    local_tokens,
    make_price,
    post_turn,
    turn_status,
    wait_for,
    wallet_of,
)
from tests.chat.sse import read_all
from tests.conftest import client_for
from tests.fakes.llm_servers import Reply

pytestmark = [pytest.mark.worker, pytest.mark.postgres]


def finished(turn_id) -> bool:  # noqa: ANN001
    return turn_status(turn_id) in ("completed", "failed")


def test_a_turn_is_accepted_then_completed_by_the_worker(celery_worker, owner_client, session, funded_owner):
    answer = post_turn(owner_client, session, "Hello worker")
    assert answer.status_code == 202, answer.content
    assert answer.data["status"] in ("queued", "running")
    assert answer["Location"] == f"/api/v1/turns/{answer.data['id']}"
    wait_for(lambda: finished(answer.data["id"]))

    body = owner_client.get(answer["Location"]).data
    cost = expected_cost(4 + local_tokens("Hello worker"), local_tokens("Echo: Hello worker"))
    assert (body["status"], body["credits_charged"]) == ("completed", f"{cost:.8f}")
    assert body["messages"][-1]["content"] == "Echo: Hello worker"
    assert wallet_of(funded_owner).balance == START_BALANCE - cost and wallet_of(funded_owner).held == 0
    assert CreditTransaction.objects.filter(kind="debit", reference=body["id"]).count() == 1


def test_prefer_wait_answers_201_with_the_turn_the_worker_completed(celery_worker, owner_client, session):
    answer = post_turn(owner_client, session, "Quick one", prefer="wait=20")
    assert answer.status_code == 201, answer.content
    assert answer.data["status"] == "completed" and answer.data["messages"][-1]["content"] == "Echo: Quick one"
    assert answer["Preference-Applied"] == "wait=20" and "Location" not in answer
    # The body came with the worker's `done` event; it is exactly what GET turns/{id} reads.
    assert json.loads(answer.content) == json.loads(owner_client.get(f"/api/v1/turns/{answer.data['id']}").content)


def test_prefer_wait_that_runs_out_answers_202(worker_with_env, owner_client, session):
    worker_with_env(LOCAL_LLM_LATENCY_MS="3000")
    started = time.monotonic()
    answer = post_turn(owner_client, session, "Slow one", prefer="wait=1")
    assert answer.status_code == 202 and 1.0 <= time.monotonic() - started < 2.5
    assert "Location" in answer
    wait_for(lambda: finished(answer.data["id"]))


def _asgi_turn(session, key: str, *, leave_when: threading.Event | None = None) -> tuple[int, dict]:  # noqa: ANN001
    """POST a turn with `Prefer: wait=20` through the web process's ASGI handler; with
    `leave_when` the client goes away once that event is set."""
    from core.asgi import ASGIHandler
    from tests.asgi import asgi_call

    headers = [
        (b"authorization", f"Bearer {key}".encode()), (b"content-type", b"application/json"),
        (b"prefer", b"wait=20"),
    ]  # fmt: skip
    body = json.dumps({"content": "Through ASGI"}).encode()
    if leave_when is None:
        status, _, content = asyncio.run(
            asgi_call(ASGIHandler(), "POST", f"/api/v1/sessions/{session.pk}/turns", body=body, headers=headers)
        )
        return status, json.loads(content)
    messages = [{"type": "http.request", "body": body}]

    async def receive() -> dict:
        if messages:
            return messages.pop(0)
        assert await asyncio.to_thread(leave_when.wait, 20)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        pass

    path = f"/api/v1/sessions/{session.pk}/turns"
    scope = {
        "type": "http", "http_version": "1.1", "method": "POST", "path": path, "raw_path": path.encode(),
        "root_path": "", "scheme": "http", "query_string": b"", "server": ("testserver", 80),
        "client": ("127.0.0.1", 5000),
        "headers": [(b"host", b"testserver"), (b"content-length", str(len(body)).encode()), *headers],
    }  # fmt: skip
    asyncio.run(ASGIHandler()(scope, receive, send))
    return 0, {}


def test_prefer_wait_on_the_event_loop_hands_the_turn_over_once_it_listens(
    celery_worker, session, funded_owner, monkeypatch
):
    """Under ASGI the wait hands the turn to the worker itself, after it subscribed:
    nothing asks the database whether the turn already finished (the first check a
    waiter on someone else's turn makes), and the turn completes."""
    from accounts.services import api_key_create
    from chat import streaming

    asked = []

    async def finished(turn_id) -> bool:  # noqa: ANN001
        asked.append(turn_id)
        return await real_finished(turn_id)

    real_finished = streaming.finished
    monkeypatch.setattr(streaming, "finished", finished)
    _, key = api_key_create(user=funded_owner, name="asgi")
    status, body = _asgi_turn(session, key)
    assert status == 201, body
    assert body["status"] == "completed" and body["messages"][-1]["content"] == "Echo: Through ASGI"
    assert asked == []


def test_a_prefer_wait_whose_client_leaves_before_the_hand_over_still_runs_its_turn(
    celery_worker, session, funded_owner, monkeypatch
):
    """The client leaves while the wait subscribes (before it handed the turn over)."""
    from accounts.services import api_key_create
    from chat import streaming

    listening = threading.Event()

    async def slow_to_listen(**kwargs) -> tuple[bool, dict | None]:  # noqa: ANN003
        listening.set()
        await asyncio.sleep(30)  # the client leaves meanwhile
        return await real_turn_wait(**kwargs)

    real_turn_wait = streaming.turn_wait
    monkeypatch.setattr(streaming, "turn_wait", slow_to_listen)
    _, key = api_key_create(user=funded_owner, name="asgi")
    _asgi_turn(session, key, leave_when=listening)
    turn = Turn.objects.get(session=session)
    wait_for(lambda: finished(turn.pk), timeout=30)
    assert turn_status(turn.pk) == "completed"


def test_a_prefer_wait_whose_client_leaves_while_its_view_runs_still_runs_its_turn(
    celery_worker, session, funded_owner, monkeypatch
):
    """The client leaves while the view still runs on its thread: the view ends all
    the same, and what its answer left to the event loop (the hand-over) runs."""
    from accounts.services import api_key_create
    from chat.api import turns as turns_api

    accepted, go_on = threading.Event(), threading.Event()

    def slow_turn_create(**kwargs):  # noqa: ANN003, ANN202
        found = real_turn_create(**kwargs)
        accepted.set()
        assert go_on.wait(20)  # the client leaves meanwhile
        return found

    real_turn_create = turns_api.turn_create
    monkeypatch.setattr(turns_api, "turn_create", slow_turn_create)
    _, key = api_key_create(user=funded_owner, name="asgi")
    _asgi_turn(session, key, leave_when=accepted)  # returns once the request is cancelled
    go_on.set()
    turn = Turn.objects.get(session=session)
    wait_for(lambda: finished(turn.pk), timeout=30)
    assert turn_status(turn.pk) == "completed"


def test_the_worker_streams_the_reply_live(worker_with_env, owner_client, session):
    worker_with_env(LOCAL_LLM_LATENCY_MS="2000")
    content = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu"
    turn = post_turn(owner_client, session, content).data
    body = read_all(owner_client.get(f"/api/v1/turns/{turn['id']}/stream")).decode()
    received = [
        (block.split("\n")[0].removeprefix("event: "), json.loads(block.split("\n")[1].removeprefix("data: ")))
        for block in body.split("\n\n") if block and not block.startswith(":")
    ]  # fmt: skip
    deltas = [data["text"] for name, data in received if name == "delta"]
    assert len(deltas) >= 3 and "".join(deltas) == f"Echo: {content}"
    assert received[-1][0] == "done" and received[-1][1]["status"] == "completed"


def test_openai_turns_on_the_worker_through_the_fake_server(worker_with_env, fake_openai, owner_client, session):
    worker_with_env(OPENAI_BASE_URL=fake_openai.base_url, OPENAI_API_KEY="sk-worker")
    make_price("gpt", provider="openai", provider_model="gpt-test")
    fake_openai.script(Reply(text="From the fake.", input_tokens=777, output_tokens=88))
    answer = post_turn(owner_client, session, "hi", model_alias="gpt", prefer="wait=20")
    assert answer.status_code == 201, answer.content
    assert answer.data["messages"][-1]["content"] == "From the fake."
    assert answer.data["credits_charged"] == f"{expected_cost(777, 88):.8f}"
    assert fake_openai.requests[-1].headers["authorization"] == "Bearer sk-worker"
    assert fake_openai.requests[-1].body["stream"] is True  # the worker streams (Redis is there)


def test_a_worker_killed_mid_turn_is_taken_over_once_its_lease_runs_out_and_charged_once(
    worker_with_env, owner_client, session, funded_owner
):
    # A short lease keeps this quick; tests/chat/test_turn_reliability.py runs the
    # Procfile's worker and beat at the default lease.
    worker = worker_with_env(LOCAL_LLM_LATENCY_MS="3000", TURN_LEASE_SECONDS="3")
    answer = post_turn(owner_client, session, "Survive this")
    turn_id = answer.data["id"]
    wait_for(lambda: turn_status(turn_id) == "running", timeout=30)
    time.sleep(0.5)  # mid-reply
    worker.kill()
    assert turn_status(turn_id) == "running"
    assert wallet_of(funded_owner).held > 0 and not LLMCall.objects.exists()
    assert turns_sweep() == 0  # the dead worker's lease is still live: nobody else may run the turn

    worker.start()
    wait_for(lambda: Turn.objects.get(pk=turn_id).lease_expires_at < timezone.now(), timeout=10)
    assert turns_sweep() == 1  # what beat does every few seconds: hands the turn over
    wait_for(lambda: finished(turn_id), timeout=60)

    turn = Turn.objects.get(pk=turn_id)
    cost = expected_cost(4 + local_tokens("Survive this"), local_tokens("Echo: Survive this"))
    assert (turn.status, turn.attempts, turn.credits_charged) == ("completed", 2, cost)
    assert CreditTransaction.objects.filter(kind="debit", reference=turn_id).count() == 1
    assert LLMCall.objects.filter(turn_id=turn_id).count() == 1
    assert Message.objects.filter(turn_id=turn_id, role="assistant").count() == 1
    assert CreditHold.objects.get(reference=turn_id).status == "settled"
    wallet = wallet_of(funded_owner)
    assert (wallet.balance, wallet.held) == (START_BALANCE - cost, Decimal("0"))


def test_fifty_concurrent_turns_on_the_worker_leave_the_exact_balance(celery_worker, session, funded_owner, settings):
    settings.MAX_CONCURRENT_TURNS_PER_USER = 50  # the ledger under load here; fair use is tests/chat/test_fair_use.py
    contents = [f"turn number {n} " + "x" * n for n in range(50)]

    def send(content: str) -> str:
        try:
            answer = post_turn(client_for(funded_owner), session, content)
            # Accepted; 201 when the worker had already finished it as the answer was made.
            assert answer.status_code in (201, 202), answer.content
            return answer.data["id"]
        finally:
            connection.close()  # this thread's own connection

    with ThreadPoolExecutor(max_workers=10) as pool:
        ids = list(pool.map(send, contents))
    wait_for(lambda: Turn.objects.filter(pk__in=ids, status="completed").count() == 50, timeout=120)

    # Each turn's own cost from its recorded usage, rounded up per call.
    costs = [expected_cost(c.input_tokens, c.output_tokens) for c in LLMCall.objects.filter(turn_id__in=ids)]
    assert len(costs) == 50
    wallet = wallet_of(funded_owner)
    assert wallet.balance == START_BALANCE - sum(costs) and wallet.held == 0
    assert CreditTransaction.objects.filter(kind="debit").count() == 50
    assert sum(t.amount for t in CreditTransaction.objects.filter(kind="debit")) == -sum(costs)


def test_a_turn_longer_than_its_lease_keeps_it_and_is_never_handed_over_twice(
    worker_with_env, owner_client, session, funded_owner
):
    # An 8 s reply on a 3 s lease: the worker renews it every second while it works.
    worker_with_env(LOCAL_LLM_LATENCY_MS="8000", TURN_LEASE_SECONDS="3")
    turn_id = post_turn(owner_client, session, "Take your time").data["id"]
    wait_for(lambda: turn_status(turn_id) == "running", timeout=30)
    handed_over = []
    while turn_status(turn_id) == "running":
        handed_over.append(turns_sweep())  # what beat does every few seconds
        assert Turn.objects.get(pk=turn_id).lease_expires_at > timezone.now()
        time.sleep(1.0)
    assert len(handed_over) >= 5 and set(handed_over) == {0}
    turn = Turn.objects.get(pk=turn_id)
    assert (turn.status, turn.attempts) == ("completed", 1)
    assert LLMCall.objects.filter(turn_id=turn_id).count() == 1
