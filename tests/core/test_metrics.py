"""GET /metrics: Prometheus's text format behind METRICS_TOKEN, what the code counts
(turns, debits, streams, Stripe events), what is read at scrape time (queued turns,
cooldowns), and prometheus-client's multiprocess mode as the Procfile runs it."""

import asyncio
import os
import runpy
import shutil
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.conf import settings as django_settings
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from billing.models import TopUp
from billing.services import wallet_debit, wallet_grant
from billing.stripe.services import webhook_outcome_kind
from chat.models import ChatSession, Turn
from chat.services.turns import turn_cancel, turn_create
from core.exceptions import StateConflict
from routing.cooldown import failure_record
from tests.billing.stripe.conftest import buyer_client, endpoint, stripe_on, stripe_server, webhooks  # noqa: F401
from tests.chat.conftest import START_BALANCE, expected_cost, local_tokens, make_price, post_turn, wait_for
from tests.chat.sse import SyncStream

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "metrics-test-token-0123456789"
NAMES = (
    "parley_llm_calls_total", "parley_llm_call_failures_total", "parley_llm_tokens_total", "parley_llm_credits_total",
    "parley_llm_call_seconds", "parley_llm_first_token_seconds", "parley_turns_total", "parley_turns_queued",
    "parley_open_streams", "parley_ledger_debits_total", "parley_ledger_debited_credits_total",
    "parley_stripe_events_total", "parley_upstream_cooling", "parley_upstream_cooling_until_seconds",
    "parley_hold_overruns_total",
)  # fmt: skip


@pytest.fixture
def metrics_on(settings) -> None:  # noqa: ANN001
    settings.METRICS_TOKEN = TOKEN


@pytest.fixture
def funded_owner(owner):  # noqa: ANN001, ANN201
    wallet_grant(user=owner, amount=START_BALANCE, reason="test credits")
    return owner


@pytest.fixture
def session(funded_owner) -> ChatSession:  # noqa: ANN001
    return ChatSession.objects.create(user=funded_owner, title="Owner's chat", model_alias=make_price().alias)


def scrape(client) -> str:  # noqa: ANN001
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200, response.content
    return response.content.decode()


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def count(name: str, **labels: str) -> float:
    """This process's value (the tests run without the multiprocess directory)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- access -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_without_metrics_token_the_url_does_not_exist(client, settings):
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 404


@pytest.mark.django_db
@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong-token", f"Bearer {TOKEN}x", TOKEN, f"Basic {TOKEN}", "Bearer"]
)
def test_a_missing_or_wrong_token_is_401(client, metrics_on, authorization):
    headers = {} if authorization is None else {"HTTP_AUTHORIZATION": authorization}
    response = client.get("/metrics", **headers)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert b"parley_" not in response.content


@pytest.mark.django_db
def test_the_token_gets_every_metric_in_prometheus_text_format(client, metrics_on):
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"bearer {TOKEN}")  # the scheme in any case
    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = response.content.decode()
    for name in NAMES:
        assert f"\n# TYPE {name} " in text, name  # a labelled metric with no samples yet: HELP and TYPE only
    families = {family.name for family in text_string_to_metric_families(text)}  # it parses
    assert {"parley_turns_queued", "parley_upstream_cooling"} <= families


# --- read at scrape time -----------------------------------------------------------------------


@pytest.mark.django_db
def test_queued_turns_are_counted_when_scraped(client, metrics_on, session, funded_owner):
    assert samples(scrape(client))[("parley_turns_queued", frozenset())] == 0
    turn, _ = turn_create(user=funded_owner, session=session, content="wait for me", hand_over=False)
    assert turn.status == Turn.Status.QUEUED
    assert samples(scrape(client))[("parley_turns_queued", frozenset())] == 1


@pytest.mark.django_db
def test_each_upstreams_cooldown_is_exported(client, metrics_on, settings):
    for _ in range(settings.UPSTREAM_COOLDOWN_FAILURES):
        failure_record("openai", reason="timeout", message="timed out")
    found = samples(scrape(client))
    upstream = lambda name: frozenset({("upstream", name)})  # noqa: E731
    assert found[("parley_upstream_cooling", upstream("openai"))] == 1
    assert found[("parley_upstream_cooling", upstream("local"))] == 0
    until = found[("parley_upstream_cooling_until_seconds", upstream("openai"))]
    assert time.time() < until <= time.time() + settings.UPSTREAM_COOLDOWN_SECONDS
    assert found[("parley_upstream_cooling_until_seconds", upstream("anthropic"))] == 0


# --- counted by the code ----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_turn_through_the_api_counts_the_turn_and_its_debit(client, metrics_on, owner_client, session):
    turns, debits = count("parley_turns_total", status="completed"), count("parley_ledger_debits_total")
    credits = count("parley_ledger_debited_credits_total")

    answer = post_turn(owner_client, session, "Hello there")

    assert answer.status_code == 201 and answer.data["status"] == "completed"
    cost = expected_cost(4 + local_tokens("Hello there"), local_tokens("Echo: Hello there"))
    assert count("parley_turns_total", status="completed") == turns + 1
    assert count("parley_ledger_debits_total") == debits + 1
    assert count("parley_ledger_debited_credits_total") == pytest.approx(credits + float(cost))
    found = samples(scrape(client))
    assert found[("parley_turns_total", frozenset({("status", "completed")}))] == turns + 1
    assert found[("parley_llm_calls_total", frozenset({("alias", "fast"), ("upstream", "local"), ("status", "ok")}))]


@pytest.mark.django_db
def test_a_cancelled_turn_is_counted_once(session, funded_owner, django_capture_on_commit_callbacks):
    before = count("parley_turns_total", status="cancelled")
    turn, _ = turn_create(user=funded_owner, session=session, content="never mind", hand_over=False)
    with django_capture_on_commit_callbacks(execute=True):
        turn_cancel(turn=turn)
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(StateConflict):
        turn_cancel(turn=turn)
    assert count("parley_turns_total", status="cancelled") == before + 1


@pytest.mark.django_db
def test_a_replayed_debit_is_not_counted_again(funded_owner, django_capture_on_commit_callbacks):
    debits, credits = count("parley_ledger_debits_total"), count("parley_ledger_debited_credits_total")
    for _ in range(2):
        with django_capture_on_commit_callbacks(execute=True):
            wallet_debit(user=funded_owner, amount=Decimal("1.25"), reference="metrics-replay")
    assert count("parley_ledger_debits_total") == debits + 1
    assert count("parley_ledger_debited_credits_total") == credits + 1.25


@pytest.mark.django_db(transaction=True)
def test_a_turn_stream_is_open_while_it_is_read(owner_client, session):
    turn = post_turn(owner_client, session, "Hello").data
    before = count("parley_open_streams")
    stream = SyncStream(owner_client.get(f"/api/v1/turns/{turn['id']}/stream"))
    assert b"event: status" in next(stream)
    assert count("parley_open_streams") == before + 1
    assert b"event: done" in b"".join(stream)
    assert count("parley_open_streams") == before


@pytest.mark.django_db(transaction=True)
def test_a_v1_stream_is_open_while_it_is_read(owner_client, session):
    body = {"model": "fast", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    before = count("parley_open_streams")
    stream = SyncStream(owner_client.post("/v1/chat/completions", body, format="json"))
    next(stream)
    assert count("parley_open_streams") == before + 1
    assert b"data: [DONE]" in b"".join(stream)
    assert count("parley_open_streams") == before


@pytest.mark.django_db(transaction=True)
def test_a_stream_whose_client_leaves_while_it_waits_is_no_longer_open(owner_client, session):
    turn = Turn.objects.create(session=session, user=session.user, model_alias="fast")  # queued: its stream waits
    before = count("parley_open_streams")
    stream = SyncStream(owner_client.get(f"/api/v1/turns/{turn.pk}/stream"))
    read = asyncio.run_coroutine_threadsafe(stream.body.__anext__(), stream.loop)
    wait_for(lambda: count("parley_open_streams") == before + 1)
    time.sleep(0.3)
    if read.done():  # with Redis the stream says the turn's status first; the next read waits
        read = asyncio.run_coroutine_threadsafe(stream.body.__anext__(), stream.loop)
        time.sleep(0.3)
    assert not read.done()

    read.cancel()  # the client went away: the ASGI server cancels the read the body waits in
    wait_for(lambda: count("parley_open_streams") == before)
    stream.loop.call_soon_threadsafe(stream.loop.stop)


def start_topup(client) -> TopUp:  # noqa: ANN001
    response = client.post("/api/v1/users/me/wallet/top-up", {"amount_usd": "10.00"}, format="json")
    assert response.status_code == 201, response.json()
    return TopUp.objects.get(pk=response.json()["id"])


def stripe_events() -> dict[tuple[str, str], float]:
    kinds = [("payment_intent.succeeded", "applied"), ("payment_intent.succeeded", "duplicate"), ("other", "ignored")]
    return {(t, o): count("parley_stripe_events_total", type=t, outcome=o) for t, o in kinds}


@pytest.mark.django_db
def test_stripe_events_are_counted_by_type_and_outcome(stripe_on, webhooks, buyer_client):  # noqa: F811  imported fixtures
    before = stripe_events()
    event = stripe_on.pay(start_topup(buyer_client).payment_intent_id)

    for _ in range(2):  # Stripe delivers it twice
        assert webhooks.post(event).status_code == 200
    assert webhooks.post({**event, "id": "evt_metrics_other", "type": "customer.created"}).status_code == 200

    assert {kind: n - before[kind] for kind, n in stripe_events().items()} == {
        ("payment_intent.succeeded", "applied"): 1,
        ("payment_intent.succeeded", "duplicate"): 1,
        ("other", "ignored"): 1,
    }


@pytest.mark.parametrize(
    ("outcome", "kind"),
    [
        ("granted 1000.00 to top-up 7", "applied"),
        ("already applied: granted 1000.00 to top-up 7", "duplicate"),
        ("ignored: event type", "ignored"),
        ("not a top-up's PaymentIntent", "ignored"),
        ("older than what is known of the charge's refunds", "ignored"),
        ("pending: no top-up has this PaymentIntent or charge yet", "pending"),
    ],
)
def test_a_webhook_outcome_has_its_metric_outcome(outcome, kind):
    assert webhook_outcome_kind(outcome) == kind


# --- multiprocess mode (the Procfile's processes) ------------------------------------------------

COUNT_IN_A_PROCESS = (
    "import os; from chat.metrics import OPEN_STREAMS, TURNS;"
    "TURNS.labels(status='completed').inc(); OPEN_STREAMS.inc(); print(os.getpid())"
)
SCRAPE_IN_A_PROCESS = (
    "import django; django.setup(); from prometheus_client import generate_latest;"
    "from core.metrics import process_metrics; print(generate_latest(process_metrics()).decode())"
)


def _run(code: str, directory: Path) -> str:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), "DJANGO_SETTINGS_MODULE": "config.settings"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_scrape_sums_every_processs_counts_and_a_dead_web_worker_leaves_the_live_gauge(tmp_path, monkeypatch):
    pids = [int(_run(COUNT_IN_A_PROCESS, tmp_path)) for _ in range(2)]
    assert pids[0] != pids[1]

    found = samples(_run(SCRAPE_IN_A_PROCESS, tmp_path))
    assert found[("parley_turns_total", frozenset({("status", "completed")}))] == 2
    assert found[("parley_open_streams", frozenset())] == 2

    # gunicorn's child_exit hook (config/gunicorn.conf.py) for the first process.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    runpy.run_path(str(ROOT / "config" / "gunicorn.conf.py"))["child_exit"](None, SimpleNamespace(pid=pids[0]))
    found = samples(_run(SCRAPE_IN_A_PROCESS, tmp_path))
    assert found[("parley_turns_total", frozenset({("status", "completed")}))] == 2  # counters stay counted
    assert found[("parley_open_streams", frozenset())] == 1


@pytest.mark.skipif(shutil.which("flock") is None, reason="bin/with-metrics needs flock (util-linux)")
def test_the_first_process_of_a_stack_empties_the_directory_and_a_later_one_does_not(tmp_path):
    directory = tmp_path / "metrics"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    wrapped = lambda *command: [str(ROOT / "bin" / "with-metrics"), *command]  # noqa: E731
    directory.mkdir()
    (directory / "counter_1.db").write_bytes(b"left by an earlier run")

    shown = subprocess.run(wrapped("sh", "-c", 'echo "$PROMETHEUS_MULTIPROC_DIR"'), env=env, capture_output=True,
                           text=True, check=True)  # fmt: skip
    assert shown.stdout.strip() == str(directory)
    assert not (directory / "counter_1.db").exists()

    running = subprocess.Popen(wrapped("sleep", "60"), env=env)
    try:
        deadline = time.monotonic() + 10
        # Running: it holds its shared lock (while it still holds the exclusive one, it
        # is emptying the directory, as the first process of a stack does).
        lock = str(directory / ".lock")
        while (subprocess.run(["flock", "-n", "-x", lock, "true"], check=False).returncode == 0
               or subprocess.run(["flock", "-n", "-s", lock, "true"], check=False).returncode != 0):  # fmt: skip
            assert time.monotonic() < deadline, "the wrapped process never took its lock"
            time.sleep(0.05)
        (directory / "counter_2.db").write_bytes(b"counted by the running process")
        subprocess.run(wrapped("true"), env=env, check=True)
        assert (directory / "counter_2.db").exists()  # another process of the stack runs: kept
    finally:
        running.terminate()
        running.wait(10)
    subprocess.run(wrapped("true"), env=env, check=True)
    assert not (directory / "counter_2.db").exists()


def test_the_procfile_runs_web_and_worker_in_multiprocess_mode():
    lines = dict(line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if ": " in line)
    assert lines["web"].startswith("bin/with-metrics gunicorn ") and "-c config/gunicorn.conf.py" in lines["web"]
    assert lines["worker"].startswith("bin/with-metrics celery ")
    assert django_settings.PROMETHEUS_MULTIPROC_DIR == ""  # the tests: one process, the default registry
