"""Webhook intake benchmark: signed `payment_intent.succeeded` events acknowledged per
second by the Stripe webhook endpoint (10% of deliveries are duplicates), against
the bare INSERT endpoint `POST /bench/insert` of the same stack, in one run on the
same machine. Afterwards every event must have been granted
exactly once.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/parley \\
    REDIS_URL=redis://127.0.0.1:6379/7 .venv/bin/python bench/webhooks.py

It creates (and drops again) its own database `parley_bench_webhooks` on that
server, with tables made from the models as the test suite does (`--migrate` applies
the real migrations instead, which takes a few minutes because of dj-stripe), and
starts, as separate processes:
- the fake Stripe API (tests/fakes/stripe_server.py);
- the web server: gunicorn with BENCH_ENDPOINTS=1 (the Procfile's command, sized
  by --web-workers/--web-threads), the user throttle lifted so the baseline is not
  rate limited;
- a Celery worker on REDIS_URL (its queue is purged first).

Setup makes --events top-ups through billing.stripe.services.topup_create (customer and
PaymentIntent at the fake Stripe) for --users users, and has the fake pay each. The
events are split in two halves, each delivered with 10% extra deliveries of events
already sent, every delivery signed at send time (HMAC-SHA256 of "t.body"). Each
half is compared with as many bare INSERTs (API key auth, one INSERT), the two kinds
alternating in --rounds slices so both meet the same background load on a shared
machine: first with the worker up but not consuming (intake alone), then with the
worker processing as events arrive. Clients are --clients threads with keep-alive
connections. Then it waits for the worker to process every stored trigger and
checks: each top-up granted exactly once (one ledger row with the PaymentIntent as
reference), every wallet equal to its top-ups' credits and to its ledger sum, one
dj-stripe Event per event. Goal: webhook rate >= 50% of the bare rate.
"""

import argparse
import http.client
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as `python bench/<name>.py`

from bench.pg import recreate_database, with_database  # noqa: E402

BENCH_DB = "parley_bench_webhooks"
WEBHOOK_SECRET = "whsec_bench_0123456789abcdef0123456789"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1500, help="distinct paid top-ups (default 1500)")
    parser.add_argument("--duplicates", type=float, default=0.10, help="share of deliveries that repeat an event")
    parser.add_argument("--users", type=int, default=50, help="users the top-ups are spread over (default 50)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads (default 8)")
    parser.add_argument("--web-workers", type=int, default=2, help="gunicorn worker processes (default 2)")
    parser.add_argument("--web-threads", type=int, default=4, help="threads per gunicorn worker (default 4)")
    parser.add_argument("--worker-concurrency", type=int, default=4, help="Celery worker threads (default 4)")
    parser.add_argument("--rounds", type=int, default=6, help="alternating slices per comparison (default 6)")
    parser.add_argument("--port", type=int, default=8765, help="web server port (default 8765)")
    parser.add_argument("--migrate", action="store_true", help="apply the real migrations (slow)")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database afterwards")
    return parser.parse_args()


def need(name: str, prefixes: tuple[str, ...]) -> str:
    value = os.environ.get(name, "")
    if not value.startswith(prefixes):
        sys.exit(f"Set {name} ({prefixes[0]}...): the benchmark runs on PostgreSQL + Redis + a worker.")
    return value


def start_fake_stripe(log) -> tuple[subprocess.Popen, dict]:  # noqa: ANN001
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.stripe_server"], cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True
    )
    info = json.loads(proc.stdout.readline())
    return proc, info


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    sys.exit(f"timed out after {timeout:.0f}s waiting for {what}")


def listening(port: int) -> bool:
    # Imported once Django is set up (django.setup() above): models need the app registry.
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def run_phase(clients: int, items: list, send: Callable[[http.client.HTTPConnection, object], int], port: int) -> float:
    """Sends `items` over `clients` keep-alive connections (opened before the clock
    starts); returns the seconds it took. Any non-2xx answer aborts the benchmark."""
    chunks = [items[i::clients] for i in range(clients)]
    connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=60) for _ in range(clients)]
    failures: list[str] = []
    start = threading.Barrier(clients + 1)

    def client(conn: http.client.HTTPConnection, chunk: list) -> None:
        conn.connect()
        start.wait()
        for item in chunk:
            status = send(conn, item)
            if not 200 <= status < 300:
                failures.append(str(status))
                return

    threads = [threading.Thread(target=client, args=(c, ch)) for c, ch in zip(connections, chunks, strict=True)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    for conn in connections:
        conn.close()
    if failures:
        sys.exit(f"requests failed with {sorted(set(failures))}")
    return elapsed


def interleaved(
    rounds: int, clients: int, port: int, runs: list[tuple[list, Callable[[http.client.HTTPConnection, object], int]]]
) -> list[float]:
    """Runs each (items, send) in `rounds` alternating slices, so both endpoints meet
    the same background load on a shared machine; returns each one's requests/s."""
    seconds = [0.0] * len(runs)
    for r in range(rounds):
        for i, (items, send) in enumerate(runs):
            seconds[i] += run_phase(clients, items[r::rounds], send, port)
    return [len(items) / spent for (items, _), spent in zip(runs, seconds, strict=True)]


def request(conn: http.client.HTTPConnection, path: str, body: bytes, headers: dict[str, str]) -> int:
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **headers})
    response = conn.getresponse()
    response.read()
    return response.status


def main() -> None:
    args = parse_args()
    pg_url = need("DATABASE_URL", ("postgres://", "postgresql://"))
    redis_url = need("REDIS_URL", ("redis://",))
    bench_url = with_database(pg_url, BENCH_DB)
    log_path = Path(tempfile.gettempdir()) / "parley-bench-webhooks.log"
    print(f"child process output: {log_path}")
    log = open(log_path, "w")  # noqa: SIM115  kept open for the child processes
    procs: list[subprocess.Popen] = []
    recreate_database(pg_url, BENCH_DB)
    try:
        fake, stripe_info = start_fake_stripe(log)
        procs.append(fake)
        env = {
            **os.environ,
            "DATABASE_URL": bench_url,
            "REDIS_URL": redis_url,
            "CELERY_TASK_ALWAYS_EAGER": "false",
            "SECRET_KEY": os.environ.get("SECRET_KEY", "bench-only-secret"),
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "DEBUG": "false",
            "BENCH_ENDPOINTS": "1",
            "THROTTLE_USER_RATE": "100000000/min",
            "STRIPE_SECRET_KEY": stripe_info["api_key"],
            "STRIPE_API_BASE": stripe_info["url"],
            "LOG_LEVEL": "WARNING",
            "DJANGO_SETTINGS_MODULE": "config.settings",
        }
        os.environ.update(env)
        sys.path.insert(0, str(ROOT))
        # Imported once Django is set up (django.setup() above): models need the app registry.
        import django

        django.setup()
        # Imported once Django is set up (django.setup() above): models need the app registry.
        from django.apps import apps
        from django.conf import settings
        from django.core.management import call_command

        began = time.perf_counter()
        if not args.migrate:
            settings.MIGRATION_MODULES = {app.label: None for app in apps.get_app_configs()}
        call_command("migrate", run_syncdb=True, verbosity=0)
        print(f"schema ({'migrations' if args.migrate else 'from the models'}): {time.perf_counter() - began:.1f}s")

        # Imported once Django is set up (django.setup() above): models need the app registry.
        from djstripe.models import Event, WebhookEventTrigger

        # Imported once Django is set up (django.setup() above): models need the app registry.
        from accounts.services import api_key_create, user_create
        from bench.views import ensure_table
        from billing.models import CreditTransaction, TopUp, Wallet
        from billing.stripe.services import topup_create, webhook_endpoint_register_local, webhook_path
        from config.celery import app as celery_app
        from tests.fakes.stripe_server import sign_payload

        ensure_table()
        endpoint = webhook_endpoint_register_local(secret=WEBHOOK_SECRET, endpoint_id="we_bench")
        path = webhook_path(endpoint)
        bench_user = user_create(email="bench@example.com")
        _, raw_key = api_key_create(user=bench_user, name="bench")

        began = time.perf_counter()
        users = [user_create(email=f"payer{n}@example.com") for n in range(args.users)]
        rng = random.Random(7)
        events: list[bytes] = []
        pay = http.client.HTTPConnection(*urlsplit(stripe_info["url"]).netloc.split(":"))
        for n in range(args.events):
            amount = Decimal(rng.randint(100, 50_000)) / 100
            topup, _ = topup_create(user=users[n % len(users)], amount_usd=amount)
            pay.request("POST", f"/_fake/pay/{topup.payment_intent_id}")
            events.append(pay.getresponse().read())
        pay.close()
        print(f"setup: {args.events} top-ups made and paid at the fake Stripe in {time.perf_counter() - began:.1f}s")

        def with_duplicates(batch: list[bytes]) -> list[bytes]:
            result = list(batch)
            for _ in range(round(len(batch) * args.duplicates / (1 - args.duplicates))):
                result.insert(rng.randrange(len(result) + 1), rng.choice(batch))
            return result

        half = len(events) // 2
        batches = [with_duplicates(events[:half]), with_duplicates(events[half:])]
        total_deliveries = sum(len(batch) for batch in batches)

        with celery_app.connection_for_write() as conn:  # nothing left over from other runs
            conn.default_channel.queue_purge(celery_app.conf.task_default_queue)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "config.wsgi", "--bind", f"127.0.0.1:{args.port}",
                 "--workers", str(args.web_workers), "--threads", str(args.web_threads), "--log-level", "warning"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        )  # fmt: skip
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool=threads",
                 f"--concurrency={args.worker_concurrency}", "--without-gossip", "--without-mingle",
                 "--without-heartbeat", "--loglevel=WARNING"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        )  # fmt: skip
        wait_until(lambda: listening(args.port), 60, "gunicorn")
        wait_until(lambda: bool(celery_app.control.ping(timeout=0.5)), 60, "the Celery worker")

        auth = {"Authorization": f"Bearer {raw_key}"}
        bare_items = [json.dumps({"n": n, "pad": "x" * 200}).encode() for n in range(len(batches[0]))]

        def bare(conn: http.client.HTTPConnection, body: bytes) -> int:
            return request(conn, "/bench/insert", body, auth)

        def deliver(conn: http.client.HTTPConnection, body: bytes) -> int:
            header = sign_payload(body.decode(), WEBHOOK_SECRET)
            return request(conn, path, body, {"Stripe-Signature": header})

        def refused(conn: http.client.HTTPConnection, body: bytes) -> int:
            status = request(conn, path, body, {"Stripe-Signature": "t=1,v1=00"})
            return 200 if status == 400 else status

        def drained(expected: int) -> Callable[[], bool]:
            return lambda: (
                WebhookEventTrigger.objects.count() == expected
                and not WebhookEventTrigger.objects.filter(processed=False).exists()
            )

        queue = celery_app.conf.task_default_queue
        # Warm every web worker on both paths (imports, connections) before timing.
        run_phase(args.clients, bare_items[: 8 * args.clients], bare, args.port)
        run_phase(args.clients, events[: 8 * args.clients], refused, args.port)

        # Each comparison alternates slices of bare INSERTs and webhook deliveries.
        # 1: the worker is up but not consuming: intake has the machine to itself.
        celery_app.control.cancel_consumer(queue, reply=True)
        bare_1, alone = interleaved(args.rounds, args.clients, args.port, [(bare_items, bare), (batches[0], deliver)])
        celery_app.control.add_consumer(queue, reply=True)
        began = time.perf_counter()
        wait_until(drained(len(batches[0])), 1800, "the worker to process every trigger")
        elapsed = time.perf_counter() - began
        worker_rate = len(batches[0]) / elapsed
        # 2: the worker processes the events as they arrive, sharing the CPUs.
        began = time.perf_counter()
        bare_2, busy = interleaved(args.rounds, args.clients, args.port, [(bare_items, bare), (batches[1], deliver)])
        wait_until(drained(total_deliveries), 1800, "the worker to process every trigger")
        end_to_end = len(batches[1]) / (time.perf_counter() - began)

        duplicates = total_deliveries - len(events)
        print(
            f"deliveries: {total_deliveries} signed payment_intent.succeeded for {len(events)} events "
            f"({duplicates} duplicates, {duplicates / total_deliveries:.0%}), {args.clients} clients, "
            f"gunicorn {args.web_workers}x{args.web_threads}, worker {args.worker_concurrency} threads"
        )
        print(f"{'':22} {'bare INSERT req/s':>18} {'webhooks acked/s':>17} {'ratio':>6}   (goal >= 50%)")
        print(f"{'worker paused':22} {bare_1:18.1f} {alone:17.1f} {alone / bare_1:6.0%}")
        print(f"{'worker processing':22} {bare_2:18.1f} {busy:17.1f} {busy / bare_2:6.0%}")
        print(
            f"worker: {worker_rate:.1f} events/s from a stored backlog; {end_to_end:.1f}/s end to end while receiving"
        )

        # Exactly once: one grant per PaymentIntent, balances equal to what was bought.
        topups = list(TopUp.objects.all())
        grants = CreditTransaction.objects.filter(kind="topup")
        problems = []
        if grants.count() != len(topups) or grants.values("reference").distinct().count() != len(topups):
            problems.append(f"{grants.count()} grants for {len(topups)} top-ups")
        if {g.reference for g in grants} != {t.payment_intent_id for t in topups}:
            problems.append("grant references differ from the PaymentIntents")
        if Event.objects.count() != len(events):
            problems.append(f"{Event.objects.count()} Event rows for {len(events)} events")
        for user in users:
            bought = sum((t.credits for t in topups if t.user_id == user.pk), Decimal(0))
            wallet = Wallet.objects.get(user=user)
            ledger = sum(CreditTransaction.objects.filter(wallet=wallet).values_list("amount", flat=True), Decimal(0))
            if not wallet.balance == ledger == bought:
                problems.append(f"{user.email}: balance {wallet.balance}, ledger {ledger}, bought {bought}")
        if any(t.status != "succeeded" for t in topups):
            problems.append("some top-ups are not 'succeeded'")
        if problems:
            sys.exit("EXACTLY-ONCE CHECK FAILED:\n  " + "\n  ".join(problems))
        print(
            f"check: {len(topups)} top-ups granted exactly once; {len(users)} wallets equal their ledger and purchases"
        )
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if "django.db" in sys.modules:
            # Imported once Django is set up (django.setup() above): models need the app registry.
            from django.db import connections

            connections.close_all()
        if not args.keep:
            recreate_database(pg_url, BENCH_DB, drop_only=True)
        log.close()


if __name__ == "__main__":
    main()
