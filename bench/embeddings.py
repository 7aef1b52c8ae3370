"""POST /v1/embeddings benchmark: the web process's CPU per request on the local
model, beside the bare INSERT endpoint of the same stack.

    .venv/bin/python bench/embeddings.py [--clients 4] [--seconds 10] [--inputs 8] [--words 60]
        [--pg postgres://postgres@127.0.0.1:5432] [--redis redis://127.0.0.1:6379/2]

It creates (and drops again) its own PostgreSQL database `parley_bench_embeddings`,
a copy of a migrated template (bench/stack.py), seeds one user per client (API key,
credits) and an embedding alias on the `local` model with zero latency, then starts
the Procfile's own `web` line with its default settings (BENCH_ENDPOINTS=1,
throttles lifted) on PostgreSQL + Redis. CLIENTS threads, each with a keep-alive
HTTP connection, drive in alternating rounds:

- bare:       POST /bench/insert (DRF, API-key auth, throttling, one INSERT);
- embeddings: POST /v1/embeddings with INPUTS texts of WORDS words each (a batch of
  document chunks, as Open WebUI sends them), encoding_format float: the turn and
  its hold in one transaction, the call on the event loop, the completion (one
  debit, the usage rollup), the vectors as JSON.

Prints the rates, p50/p95 latencies and the CPU per request of the web process tree
(gunicorn's workers), then checks every wallet against its ledger and its turns:
one debit per completed request, nothing held.
"""

import argparse
import http.client
import json
import os
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

BENCH_DB = "parley_bench_embeddings"
LOG = Path(tempfile.gettempdir()) / "parley-bench-embeddings.log"
CREDITS = 5000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients (default 4)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per phase and round (default 10)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating bare/embeddings rounds (default 2)")
    parser.add_argument("--inputs", type=int, default=8, help="texts per request (default 8)")
    parser.add_argument("--words", type=int, default=60, help="words per text (default 60)")
    parser.add_argument("--pg", default=os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432"))
    parser.add_argument("--redis", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/2"))
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database afterwards")
    parser.add_argument("--fresh", action="store_true", help="rebuild the migrated template database first")
    return parser.parse_args()


SEED = """
import json
from decimal import Decimal
from accounts.services import api_key_create, user_create
from billing.models import ModelPrice
from billing.services import wallet_grant
ModelPrice.objects.create(alias="bench-embed", kind="embedding", provider="local", provider_model="local-embed",
    input_credits_per_mtok=Decimal("0.1"), output_credits_per_mtok=Decimal("0"), context_tokens=8192,
    max_output_tokens=1)
out = []
for n in range({count}):
    user = user_create(email=f"bench{{n}}@example.com")
    wallet_grant(user=user, amount=Decimal("{credits}"), reason="benchmark credits")
    _, key = api_key_create(user=user, name="bench")
    out.append(key)
print(json.dumps(out))
"""

CHECK = """
import json
from decimal import Decimal
from django.db.models import Sum
from billing.models import CreditTransaction, Wallet
from chat.models import Turn
report = {"wallets": 0, "wrong": [], "turns": {}}
for status in ("running", "completed", "failed", "cancelled"):
    report["turns"][status] = Turn.objects.filter(status=status).count()
for wallet in Wallet.objects.all():
    ledger = CreditTransaction.objects.filter(wallet=wallet).aggregate(s=Sum("amount"))["s"] or Decimal(0)
    charged = Turn.objects.filter(user_id=wallet.user_id).aggregate(s=Sum("credits_charged"))["s"] or Decimal(0)
    debits = CreditTransaction.objects.filter(wallet=wallet, kind="debit").count()
    completed = Turn.objects.filter(user_id=wallet.user_id, status="completed").count()
    report["wallets"] += 1
    if wallet.balance != ledger or wallet.balance != Decimal(CREDITS) - charged or debits != completed or wallet.held:
        report["wrong"].append([wallet.pk, str(wallet.balance), str(ledger), str(charged), debits, completed])
print(json.dumps(report))
"""

WORDS = [
    "the", "ledger", "keeps", "every", "credit", "exact", "while", "holds", "bound", "each", "request", "before",
    "the", "model", "answers",
]  # fmt: skip


def bench_env(args: argparse.Namespace) -> dict[str, str]:
    return stack_env(database=database_url(args.pg, BENCH_DB), redis=args.redis)


class Client:
    """One keep-alive connection, as a real API client would hold."""

    def __init__(self, port: int, key: str, inputs: int, words: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.count = 0
        self.inputs, self.words = inputs, words

    def request(self, method: str, path: str, body: dict) -> tuple[int, dict]:
        payload = json.dumps(body)
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=payload, headers=self.headers)
                response = self.conn.getresponse()
                data = response.read()
                return response.status, json.loads(data) if data else {}
            except (http.client.RemoteDisconnected, http.client.CannotSendRequest, ConnectionError):
                self.conn.close()  # the server closed an idle keep-alive connection: reconnect once
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def bare(self) -> bool:
        status, _ = self.request("POST", "/bench/insert", {"n": self.count})
        self.count += 1
        return status == 201

    def embeddings(self) -> bool:
        self.count += 1
        texts = [
            f"chunk {self.count}.{i} " + " ".join(WORDS[(self.count + i + w) % len(WORDS)] for w in range(self.words))
            for i in range(self.inputs)
        ]  # fmt: skip
        status, body = self.request("POST", "/v1/embeddings", {"model": "bench-embed", "input": texts,
                                                               "encoding_format": "float"})  # fmt: skip
        return status == 200 and len(body.get("data", ())) == self.inputs


def run_phase(clients: list[Client], seconds: float, op: Callable[[Client], bool]) -> tuple[int, int, list[float]]:
    """(successes, failures, latencies in ms) of `op` by every client for `seconds`."""
    results: list[tuple[int, int, list[float]]] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def work(client: Client) -> None:
        ok = failed = 0
        latencies: list[float] = []
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            success = op(client)
            latencies.append((time.perf_counter() - started) * 1000)
            ok, failed = ok + success, failed + (not success)
        with lock:
            results.append((ok, failed, latencies))

    threads = [threading.Thread(target=work, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(r[0] for r in results), sum(r[1] for r in results), [lat for r in results for lat in r[2]]


def main() -> None:
    args = parse_args()
    print(f"Creating {BENCH_DB} on {urlsplit(args.pg).hostname} ...", flush=True)
    stack = Stack(bench_env(args), LOG)
    try:
        database_create(args.pg, BENCH_DB, stack.env, fresh=args.fresh)
        stack.manage("shell", "-c", "from bench.views import ensure_table; ensure_table()")
        keys = json.loads(stack.manage("shell", "-c", SEED.format(count=args.clients, credits=CREDITS)).splitlines()[-1])
        stack.start(("web",))
        clients = [Client(stack.port, key, args.inputs, args.words) for key in keys]
        print(f"load average before the run: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
        print(f"{args.clients} clients, {args.rounds} rounds of {args.seconds:g} s per phase; {args.inputs} texts of "
              f"{args.words} words a request; the Procfile's web line with its defaults")  # fmt: skip
        for client in clients:  # warm-up: connections, imports, caches
            for _ in range(3):
                assert client.bare(), "the bare endpoint failed during warm-up"
                assert client.embeddings(), f"an embeddings request failed during warm-up; see {LOG}"

        phases = (("bare", Client.bare), ("embeddings", Client.embeddings))
        totals: dict[str, list] = {name: [0, 0, []] for name, _ in phases}
        cpu = dict.fromkeys(totals, 0.0)
        web = stack.procs["web"].pid
        for number in range(1, args.rounds + 1):
            for name, op in phases:
                before = cpu_seconds(web)
                ok, failed, latencies = run_phase(clients, args.seconds, op)
                cpu[name] += cpu_seconds(web) - before
                totals[name][0] += ok
                totals[name][1] += failed
                totals[name][2] += latencies
                print(f"  round {number} {name:<10} {ok:>6} ok {failed:>3} failed  {ok / args.seconds:8.1f} /s",
                      flush=True)  # fmt: skip
        elapsed = args.seconds * args.rounds
        print()
        for name, _ in phases:
            done, lat = max(totals[name][0], 1), totals[name][2]
            print(f"{name:<10}: {totals[name][0] / elapsed:7.1f} /s   p50 {percentile(lat, 0.5):6.1f} ms   "
                  f"p95 {percentile(lat, 0.95):6.1f} ms   web CPU {cpu[name] / done * 1000:5.2f} ms a request  "
                  f"({totals[name][1]} failed)")  # fmt: skip
        per_bare = cpu["bare"] / max(totals["bare"][0], 1)
        per_embedding = cpu["embeddings"] / max(totals["embeddings"][0], 1)
        print(f"ratio     : an embeddings request costs {per_embedding / per_bare:4.2f}x the bare INSERT's web CPU")
        check = CHECK.replace("CREDITS", str(CREDITS))
        report = json.loads(stack.manage("shell", "-c", check).splitlines()[-1])
        verdict = "OK" if not report["wrong"] and not report["turns"]["running"] else "WRONG"
        print(f"ledger    : {report['wallets']} wallets, turns {report['turns']}; {verdict} {report['wrong'][:3]}")
    finally:
        stack.stop()
        if not args.keep:
            database_drop(args.pg, BENCH_DB)


if __name__ == "__main__":
    main()
