"""Turn pipeline benchmark: completed turns per second through the
HTTP API against the bare INSERT endpoint of the same stack, in one run.

    .venv/bin/python bench/turns.py [--clients 8] [--seconds 15]
        [--pg postgres://postgres@127.0.0.1:5432] [--redis redis://127.0.0.1:6379/2]

It creates (and drops again) its own PostgreSQL database `parley_bench_turns`, a
copy of a migrated template `parley_bench_turns_template` (kept between runs,
rebuilt when the migrations change), seeds one user per client (API key, credits, a session) and a `local`
model alias with zero latency, then starts gunicorn (gthread, BENCH_ENDPOINTS=1) and
one Celery worker subprocess on PostgreSQL + Redis. CLIENTS threads, each with a
keep-alive HTTP connection, drive in alternating rounds:

- bare:  POST /bench/insert (DRF, API-key auth, throttling, one INSERT);
- floor: POST /bench/roundtrip: the same INSERT, then a no-op Celery task that
  answers on Redis pub/sub while the request waits. What any request handed to a
  worker the way a turn is costs with no work at all: the floor under a turn;
- turns: POST /api/v1/sessions/{id}/turns with `Prefer: wait=30`: the request
  commits the turn, the worker runs it, the request returns 201 when the worker's
  completion is published on Redis (no Celery result is ever waited on). A turn
  counts only when it came back `completed`; a 202 is polled until it is.

Prints the three rates, the ratios to bare (goal: turns >= 50%), p50/p95 latencies and
the latency a turn adds over the bare request, then checks every wallet to the last
decimal against its ledger and its completed turns.
"""

import argparse
import hashlib
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
BENCH_DB = "parley_bench_turns"
TEMPLATE_DB = "parley_bench_turns_template"
PYTHON = sys.executable
LOG = Path(tempfile.gettempdir()) / "parley-bench-turns.log"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients (default 8)")
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds per phase and round (default 15)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating bare/turn rounds (default 2)")
    parser.add_argument("--web-workers", type=int, default=2, help="gunicorn worker processes (default 2)")
    parser.add_argument("--web-threads", type=int, default=8, help="threads per gunicorn worker (default 8)")
    parser.add_argument("--celery-concurrency", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument("--pool", default="prefork", help="celery pool: prefork or threads (default prefork)")
    parser.add_argument("--pg", default=os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432"))
    parser.add_argument("--redis", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/2"))
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database afterwards")
    parser.add_argument("--fresh", action="store_true", help="rebuild the migrated template database first")
    return parser.parse_args()


def database_url(server: str, name: str) -> str:
    parts = urlsplit(server)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", "", ""))


def _admin(server: str):  # noqa: ANN202
    # psycopg here: only the benchmark's setup talks to the server directly
    import psycopg

    return psycopg.connect(database_url(server, "postgres").replace("postgres://", "postgresql://", 1), autocommit=True)


def migration_fingerprint() -> str:
    """Changes whenever a migration (ours, or a pinned package's) could have changed."""
    digest = hashlib.sha256((ROOT / "requirements.txt").read_bytes())
    for path in sorted(ROOT.glob("*/migrations/*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()[:32]


def create_database(server: str, env: dict[str, str]) -> None:
    """The benchmark database as a copy of a migrated template: migrating from scratch
    takes minutes (dj-stripe brings many migrations), so the template is kept between
    runs and rebuilt only when the migrations change (`--fresh` rebuilds it anyway)."""
    fingerprint = migration_fingerprint()
    with _admin(server) as conn:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", [TEMPLATE_DB]
        ).fetchone()
        stale = row is None or row[0] != fingerprint or env.get("BENCH_FRESH") == "1"
        if stale:
            print(f"  migrating the template database {TEMPLATE_DB} (once per set of migrations) ...", flush=True)
            conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    if stale:
        template_env = {**env, "DATABASE_URL": database_url(server, TEMPLATE_DB)}
        subprocess.run(
            [PYTHON, "manage.py", "migrate", "--no-input", "-v", "0"], cwd=ROOT, env=template_env, check=True
        )
        with _admin(server) as conn:
            conn.execute(f"COMMENT ON DATABASE {TEMPLATE_DB} IS '{fingerprint}'")
    with _admin(server) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {BENCH_DB} TEMPLATE {TEMPLATE_DB}")


def drop_database(server: str) -> None:
    with _admin(server) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SEED = """
import json
from decimal import Decimal
from accounts.services import api_key_create, user_create
from billing.models import ModelPrice
from billing.services import wallet_grant
from chat.models import ChatSession
from bench.views import ensure_table
ensure_table()
ModelPrice.objects.create(alias="bench", provider="local", provider_model="echo",
    input_credits_per_mtok=Decimal("3.33333333"), output_credits_per_mtok=Decimal("7.77777777"))
out = []
for n in range({clients}):
    user = user_create(email=f"bench{{n}}@example.com")
    wallet_grant(user=user, amount=Decimal("5000"), reason="benchmark credits")
    _, key = api_key_create(user=user, name="bench")
    session = ChatSession.objects.create(user=user, model_alias="bench", title="bench")
    out.append({{"key": key, "session": session.pk}})
print(json.dumps(out))
"""

CHECK = """
import json
from decimal import Decimal
from django.db.models import Sum
from billing.models import CreditTransaction, Wallet
from chat.models import Turn
report = {"wallets": 0, "wrong": [], "turns": {}}
for status in ("queued", "running", "completed", "failed"):
    report["turns"][status] = Turn.objects.filter(status=status).count()
for wallet in Wallet.objects.all():
    ledger = CreditTransaction.objects.filter(wallet=wallet).aggregate(s=Sum("amount"))["s"] or Decimal(0)
    charged = Turn.objects.filter(user_id=wallet.user_id, status="completed").aggregate(s=Sum("credits_charged"))["s"] or Decimal(0)
    debits = CreditTransaction.objects.filter(wallet=wallet, kind="debit").count()
    completed = Turn.objects.filter(user_id=wallet.user_id, status="completed").count()
    report["wallets"] += 1
    if wallet.balance != ledger or wallet.balance != Decimal(5000) - charged or debits != completed or wallet.held != 0:
        report["wrong"].append([wallet.pk, str(wallet.balance), str(ledger), str(charged), debits, completed, str(wallet.held)])
import statistics
rows = Turn.objects.filter(status="completed").values_list("created_at", "started_at", "finished_at")
report["spans_ms"] = {
    "queued": round(statistics.median((s - c).total_seconds() * 1000 for c, s, f in rows), 1),
    "running": round(statistics.median((f - s).total_seconds() * 1000 for c, s, f in rows), 1),
}
print(json.dumps(report))
"""


class Stack:
    """gunicorn + one celery worker on the benchmark database, torn down on exit."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.port = free_port()
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url(args.pg, BENCH_DB),
            "REDIS_URL": args.redis,
            "SECRET_KEY": "bench-only-not-secret",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "DEBUG": "false",
            "BENCH_ENDPOINTS": "1",
            "CELERY_TASK_ALWAYS_EAGER": "false",
            "LOCAL_LLM_LATENCY_MS": "0",
            "THROTTLE_USER_RATE": "10000000/min",
            "THROTTLE_ANON_RATE": "10000000/min",
            "CONN_MAX_AGE": "60",
            "LOG_LEVEL": "WARNING",
            "DJANGO_SETTINGS_MODULE": "config.settings",
        }
        self.procs: list[subprocess.Popen] = []

    def manage(self, *command: str) -> None:
        subprocess.run([PYTHON, "manage.py", *command], cwd=ROOT, env=self.env, check=True)

    def shell(self, code: str) -> str:
        done = subprocess.run(
            [PYTHON, "manage.py", "shell", "-c", code],
            cwd=ROOT,
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        )
        return done.stdout.strip().splitlines()[-1]

    def start(self) -> None:
        log = open(LOG, "w")  # noqa: SIM115  kept open for the processes
        self.procs.append(
            subprocess.Popen(
                [PYTHON, "-m", "gunicorn", "config.wsgi", "--bind", f"127.0.0.1:{self.port}",
                 "--workers", str(self.args.web_workers), "--worker-class", "gthread",
                 "--threads", str(self.args.web_threads), "--timeout", "120", "--keep-alive", "75",
                 "--log-level", "warning"],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )
        )  # fmt: skip
        self.procs.append(
            subprocess.Popen(
                [PYTHON, "-m", "celery", "-A", "config", "worker", f"--pool={self.args.pool}",
                 f"--concurrency={self.args.celery_concurrency}", "--without-gossip", "--without-mingle",
                 "--without-heartbeat", "--loglevel=WARNING", "--prefetch-multiplier=4"],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"a benchmark process exited early; see {LOG}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/api/v1/health")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError("gunicorn did not answer /api/v1/health within 60 s")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


class Client:
    """One keep-alive connection, as a real API client would hold."""

    def __init__(self, port: int, key: str, session: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.session = session
        self.count = 0

    def request(self, method: str, path: str, body: dict | None = None, **headers: str) -> tuple[int, dict]:
        payload = json.dumps(body) if body is not None else None
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=payload, headers={**self.headers, **headers})
                response = self.conn.getresponse()
                data = response.read()
                return response.status, json.loads(data) if data else {}
            except (http.client.RemoteDisconnected, http.client.CannotSendRequest, ConnectionError):
                # The server closed an idle keep-alive connection: reconnect once.
                self.conn.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def bare(self) -> bool:
        status, _ = self.request("POST", "/bench/insert", {"n": self.count})
        self.count += 1
        return status == 201

    def roundtrip(self) -> bool:
        status, body = self.request("POST", "/bench/roundtrip", {"n": self.count})
        self.count += 1
        return status == 201 and body.get("ok") is True

    def turn(self) -> bool:
        self.count += 1
        status, body = self.request(
            "POST", f"/api/v1/sessions/{self.session}/turns", {"content": f"Benchmark question number {self.count}"},
            Prefer="wait=30",
        )  # fmt: skip
        while status == 202 or (status == 200 and body.get("status") in ("queued", "running")):
            time.sleep(0.01)
            status, body = self.request("GET", f"/api/v1/turns/{body['id']}")
        return status in (200, 201) and body.get("status") == "completed"


def run_phase(clients: list[Client], seconds: float, op: Callable[[Client], bool]) -> tuple[int, int, list[float]]:
    """(successes, failures, latencies in ms) of `op` by every client for `seconds`."""
    barrier = threading.Barrier(len(clients) + 1)
    results: list[tuple[int, int, list[float]]] = []
    lock = threading.Lock()
    stop_at = [0.0]

    def work(client: Client) -> None:
        ok = failed = 0
        latencies: list[float] = []
        barrier.wait()
        while time.perf_counter() < stop_at[0]:
            started = time.perf_counter()
            success = op(client)
            latencies.append((time.perf_counter() - started) * 1000)
            ok, failed = ok + success, failed + (not success)
        with lock:
            results.append((ok, failed, latencies))

    threads = [threading.Thread(target=work, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    stop_at[0] = time.perf_counter() + seconds
    barrier.wait()
    for thread in threads:
        thread.join()
    return (
        sum(r[0] for r in results),
        sum(r[1] for r in results),
        [latency for r in results for latency in r[2]],
    )


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (Linux /proc)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        todo.extend(int(child) for child in children)
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process tree so far (0 where /proc is not there)."""
    total = 0
    for member in _tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def main() -> None:
    args = parse_args()
    print(f"Creating {BENCH_DB} on {urlsplit(args.pg).hostname} ...", flush=True)
    stack = Stack(args)
    try:
        create_database(args.pg, {**stack.env, "BENCH_FRESH": "1" if args.fresh else "0"})
        seeds = json.loads(stack.shell(SEED.format(clients=args.clients)))
        stack.start()
        clients = [Client(stack.port, seed["key"], seed["session"]) for seed in seeds]
        print(f"load average before the run: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
        print(f"{args.clients} clients, {args.rounds} rounds of {args.seconds:g} s per phase; "
              f"gunicorn {args.web_workers}x{args.web_threads} threads, celery {args.pool} x{args.celery_concurrency}")  # fmt: skip
        for client in clients:  # warm-up: connections, imports, caches
            for _ in range(3):
                assert client.bare(), "the bare endpoint failed during warm-up"
                assert client.roundtrip(), "the round-trip endpoint failed during warm-up"
                assert client.turn(), "a turn failed during warm-up"

        phases = (("bare", Client.bare), ("floor", Client.roundtrip), ("turns", Client.turn))
        totals = {name: [0, 0, []] for name, _ in phases}
        cpu = {name: [0.0, 0.0] for name, _ in phases}  # seconds: gunicorn tree, celery tree
        for number in range(1, args.rounds + 1):
            for name, op in phases:
                before = [cpu_seconds(proc.pid) for proc in stack.procs]
                ok, failed, latencies = run_phase(clients, args.seconds, op)
                after = [cpu_seconds(proc.pid) for proc in stack.procs]
                totals[name][0] += ok
                totals[name][1] += failed
                totals[name][2] += latencies
                for index, (start, end) in enumerate(zip(before, after, strict=True)):
                    cpu[name][index] += end - start
                print(
                    f"  round {number} {name:<5} {ok:>6} ok {failed:>3} failed  {ok / args.seconds:8.1f} /s", flush=True
                )

        elapsed = args.seconds * args.rounds
        bare_rate, floor_rate, turn_rate = (totals[name][0] / elapsed for name in ("bare", "floor", "turns"))
        bare_lat, floor_lat, turn_lat = (totals[name][2] for name in ("bare", "floor", "turns"))
        print()
        print(
            f"bare INSERT : {bare_rate:8.1f} requests/s   p50 {percentile(bare_lat, 0.5):6.1f} ms   p95 {percentile(bare_lat, 0.95):6.1f} ms"
        )
        print(
            f"floor       : {floor_rate:8.1f} round trips/s p50 {percentile(floor_lat, 0.5):6.1f} ms   p95 {percentile(floor_lat, 0.95):6.1f} ms"
        )
        print(
            f"turns       : {turn_rate:8.1f} completed/s  p50 {percentile(turn_lat, 0.5):6.1f} ms   p95 {percentile(turn_lat, 0.95):6.1f} ms"
        )
        verdict = "met" if turn_rate >= bare_rate / 2 else "NOT met"
        print(f"ratio       : {turn_rate / bare_rate:8.1%} of the bare rate (goal >= 50%: {verdict})")
        print(
            f"floor ratio : {floor_rate / bare_rate:8.1%} of the bare rate; turns are {turn_rate / floor_rate:.1%} of the floor"
        )
        print(f"added       : p50 {percentile(turn_lat, .5) - percentile(bare_lat, .5):6.1f} ms   "
              f"p95 {percentile(turn_lat, .95) - percentile(bare_lat, .95):6.1f} ms over the bare request")  # fmt: skip
        print(f"failures    : bare {totals['bare'][1]}, floor {totals['floor'][1]}, turns {totals['turns'][1]}")
        for name, _ in phases:
            done = max(totals[name][0], 1)
            print(f"cpu / op    : {name:<5} web {cpu[name][0] / done * 1000:5.1f} ms, "
                  f"worker {cpu[name][1] / done * 1000:5.1f} ms (gunicorn and celery process trees)")  # fmt: skip
        print(f"median      : bare {statistics.median(bare_lat):.1f} ms, turn {statistics.median(turn_lat):.1f} ms")
        stack.stop()
        report = json.loads(stack.shell(CHECK))
        print(f"turn spans  : accepted -> started {report['spans_ms']['queued']} ms, "
              f"started -> completed {report['spans_ms']['running']} ms (medians, database timestamps)")  # fmt: skip
        print(f"check       : {report['wallets']} wallets, turns {report['turns']}, "
              f"{'all exact' if not report['wrong'] else 'WRONG: ' + json.dumps(report['wrong'])}")  # fmt: skip
        if report["wrong"] or totals["turns"][1] or totals["floor"][1]:
            sys.exit(1)
    finally:
        stack.stop()
        if not args.keep:
            drop_database(args.pg)


if __name__ == "__main__":
    main()
