"""Turn pipeline benchmark: completed turns per second through the
HTTP API against the bare INSERT endpoint of the same stack, in one run.

    .venv/bin/python bench/turns.py [--clients 8] [--seconds 15] [--words 0]
        [--pg postgres://postgres@127.0.0.1:5432] [--redis redis://127.0.0.1:6379/2]

It creates (and drops again) its own PostgreSQL database `parley_bench_turns`, a
copy of a migrated template (bench/stack.py: kept between runs, rebuilt when the
migrations change), seeds one user per client (API key, credits, a session) and a
`local` model alias with zero latency, then starts the Procfile's own `web` and
`worker` lines with their default settings (BENCH_ENDPOINTS=1, throttles lifted) on
PostgreSQL + Redis. CLIENTS threads, each with a keep-alive HTTP connection, drive in
alternating rounds:

- bare:  POST /bench/insert (DRF, API-key auth, throttling, one INSERT);
- floor: POST /bench/roundtrip: the same INSERT, then a no-op Celery task that
  answers on Redis pub/sub while the request waits. What any request handed to a
  worker the way a turn is costs with no work at all: the floor under a turn;
- turns: POST /api/v1/sessions/{id}/turns with `Prefer: wait=30`: the request
  commits the turn, the worker runs it, the request returns 201 when the worker's
  completion is published on Redis (no Celery result is ever waited on). A turn
  counts only when it came back `completed`; a 202 is polled until it is.
- org:   the same turns through an organization's keys, one member per client,
  each with a member budget: the organization's wallet pays, and each turn also
  holds and settles its member's budget counter.

Prints the three rates, the ratios to bare and to the floor (goal: turns >= 50% of
the floor), CPU per operation of the web and worker process trees (goal: a turn at
most 2x the floor's), p50/p95 latencies and the latency a turn adds over the bare
request, then checks every wallet to the last
decimal against its ledger and its completed turns.
"""

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python bench/<name>.py`

from bench.stack import Stack, cpu_seconds, database_create, database_drop, database_url, percentile  # noqa: E402
from bench.stack import bench_env as stack_env  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BENCH_DB = "parley_bench_turns"
LOG = Path(tempfile.gettempdir()) / "parley-bench-turns.log"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients (default 8)")
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds per phase and round (default 15)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating bare/turn rounds (default 2)")
    parser.add_argument(
        "--words", type=int, default=0, help="extra words in each question (the echo streams 4 words a piece)"
    )
    parser.add_argument(
        "--history", type=int, default=200,
        help="finished messages in each session before the run (default 200: the history a context counts)",
    )  # fmt: skip
    parser.add_argument(
        "--counting", default="bytes", choices=("bytes", "o200k_base", "cl100k_base"),
        help="the alias's counting rule (chat.llm.counting; default bytes, the default of a price)",
    )  # fmt: skip
    parser.add_argument("--pg", default=os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432"))
    parser.add_argument("--redis", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/2"))
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database afterwards")
    parser.add_argument("--fresh", action="store_true", help="rebuild the migrated template database first")
    return parser.parse_args()


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
    granted = CreditTransaction.objects.filter(wallet=wallet, kind="grant").aggregate(s=Sum("amount"))["s"] or Decimal(0)
    charged = Turn.objects.filter(user_id=wallet.user_id, status="completed").aggregate(s=Sum("credits_charged"))["s"] or Decimal(0)
    debits = CreditTransaction.objects.filter(wallet=wallet, kind="debit").count()
    # The seeded history's turn (never run: no started_at) has no debit.
    completed = Turn.objects.filter(user_id=wallet.user_id, status="completed", started_at__isnull=False).count()
    report["wallets"] += 1
    if wallet.balance != ledger or wallet.balance != granted - charged or debits != completed or wallet.held != 0:
        report["wrong"].append([wallet.pk, str(wallet.balance), str(ledger), str(charged), debits, completed, str(wallet.held)])
import statistics
rows = Turn.objects.filter(status="completed", started_at__isnull=False).values_list("created_at", "started_at", "finished_at")
report["spans_ms"] = {
    "queued": round(statistics.median((s - c).total_seconds() * 1000 for c, s, f in rows), 1),
    "running": round(statistics.median((f - s).total_seconds() * 1000 for c, s, f in rows), 1),
}
print(json.dumps(report))
"""


def bench_env(args: argparse.Namespace) -> dict[str, str]:
    return stack_env(database=database_url(args.pg, BENCH_DB), redis=args.redis)


class Client:
    """One keep-alive connection, as a real API client would hold."""

    def __init__(self, port: int, key: str, session: int, words: int = 0) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.session = session
        self.count = 0
        self.extra = "".join(f" word{n}" for n in range(words))

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
            "POST", f"/api/v1/sessions/{self.session}/turns", {"content": f"Benchmark question number {self.count}{self.extra}"},
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


def main() -> None:
    args = parse_args()
    print(f"Creating {BENCH_DB} on {urlsplit(args.pg).hostname} ...", flush=True)
    stack = Stack(bench_env(args), LOG)
    try:
        database_create(args.pg, BENCH_DB, stack.env, fresh=args.fresh)
        stack.manage("shell", "-c", "from bench.views import ensure_table; ensure_table()")
        seeds = stack.seed_users(args.clients, credits="5000", counting=args.counting, history=args.history)
        org_seeds = stack.seed_users(
            args.clients, credits="5000", counting=args.counting, history=args.history, organization=True
        )
        stack.start(("web", "worker"))
        clients = [Client(stack.port, seed["key"], seed["session"], args.words) for seed in seeds]
        org_clients = [Client(stack.port, seed["key"], seed["session"], args.words) for seed in org_seeds]
        print(f"load average before the run: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
        print(f"{args.clients} clients, {args.rounds} rounds of {args.seconds:g} s per phase; "
              f"the Procfile's web and worker lines with their defaults")  # fmt: skip
        for client in clients:  # warm-up: connections, imports, caches
            for _ in range(3):
                assert client.bare(), "the bare endpoint failed during warm-up"
                assert client.roundtrip(), "the round-trip endpoint failed during warm-up"
                assert client.turn(), "a turn failed during warm-up"
        for client in org_clients:
            for _ in range(3):
                assert client.turn(), "an organization's turn failed during warm-up"

        phases = (("bare", Client.bare), ("floor", Client.roundtrip), ("turns", Client.turn), ("org", Client.turn))
        totals = {name: [0, 0, []] for name, _ in phases}
        cpu = {name: [0.0, 0.0] for name, _ in phases}  # seconds: gunicorn tree, celery tree
        for number in range(1, args.rounds + 1):
            for name, op in phases:
                before = [cpu_seconds(proc.pid) for proc in stack.procs.values()]
                ok, failed, latencies = run_phase(org_clients if name == "org" else clients, args.seconds, op)
                after = [cpu_seconds(proc.pid) for proc in stack.procs.values()]
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
        org_rate, org_lat = totals["org"][0] / elapsed, totals["org"][2]
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
        print(
            f"org turns   : {org_rate:8.1f} completed/s  p50 {percentile(org_lat, 0.5):6.1f} ms   p95 {percentile(org_lat, 0.95):6.1f} ms"
        )
        print(f"ratio       : {turn_rate / bare_rate:8.1%} of the bare rate")
        verdict = "met" if turn_rate >= floor_rate / 2 else "NOT met"
        print(f"floor ratio : {floor_rate / bare_rate:8.1%} of the bare rate; turns are {turn_rate / floor_rate:.1%} "
              f"of the floor (goal >= 50%: {verdict})")  # fmt: skip
        print(f"added       : p50 {percentile(turn_lat, .5) - percentile(bare_lat, .5):6.1f} ms   "
              f"p95 {percentile(turn_lat, .95) - percentile(bare_lat, .95):6.1f} ms over the bare request")  # fmt: skip
        print(f"failures    : bare {totals['bare'][1]}, floor {totals['floor'][1]}, turns {totals['turns'][1]}, "
              f"org {totals['org'][1]}")  # fmt: skip
        for name, _ in phases:
            done = max(totals[name][0], 1)
            print(f"cpu / op    : {name:<5} web {cpu[name][0] / done * 1000:5.1f} ms, "
                  f"worker {cpu[name][1] / done * 1000:5.1f} ms (gunicorn and celery process trees)")  # fmt: skip
        per_turn, per_floor = (sum(cpu[name]) / max(totals[name][0], 1) for name in ("turns", "floor"))
        verdict = "met" if per_turn <= 2 * per_floor else "NOT met"
        print(f"cpu ratio   : a turn costs {per_turn / per_floor:4.2f}x the floor's CPU (goal <= 2x: {verdict})")
        per_org = sum(cpu["org"]) / max(totals["org"][0], 1)
        print(f"org turn    : {per_org * 1000:5.1f} ms CPU, {per_org / per_turn:4.2f}x a personal turn's")
        print(f"median      : bare {statistics.median(bare_lat):.1f} ms, turn {statistics.median(turn_lat):.1f} ms")
        stack.stop()
        report = json.loads(stack.manage("shell", "-c", CHECK).splitlines()[-1])
        print(f"turn spans  : accepted -> started {report['spans_ms']['queued']} ms, "
              f"started -> completed {report['spans_ms']['running']} ms (medians, database timestamps)")  # fmt: skip
        print(f"check       : {report['wallets']} wallets, turns {report['turns']}, "
              f"{'all exact' if not report['wrong'] else 'WRONG: ' + json.dumps(report['wrong'])}")  # fmt: skip
        if report["wrong"] or totals["turns"][1] or totals["floor"][1] or totals["org"][1]:
            sys.exit(1)
    finally:
        stack.stop()
        if not args.keep:
            database_drop(args.pg, BENCH_DB)


if __name__ == "__main__":
    main()
