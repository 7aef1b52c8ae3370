"""Turns survive a dead broker, a dead worker and a dead database, run by the
Procfile's own `web`, `worker` and `beat` processes at their default settings
(PostgreSQL + Redis): each turn completes once, is charged once, and
reconcile_wallets finds nothing to mend afterwards.

- The broker stopped when the turn is accepted (a Redis server this test starts on
  its own port): 202 within 2 s, the rest of the API answering, health 503 naming
  the broker; the turn completes within 30 s of the broker coming back.
- The worker SIGKILLed mid-turn: a duplicate message meanwhile runs nothing; the
  turn is taken over within 90 s.
- The database refusing connections when the worker completes: the completion is
  retried with the outcome in hand; past the retries the outcome waits in Redis
  and the worker that takes the turn over writes it. The provider is asked once.
"""

import contextlib
import io
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
import redis
from celery import Celery
from django.core.management import call_command
from django.db import connection

from accounts.services import api_key_create, user_create
from bench.stack import Stack, free_port
from billing.models import CreditHold, CreditTransaction, Wallet
from billing.services import wallet_grant
from chat.models import ChatSession, LLMCall, Message, Turn
from tests.chat.conftest import expected_cost, make_price, wait_for
from tests.conftest import _worker_env, spare_redis_url
from tests.fakes.llm_servers import FakeOpenAIServer, Reply

# xdist_group: the Procfile's stacks run on one xdist worker, one at a time (tests/conftest.py).
pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.worker,
    pytest.mark.django_db(transaction=True),
    pytest.mark.xdist_group("stack"),
]

CREDITS = Decimal("100")
# A reply streamed over about 2 s (20 pieces, 0.1 s apart), usage 11 in / 7 out.
SLOW = Reply(text="word " * 16, chunk_chars=4, chunk_delay=0.1)
CHARGE = expected_cost(11, 7)


class RedisServer:
    """A Redis server of this test's own, on its own port, to stop and start again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(lambda: _answers(self.url), timeout=10)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


def _stack(tmp_path: Path, redis_url: str, fake: FakeOpenAIServer, **extra: str) -> Stack:
    env = {**_worker_env(), "REDIS_URL": redis_url, "OPENAI_BASE_URL": fake.base_url, "OPENAI_API_KEY": "sk-test",
           "LLM_TIMEOUT_SECONDS": "10", **extra}  # fmt: skip
    env.pop("DEBUG")
    env.pop("CELERY_VISIBILITY_TIMEOUT")  # the default, as shipped
    redis.Redis.from_url(redis_url).flushdb()
    return Stack(env, tmp_path / "procfile.log")


def _customer(email: str) -> tuple[str, ChatSession]:
    price = make_price("gpt", provider="openai", provider_model="gpt-test")
    user = user_create(email=email)
    wallet_grant(user=user, amount=CREDITS, reason="test credits")
    _, key = api_key_create(user=user, name="reliability")
    return key, ChatSession.objects.create(user=user, model_alias=price.alias)


def _call(port: int, method: str, path: str, key: str = "", body: dict | None = None) -> tuple[int, dict, float]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method, data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})},
    )  # fmt: skip
    began = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read() or b"{}"), time.monotonic() - began
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}"), time.monotonic() - began


def _status(turn_id: str) -> str:
    return Turn.objects.filter(pk=turn_id).values_list("status", flat=True).first()


def _assert_charged_once(turn_id: str, *, charge: Decimal = CHARGE) -> None:
    turn = Turn.objects.get(pk=turn_id)
    assert (turn.status, turn.credits_charged) == ("completed", charge), turn.error
    assert CreditTransaction.objects.filter(kind="debit", reference=turn_id).count() == 1
    assert LLMCall.objects.filter(turn_id=turn_id).count() == 1
    assert Message.objects.filter(turn_id=turn_id, role="assistant").count() == 1
    wallet = Wallet.objects.get(user_id=turn.user_id)
    assert (wallet.balance, wallet.held) == (CREDITS - charge, 0)
    assert not CreditHold.objects.filter(status=CreditHold.Status.ACTIVE).exists()
    report = io.StringIO()
    call_command("reconcile_wallets", stdout=report)
    assert "DRIFT" not in report.getvalue(), report.getvalue()


@pytest.fixture
def fake() -> Iterator[FakeOpenAIServer]:
    server = FakeOpenAIServer().start()
    yield server
    server.stop()


def test_a_turn_accepted_while_the_broker_is_down_runs_once_the_broker_is_back(tmp_path, fake):
    key, session = _customer("outage@example.com")
    broker = RedisServer().start()
    stack = _stack(tmp_path, broker.url, fake)
    stack.start(("web", "worker", "beat"))
    try:
        broker.stop()
        status, body, seconds = _call(
            stack.port, "POST", f"/api/v1/sessions/{session.pk}/turns", key, {"content": "hi"}
        )
        assert (status, seconds < 2.0) == (202, True), (status, body, seconds)
        turn = Turn.objects.get(pk=body["id"])
        assert (turn.status, turn.dispatched_at) == ("queued", None)  # in the outbox
        status, wallet, _ = _call(stack.port, "GET", "/api/v1/users/me/wallet", key)  # throttled, and answering
        assert status == 200 and Decimal(wallet["held"]) > 0
        status, health, _ = _call(stack.port, "GET", "/api/v1/health")
        assert status == 503 and health["status"] == "down: broker" and not health["broker"]["ok"]

        broker.start()
        back = time.monotonic()
        wait_for(lambda: _status(turn.pk) == "completed", timeout=30)
        recovered_in = time.monotonic() - back
    finally:
        stack.stop()
        broker.stop()
    print(f"completed {recovered_in:.1f} s after the broker came back")
    _assert_charged_once(str(turn.pk))
    assert len(fake.requests) == 1


def test_a_turn_whose_worker_was_killed_is_taken_over_within_90_s_and_runs_once_at_a_time(tmp_path, fake):
    key, session = _customer("killed@example.com")
    fake.script(SLOW.__class__(**{**SLOW.__dict__, "chunk_delay": 0.25}), SLOW)  # the first run lasts ~5 s
    redis_url = spare_redis_url()
    stack = _stack(tmp_path, redis_url, fake)
    stack.start(("web", "worker", "beat"))
    try:
        status, body, _ = _call(stack.port, "POST", f"/api/v1/sessions/{session.pk}/turns", key, {"content": "hi"})
        assert status == 202
        turn_id = body["id"]
        wait_for(lambda: len(fake.requests) == 1, timeout=30)
        # The broker delivers the turn again while it runs (a duplicate message):
        # the live lease keeps the second delivery out.
        Celery(broker=redis_url, set_as_current=False).send_task("chat.run_turn", args=[turn_id])
        time.sleep(1.5)
        assert len(fake.requests) == 1 and _status(turn_id) == "running"

        os.killpg(stack.procs["worker"].pid, signal.SIGKILL)  # like an OOM kill, mid-reply
        killed = time.monotonic()
        stack.procs["worker"].wait(10)
        stack.start(("worker",))
        wait_for(lambda: _status(turn_id) == "completed", timeout=90)
        taken_over_in = time.monotonic() - killed
    finally:
        stack.stop()
    print(f"completed {taken_over_in:.1f} s after its worker was killed")
    _assert_charged_once(turn_id)
    assert Turn.objects.get(pk=turn_id).attempts == 2
    assert len(fake.requests) == 2  # the dead worker's call, and the takeover's


@contextlib.contextmanager
def database_refusing(seconds: float) -> Iterator[None]:
    """For `seconds`, the test database takes no connection and loses the ones it
    had (pg_terminate_backend), but for this test's own."""
    name, own = connection.settings_dict["NAME"], connection.connection.info.backend_pid
    server = f"postgres://{connection.settings_dict['USER']}@{connection.settings_dict['HOST'] or '127.0.0.1'}:" \
             f"{connection.settings_dict['PORT'] or 5432}/postgres"  # fmt: skip
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> %s", [name, own]
            )
            time.sleep(seconds)
            yield
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            if getattr(connection, "pool", None) is not None:
                connection.pool.check()  # this process's idle pooled connections were terminated too


def _turn_in_completion(tmp_path: Path, fake: FakeOpenAIServer, email: str, reply: Reply = SLOW,
                        **env: str) -> tuple[Stack, str]:  # fmt: skip
    """A turn whose reply is about to end, on the Procfile's processes."""
    key, session = _customer(email)
    fake.script(reply)
    stack = _stack(tmp_path, spare_redis_url(), fake, **env)
    stack.start(("web", "worker", "beat"))
    status, body, _ = _call(stack.port, "POST", f"/api/v1/sessions/{session.pk}/turns", key, {"content": "hi"})
    assert status == 202
    wait_for(lambda: len(fake.requests) == 1, timeout=30)
    time.sleep(1.5)  # mid-stream: the worker holds no connection while the model answers
    return stack, body["id"]


def test_database_connections_killed_at_completion_are_retried_with_the_outcome_in_hand(tmp_path, fake):
    # The reply lasts about 4 s and the database refuses from 1.5 s to 6.5 s after it
    # began: its end (and the completion) falls in the outage with seconds to spare on
    # both sides, however busy the machine.
    # A short pool wait: the completion's connection request fails during the outage
    # (rather than waiting it out in the pool), so the refusal and the retry happen.
    slower = replace(SLOW, chunk_delay=0.2)
    stack, turn_id = _turn_in_completion(
        tmp_path, fake, "dbkill@example.com", reply=slower, DB_POOL_TIMEOUT_SECONDS="1"
    )
    try:
        with database_refusing(5.0):
            pass
        wait_for(lambda: _status(turn_id) == "completed", timeout=30)
    finally:
        stack.stop()
    assert "completion failed" in stack.log.read_text()  # it was refused, and retried
    _assert_charged_once(turn_id)
    assert len(fake.requests) == 1  # never asked again


def test_an_outcome_the_database_refused_past_the_retries_is_written_once_it_is_back(tmp_path, fake):
    # Short retries, lease and pool wait so that the test is quick; the path is the same.
    stack, turn_id = _turn_in_completion(
        tmp_path, fake, "dbdown@example.com",
        TURN_COMPLETE_RETRY_SECONDS="2", TURN_LEASE_SECONDS="6", DB_POOL_TIMEOUT_SECONDS="1",
    )  # fmt: skip
    kept = redis.Redis.from_url(stack.env["REDIS_URL"])
    try:
        with database_refusing(9.0):
            assert kept.exists(f"parley:outcome:{turn_id}")  # the worker gave up and kept it
        wait_for(lambda: _status(turn_id) == "completed", timeout=45)
    finally:
        stack.stop()
    assert "the outcome waits in Redis" in stack.log.read_text()
    _assert_charged_once(turn_id)
    assert Turn.objects.get(pk=turn_id).attempts == 2  # written by the run that took it over
    assert len(fake.requests) == 1  # the provider was not asked again
    assert not kept.exists(f"parley:outcome:{turn_id}")
