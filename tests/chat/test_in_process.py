"""Turns run in the web process (TURNS_IN_PROCESS, the embedded default's way: no
broker), through bin/serve's own server line (tests/serve.py): pieces stream as the
model produces them on /v1 and on the turn's stream, a Stop mid-stream and a /v1
client that leaves both end the turn `cancelled` with what was said charged once, and
a run that crashes fails its turn with nothing charged, and a turn a stopped server
left running is taken over by the process's sweep."""

import json
import threading
import time
import uuid
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import httpx2
import openai
import pytest
from django.utils import timezone

from accounts.services import api_key_create
from billing.models import CreditHold, CreditTransaction, ModelPrice
from billing.money import call_cost, ledger_amount
from billing.services import wallet_grant
from chat import dispatch, leases
from chat.llm.base import estimate_tokens
from chat.models import ChatSession, Turn
from chat.services import turns as turn_services
from chat.services.turns import turn_create
from tests.chat.conftest import make_price
from tests.serve import served, server_env

LATENCY_MS = 3000
# About 60 words: 16 pieces of 4 words, one every ~190 ms of the 3 s.
QUESTION = "tell me " + "word " * 60
CREDITS = Decimal("100")


@pytest.fixture
def seeded(owner) -> dict:  # noqa: ANN001
    """The owner with credits, an API key, the `slow` local model, the same counted by
    o200k_base (`counted`), and a chat session. What a stopped stream said is billed by
    its alias's count: by o200k_base it is less than the `local` model's own report of
    the whole answer (about 4 characters a token), by UTF-8 bytes it may be more."""
    price = make_price("slow")
    counted = make_price("counted", counting="o200k_base")
    wallet_grant(user=owner, amount=CREDITS, reason="test credits")
    _, key = api_key_create(user=owner, name="in-process")
    session = ChatSession.objects.create(user=owner, model_alias=price.alias)
    return {"key": key, "session": session.pk, "price": counted}


@pytest.fixture
def server(seeded: dict, tmp_path: Path) -> str:
    with served(server_env(tmp_path, LOCAL_LLM_LATENCY_MS=str(LATENCY_MS)), tmp_path / "serve.log") as base:
        # A first request imports what Django and DRF import lazily, as any server's
        # first visitor has it done; the timings below are of a server that has answered.
        assert _api(base, seeded["key"], "GET", "/users/me/wallet").status_code == 200
        yield base


def _api(base: str, key: str, method: str, path: str, body: dict | None = None) -> httpx2.Response:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx2.request(method, f"{base}/api/v1{path}", json=body, headers=headers, timeout=30)


def _finished(base: str, key: str, turn_id: str) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        turn = _api(base, key, "GET", f"/turns/{turn_id}").json()
        if turn["status"] not in ("queued", "running"):
            return turn
        time.sleep(0.1)
    raise AssertionError(f"turn {turn_id} did not finish: {turn['status']}")


def _full_answer_cost(price: ModelPrice, turn: dict) -> Decimal:
    """What the whole reply would have cost: the partial call's input, the full echo's output."""
    full = call_cost(
        input_tokens=turn["llm_calls"][0]["input_tokens"], output_tokens=estimate_tokens(f"Echo: {QUESTION}"),
        input_price=price.input_credits_per_mtok, output_price=price.output_credits_per_mtok,
    )  # fmt: skip
    return ledger_amount(full)


def _assert_charged_once_partially(base: str, seeded: dict, turn: dict) -> None:
    """Cancelled, what was said kept and charged: one debit, less than the whole answer,
    the hold settled."""
    assert turn["status"] == "cancelled", turn
    charged = Decimal(turn["credits_charged"])
    assert Decimal("0") < charged < _full_answer_cost(seeded["price"], turn)
    assert 0 < turn["llm_calls"][0]["output_tokens"] < estimate_tokens(f"Echo: {QUESTION}")
    said = "".join(m["content"] for m in turn["messages"] if m["role"] == "assistant")
    assert said and f"Echo: {QUESTION}".startswith(said) and len(said) < len(f"Echo: {QUESTION}")
    rows = _api(base, seeded["key"], "GET", "/users/me/transactions").json()["results"]
    debits = [row for row in rows if row["reference"] == turn["id"]]
    assert [(row["kind"], Decimal(row["amount"])) for row in debits] == [("debit", -charged)]
    wallet = _api(base, seeded["key"], "GET", "/users/me/wallet").json()
    assert Decimal(wallet["balance"]) == CREDITS - charged
    assert Decimal(wallet["held"]) == 0


def _sse(response: httpx2.Response):  # noqa: ANN202  an iterator of (event, data)
    name = None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            yield name, json.loads(line[len("data: ") :])
            name = None


@pytest.mark.django_db(transaction=True)
def test_v1_streams_the_first_piece_well_before_half_the_models_latency(server: str, seeded: dict) -> None:
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=seeded["key"], max_retries=0, timeout=30)
    began = time.perf_counter()
    stream = client.chat.completions.create(
        model="slow", messages=[{"role": "user", "content": QUESTION}], stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    arrivals, text = [], ""
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.perf_counter() - began)
            text += chunk.choices[0].delta.content
    total = time.perf_counter() - began
    print(f"/v1 in process: first piece after {arrivals[0]:.3f} s, {len(arrivals)} pieces, done after {total:.3f} s")

    assert arrivals[0] < 1.5
    assert len(arrivals) >= 8 and arrivals[-1] - arrivals[0] > 1.5  # in pieces, as they came
    assert text == f"Echo: {QUESTION}"
    assert chunk.usage is not None and chunk.usage.completion_tokens == estimate_tokens(text)


@pytest.mark.django_db(transaction=True)
def test_the_turn_stream_delivers_pieces_as_the_model_produces_them(server: str, seeded: dict) -> None:
    began = time.perf_counter()
    created = _api(server, seeded["key"], "POST", f"/sessions/{seeded['session']}/turns", {"content": QUESTION})
    assert created.status_code == 202, created.text  # answered at once: the turn runs off the request's thread
    accepted = time.perf_counter() - began
    headers = {"Authorization": f"Bearer {seeded['key']}"}
    arrivals, names = [], []
    url = f"{server}/api/v1/turns/{created.json()['id']}/stream"
    with httpx2.stream("GET", url, headers=headers, timeout=30) as response:
        assert response.status_code == 200
        for name, data in _sse(response):
            names.append(name)
            if name == "delta":
                arrivals.append(time.perf_counter() - began)
            if name == "done":
                done = data
                break
    print(f"turn stream in process: accepted after {accepted:.3f} s, first piece after {arrivals[0]:.3f} s")

    assert accepted < 1.5
    assert arrivals[0] < 1.5
    assert len(arrivals) >= 8 and arrivals[-1] - arrivals[0] > 1.5
    assert names[0] == "status" and names[-1] == "done"
    assert done["status"] == "completed"
    assert done["messages"][-1]["content"] == f"Echo: {QUESTION}"


@pytest.mark.django_db(transaction=True)
def test_a_stop_mid_stream_cancels_the_turn_and_charges_what_was_said(server: str, seeded: dict) -> None:
    body = {"content": QUESTION, "model_alias": "counted"}
    created = _api(server, seeded["key"], "POST", f"/sessions/{seeded['session']}/turns", body)
    turn_id = created.json()["id"]
    headers = {"Authorization": f"Bearer {seeded['key']}"}
    pieces, stopped = 0, None
    with httpx2.stream("GET", f"{server}/api/v1/turns/{turn_id}/stream", headers=headers, timeout=30) as response:
        for name, data in _sse(response):
            if name == "delta":
                pieces += 1
                if pieces == 1:
                    stopped = _api(server, seeded["key"], "POST", f"/turns/{turn_id}/cancel")
                    stop_sent = time.perf_counter()
            if name == "done":
                ended = time.perf_counter() - stop_sent
                done = data
                break

    assert stopped.status_code == 202 and stopped.json()["status"] == "running"
    assert ended < 1.5  # at the next piece, not after the ~2.8 s the answer had left
    assert done["status"] == "cancelled"
    _assert_charged_once_partially(server, seeded, _finished(server, seeded["key"], turn_id))


@pytest.mark.django_db(transaction=True)
def test_a_client_that_leaves_a_v1_stream_cancels_its_turn_and_pays_what_was_said(server: str, seeded: dict) -> None:
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=seeded["key"], max_retries=0, timeout=30)
    raw = client.chat.completions.with_raw_response.create(
        model="counted", messages=[{"role": "user", "content": QUESTION}], stream=True
    )
    turn_id = raw.headers["X-Parley-Turn"]
    stream = raw.parse()
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break  # a first piece came: the client goes away
    stream.close()
    client.close()

    turn = _finished(server, seeded["key"], turn_id)
    _assert_charged_once_partially(server, seeded, turn)


@pytest.mark.django_db(transaction=True)
def test_an_in_process_run_that_crashes_fails_its_turn_with_nothing_charged(seeded, owner, settings, monkeypatch) -> None:  # noqa: ANN001, E501
    settings.TURNS_IN_PROCESS = True
    # Nothing left running for the tests after this one (their eager turns' leases).
    monkeypatch.setattr(dispatch, "in_process_sweep_start", lambda: None)
    monkeypatch.setattr(leases, "_keeper_start", lambda: None)

    accepted, ran_on = threading.Event(), []

    def broken(**kwargs) -> None:  # noqa: ANN003
        ran_on.append(threading.current_thread().name)
        accepted.wait(5)
        raise RuntimeError("a bug in the engine")

    monkeypatch.setattr(turn_services, "turn_outcome", broken)
    # Waited for on the pool, not by polling the database: the test's in-memory SQLite
    # (shared cache) refuses a write while another connection reads ("table is locked").
    ran, run = threading.Event(), dispatch._run_in_process

    def run_then_tell(turn_id: str) -> None:
        try:
            run(turn_id)
        finally:
            ran.set()

    monkeypatch.setattr(dispatch, "_run_in_process", run_then_tell)
    session = ChatSession.objects.get(pk=seeded["session"])
    turn, _ = turn_create(user=owner, session=session, content="hello")  # handed to the pool on commit
    accepted.set()  # the request is answered before its turn runs

    assert ran.wait(20)
    turn.refresh_from_db()
    assert ran_on[0].startswith("turn_")  # a thread of the turn pool, not the request's
    assert turn.status == Turn.Status.FAILED
    assert turn.error == "The turn could not be run; nothing was charged for it."
    assert turn.credits_charged == 0
    assert not CreditTransaction.objects.filter(reference=str(turn.pk), kind="debit").exists()
    hold = CreditHold.objects.get(reference=str(turn.pk))
    assert hold.status == CreditHold.Status.RELEASED


@pytest.mark.django_db(transaction=True)
def test_a_turn_cut_by_a_restart_is_taken_over_by_the_in_process_sweep(seeded, owner, settings, monkeypatch) -> None:  # noqa: ANN001, E501
    settings.TURNS_IN_PROCESS = True
    monkeypatch.setattr(dispatch, "in_process_sweep_start", lambda: None)
    monkeypatch.setattr(leases, "_keeper_start", lambda: None)
    session = ChatSession.objects.get(pk=seeded["session"])
    turn, _ = turn_create(user=owner, session=session, content="hello again", hand_over=False)
    # What the server that stopped mid-turn left: running, its lease run out, never handed over since.
    now = timezone.now()
    Turn.objects.filter(pk=turn.pk).update(
        status=Turn.Status.RUNNING, attempts=1, started_at=now - timedelta(seconds=90), lease_token=uuid.uuid4(),
        lease_expires_at=now - timedelta(seconds=60), dispatched_at=now - timedelta(seconds=90),
    )  # fmt: skip

    dispatch.in_process_sweep()

    deadline = time.monotonic() + 20
    while Turn.objects.get(pk=turn.pk).status == Turn.Status.RUNNING and time.monotonic() < deadline:
        time.sleep(0.05)
    turn.refresh_from_db()
    assert turn.status == Turn.Status.COMPLETED and turn.attempts == 2
    debits = CreditTransaction.objects.filter(reference=str(turn.pk), kind="debit")
    assert [row.amount for row in debits] == [-turn.credits_charged] and turn.credits_charged > 0
