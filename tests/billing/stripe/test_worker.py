"""Webhooks end to end on PostgreSQL + Redis: real web processes (gunicorn) take the
deliveries, a real Celery worker processes them against the fake Stripe."""

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest
import requests
from djstripe.models import Event, WebhookEventTrigger

from billing.models import CreditTransaction, TopUp, TopUpEvent
from billing.stripe.tasks import apply_pending_stripe_events
from tests.billing.stripe.conftest import WEBHOOK_SECRET, balance_of, ledger_of
from tests.conftest import WorkerProcess, _worker_env
from tests.fakes.stripe_server import FakeStripe, sign_event

ROOT = Path(__file__).resolve().parents[3]
TOP_UP = "/api/v1/users/me/wallet/top-up"

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.worker]


def wait_for(condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def all_processed(expected: int) -> Callable[[], bool]:
    return lambda: WebhookEventTrigger.objects.filter(processed=True).count() >= expected


def stripe_env(server: FakeStripe) -> dict[str, str]:
    return {"STRIPE_SECRET_KEY": server.api_key, "STRIPE_API_BASE": server.url}


@pytest.fixture
def stripe_worker(celery_worker: WorkerProcess, stripe_on: FakeStripe) -> WorkerProcess:
    """The shared worker, restarted once with Stripe pointed at the fake server."""
    wanted = stripe_env(stripe_on)
    if any(celery_worker.env.get(key) != value for key, value in wanted.items()):
        celery_worker.stop()
        celery_worker.env.update(wanted)
        celery_worker.start()
    return celery_worker


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def web_processes(stripe_worker: WorkerProcess, stripe_on: FakeStripe) -> Iterator[list[str]]:
    """Two independent gunicorn servers on the test database: two web processes. Their
    Stripe host is a closed port: any Stripe API call inside a webhook request would
    fail it, so every 200 they give also shows the request made none."""
    env = {**_worker_env(), **stripe_env(stripe_on), "STRIPE_API_BASE": f"http://127.0.0.1:{_free_port()}"}
    procs, urls = [], []
    log = open(ROOT / ".pytest_cache" / "stripe-web.log", "ab")  # noqa: SIM115
    try:
        for _ in range(2):
            port = _free_port()
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "gunicorn", "config.wsgi", "--bind", f"127.0.0.1:{port}",
                     "--workers", "1", "--threads", "4", "--log-level", "warning"],
                    cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                )
            )  # fmt: skip
            urls.append(f"http://127.0.0.1:{port}")
        for proc, url in zip(procs, urls, strict=True):
            port = int(url.rsplit(":", 1)[1])

            def accepting(port: int = port, proc: subprocess.Popen = proc) -> bool:
                assert proc.poll() is None, "gunicorn exited; see .pytest_cache/stripe-web.log"
                with socket.socket() as sock:
                    return sock.connect_ex(("127.0.0.1", port)) == 0

            wait_for(accepting, 30, "gunicorn to listen")
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
        log.close()


def post_event(base_url: str, path: str, event: dict) -> int:
    body, header = sign_event(event, WEBHOOK_SECRET)
    response = requests.post(
        base_url + path,
        data=body.encode(),
        headers={"Stripe-Signature": header, "Content-Type": "application/json"},
        timeout=30,
    )
    return response.status_code


def test_the_worker_retries_failed_processing_with_backoff(stripe_worker, stripe_on, webhooks, owner, buyer_client):
    topup = TopUp.objects.get(pk=buyer_client.post(TOP_UP, {"amount_usd": "10.00"}, format="json").json()["id"])
    event = stripe_on.pay(topup.payment_intent_id)
    stripe_on.fail_next(2, status=500, path_prefix="/v1/payment_intents/")  # Stripe fails twice

    assert webhooks.post(event).status_code == 200

    wait_for(all_processed(1), 60, "the trigger to be processed")
    assert len(stripe_on.calls("GET", f"/v1/payment_intents/{topup.payment_intent_id}")) == 3
    trigger = WebhookEventTrigger.objects.get()
    assert (trigger.processed, trigger.exception) == (True, "")
    assert balance_of(owner) == Decimal("1000.00000000")


def test_the_same_webhooks_delivered_concurrently_to_two_web_processes_apply_once(
    web_processes, stripe_on, webhooks, owner, buyer_client
):
    amounts = ["10.00", "2.50", "7.77", "1.01", "99.99", "3.00"]
    topups = [
        TopUp.objects.get(pk=buyer_client.post(TOP_UP, {"amount_usd": a}, format="json").json()["id"]) for a in amounts
    ]
    paid = [stripe_on.pay(t.payment_intent_id) for t in topups]
    refunded = stripe_on.refund(topups[0].payment_intent_id, amount=400)
    # An inquiry resolved by refunding (taken back once), and a chargeback that names
    # only its charge (pending until its payment's event is applied).
    inquiry = stripe_on.dispute(topups[1].payment_intent_id, status="warning_needs_response")
    inquiry_refunded = stripe_on.refund(topups[1].payment_intent_id)
    chargeback = stripe_on.dispute(topups[2].payment_intent_id, payment_intent=False)
    events = [chargeback, inquiry_refunded, *paid, refunded, inquiry]

    # Each event goes to both web processes at the same instant, twice over.
    deliveries = [(url, event) for event in events for url in web_processes for _ in range(2)]
    barrier = threading.Barrier(4)

    def deliver(item: tuple[str, dict]) -> int:
        url, event = item
        with contextlib.suppress(threading.BrokenBarrierError):  # the last, odd group
            barrier.wait(timeout=10)
        return post_event(url, webhooks.path, event)

    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(pool.map(deliver, deliveries))

    assert statuses == [200] * len(deliveries)
    wait_for(all_processed(len(deliveries)), 90, "every delivery to be processed")

    # What beat's sweeper does every five minutes: an event kept pending while its
    # top-up was learning the charge id in another worker is applied now.
    apply_pending_stripe_events()

    assert WebhookEventTrigger.objects.filter(processed=False).count() == 0
    assert Event.objects.count() == len(events)
    assert not TopUpEvent.objects.filter(state="pending").exists()
    assert CreditTransaction.objects.filter(kind="topup").count() == len(topups)
    assert CreditTransaction.objects.filter(kind="reversal").count() == 3
    assert not CreditTransaction.objects.filter(kind="adjustment").exists()
    expected = sum(Decimal(a) * 100 for a in amounts) - Decimal("400") - Decimal("250") - Decimal("777")
    assert balance_of(owner) == expected
    assert sum(amount for _, amount, _ in ledger_of(owner)) == expected
    assert sorted(TopUp.objects.values_list("status", flat=True)) == sorted(
        ["partially_refunded", "disputed", "disputed", "succeeded", "succeeded", "succeeded"]  # the inquiry is open
    )
