"""Concurrency benchmark: N users at once each post a turn and read its SSE stream
while the model takes LATENCY to answer, against the stack as the Procfile ships it;
then the same users at once each ask the OpenAI-compatible endpoint for a streamed
chat completion (POST /v1/chat/completions, `stream: true`, usage included).

    .venv/bin/python bench/concurrency.py [--users 200] [--latency-ms 3000] [--repeat 1]
        [--pg postgres://postgres@127.0.0.1:5432] [--redis redis://127.0.0.1:6379/3]

It creates (and drops again) its own PostgreSQL database `parley_bench_concurrency`
from a migrated template, seeds one user per client (API key, credits, a session)
and a `local` model alias, then starts the Procfile's `web`, `worker` (and any
other worker line) and `beat` processes with their default settings, adding only
the database, Redis, a secret key and LOCAL_LLM_LATENCY_MS. All users then, at the
same moment, POST a turn (202) and open GET turns/{id}/stream. Meanwhile a probe
asks GET /api/v1/health and another user GET /api/v1/users/me/wallet, each about
ten times a second from a process of its own, and PostgreSQL's connections to the
database are counted.

Prints: the batch's wall time against the latency (goal: within 2.5x for 200 users
at 3 s, 2x for 1,000 at 20 s), time to the first streamed piece p50/p95/p99 (goal
p95 < 1 s), health p99 (< 250 ms) and wallet p99 (< 500 ms) during the load, the peak
number of PostgreSQL connections (<= 50), the memory of the web and worker process
trees per open stream / turn in flight, where the machine's cores went during the
batch (each Procfile process tree, PostgreSQL, Redis, this load generator, and the
rest), and then checks every wallet to the last
decimal against its ledger and its completed turns. The /v1 phase prints the same
figures with the same goals (its first piece: the first chunk with text). Exits 1
when a turn or completion did not complete or a wallet is wrong.

With --repeat N every phase runs N times on the same stack, and a summary gives each
figure's median, its range and how many runs met its goal: a single p99 of about 60
probes moves with the machine from minute to minute.

With --floor (the web also mounts bench/'s endpoints, BENCH_ENDPOINTS=1) a floor
phase runs first: every user at once POSTs /bench/roundtrip, one INSERT and a no-op
Celery task that answers on Redis pub/sub while the request waits (bench/views.py),
the least any request handed to a worker and heard back from can cost. Its answer
time is the floor under a turn's first piece (which needs that and more: the turn's
reads and writes, a second request for the stream, the model's first piece).
"""

import argparse
import asyncio
import http.client
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as `python bench/<name>.py`

from bench.stack import (  # noqa: E402
    Stack,
    connections_to,
    cpu_seconds,
    database_create,
    database_drop,
    database_url,
    http_json,
    http_open,
    http_request,
    percentile,
    process_cpu,
    read_head,
    rss_bytes,
    sse_events,
)

BENCH_DB = "parley_bench_concurrency"
LOG = Path(tempfile.gettempdir()) / "parley-bench-concurrency.log"
CREDITS = "5000"
# The `local` model echoes the question in pieces of 4 words (--piece-words) spread
# evenly over the latency, as a streaming model does: 120 words make 30 pieces, the
# first after latency / 30 (100 ms at 3 s).
QUESTION = " ".join(f"word{i}" for i in range(118))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=200, help="users, each with one turn and one stream (200)")
    parser.add_argument("--latency-ms", type=int, default=3000, help="how long the model takes to answer (3000)")
    parser.add_argument("--goal-factor", type=float, default=None, help="batch goal as a multiple of the latency")
    parser.add_argument("--pg", default=os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432"))
    parser.add_argument("--redis", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/3"))
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database afterwards")
    parser.add_argument("--fresh", action="store_true", help="rebuild the migrated template database first")
    parser.add_argument("--floor", action="store_true", help="first, every user at once POSTs /bench/roundtrip")
    parser.add_argument("--repeat", type=int, default=1, help="run every phase this many times, then summarise (1)")
    parser.add_argument(
        "--piece-words", type=int, default=4, help="words per streamed piece (4: 30 pieces a reply; 1: 120, a "
        "hosted model's rate of about a token per piece)",
    )  # fmt: skip
    return parser.parse_args()


CHECK = """
import json
from decimal import Decimal
from django.db.models import Sum
from billing.models import CreditHold, CreditTransaction, Wallet
from chat.models import Turn
report = {{"wallets": 0, "wrong": [], "turns": {{}}, "active_holds": CreditHold.objects.filter(status="active").count()}}
for status, in Turn.objects.values_list("status").distinct():
    report["turns"][status] = Turn.objects.filter(status=status).count()
for wallet in Wallet.objects.all():
    ledger = CreditTransaction.objects.filter(wallet=wallet).aggregate(s=Sum("amount"))["s"] or Decimal(0)
    done = Turn.objects.filter(user_id=wallet.user_id, status="completed")
    charged = done.aggregate(s=Sum("credits_charged"))["s"] or Decimal(0)
    debits = CreditTransaction.objects.filter(wallet=wallet, kind="debit").count()
    report["wallets"] += 1
    if wallet.balance != ledger or wallet.balance != Decimal("{credits}") - charged or debits != done.count() or wallet.held:
        report["wrong"].append([wallet.pk, str(wallet.balance), str(ledger), str(charged), debits, str(wallet.held)])
print(json.dumps(report))
"""


@dataclass
class TurnResult:
    accepted_status: int = 0
    first_piece: float | None = None  # seconds from the POST
    finished: float | None = None
    final_status: str = ""
    error: str = ""


async def user_completion(port: int, key: str, session: int, n: int, start: asyncio.Event) -> TurnResult:
    """POST /v1/chat/completions with `stream: true` and read its chunks to [DONE]."""
    result = TurnResult()
    body = {
        "model": "bench", "messages": [{"role": "user", "content": f"Question {n}: {QUESTION}"}], "stream": True,
        "stream_options": {"include_usage": True},
    }  # fmt: skip
    payload = json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", "Accept": "text/event-stream"}
    await start.wait()
    began = time.perf_counter()
    try:
        reader, writer = await http_open(port)
        try:
            writer.write(http_request("POST", "/v1/chat/completions", headers, payload))
            await writer.drain()
            status, answer_headers = await read_head(reader)
            result.accepted_status = status
            if status != 200:
                result.error = f"POST {status}"
                return result
            usage = None
            async for _, data in sse_events(reader, answer_headers):
                if data == "[DONE]":
                    result.finished = time.perf_counter() - began
                    result.final_status = "completed" if usage else "no usage chunk"
                    return result
                chunk = json.loads(data)
                if "error" in chunk:
                    result.error = chunk["error"]["message"]
                    return result
                usage = chunk.get("usage") or usage
                text = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else None
                if text and result.first_piece is None:
                    result.first_piece = time.perf_counter() - began
            result.error = "stream ended without [DONE]"
        finally:
            writer.close()
    except (OSError, ValueError, KeyError, asyncio.IncompleteReadError) as exc:
        result.error = f"{exc.__class__.__name__}: {exc}"
    return result


async def user_turn(port: int, key: str, session: int, n: int, start: asyncio.Event) -> TurnResult:
    """POST a turn, then read its SSE stream to the `done` event."""
    result = TurnResult()
    auth = {"Authorization": f"Bearer {key}"}
    await start.wait()
    began = time.perf_counter()
    try:
        status, body = await http_json(
            port, "POST", f"/api/v1/sessions/{session}/turns", auth, {"content": f"Question {n}: {QUESTION}"}
        )
        result.accepted_status = status
        if status not in (201, 202):
            result.error = f"POST {status}: {body}"
            return result
        reader, writer = await http_open(port)
        try:
            writer.write(
                http_request("GET", f"/api/v1/turns/{body['id']}/stream", {**auth, "Accept": "text/event-stream"})
            )
            await writer.drain()
            status, headers = await read_head(reader)
            if status != 200:
                result.error = f"stream {status}"
                return result
            async for name, data in sse_events(reader, headers):
                if name == "delta" and result.first_piece is None:
                    result.first_piece = time.perf_counter() - began
                if name == "done":
                    result.finished = time.perf_counter() - began
                    result.final_status = json.loads(data).get("status", "")
                    return result
            result.error = "stream ended without done"
        finally:
            writer.close()
    except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
        result.error = f"{exc.__class__.__name__}: {exc}"
    return result


async def user_floor(port: int, key: str, session: int, n: int, start: asyncio.Event) -> TurnResult:
    """POST /bench/roundtrip: its answer is the floor under a turn's first piece."""
    result = TurnResult()
    await start.wait()
    began = time.perf_counter()
    try:
        status, _ = await http_json(port, "POST", "/bench/roundtrip", {"Authorization": f"Bearer {key}"}, {"n": n})
        result.accepted_status = status
        if status == 201:
            result.first_piece = result.finished = time.perf_counter() - began
            result.final_status = "completed"
        else:
            result.error = f"POST {status}"
    except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
        result.error = f"{exc.__class__.__name__}: {exc}"
    return result


@dataclass
class Probe:
    latencies: list[float] = field(default_factory=list)
    failures: int = 0


def probe_loop(port: int, path: str, headers: dict[str, str], every: float, stop, results) -> None:  # noqa: ANN001
    """GET `path` about every `every` seconds until `stop` is set, then put (latencies
    in ms, failures) on `results`. It runs in a process of its own: a probe in the
    load's own event loop measured that loop's stalls too (driving hundreds of users,
    it fell behind by more than a second, while a separate probe of the same server saw
    at most 166 ms)."""
    latencies, failures = [], 0
    while not stop.is_set():
        began = time.perf_counter()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            response.read()
            conn.close()
            failures += response.status != 200
        except OSError:
            failures += 1
        latencies.append((time.perf_counter() - began) * 1000)
        time.sleep(max(0.0, every - (time.perf_counter() - began)))
    results.put((latencies, failures))


class Probes:
    """The health and wallet probes, each in a process of its own (probe_loop)."""

    def __init__(self, port: int, probe_user: dict) -> None:
        context = multiprocessing.get_context("spawn")
        self.stop, self.results = context.Event(), {"health": context.Queue(), "wallet": context.Queue()}
        wallet_auth = {"Authorization": f"Bearer {probe_user['key']}"}
        self.processes = [
            context.Process(
                target=probe_loop, args=(port, "/api/v1/health", {}, 0.1, self.stop, self.results["health"])
            ),
            context.Process(
                target=probe_loop,
                args=(port, "/api/v1/users/me/wallet", wallet_auth, 0.15, self.stop, self.results["wallet"]),
            ),
        ]
        for process in self.processes:
            process.start()

    def finish(self) -> tuple[Probe, Probe]:
        self.stop.set()
        found = {name: Probe(*queue.get(timeout=60)) for name, queue in self.results.items()}
        for process in self.processes:
            process.join(timeout=10)
        return found["health"], found["wallet"]


class Sampler(threading.Thread):
    """Peak PostgreSQL connections and peak process-tree memory while the load runs."""

    def __init__(self, server: str, stack: Stack) -> None:
        super().__init__(daemon=True)
        self.server, self.stack = server, stack
        self.peak_connections = 0
        self.peak_rss = {name: 0 for name in stack.procs}
        self.running = True

    def run(self) -> None:
        while self.running:
            self.peak_connections = max(self.peak_connections, connections_to(self.server, BENCH_DB))
            for name, proc in self.stack.procs.items():
                self.peak_rss[name] = max(self.peak_rss[name], rss_bytes(proc.pid))
            time.sleep(0.1)


async def warm_up(port: int, probe_user: dict) -> None:
    """Each web process's first requests import code and open pool connections."""
    auth = {"Authorization": f"Bearer {probe_user['key']}"}
    go = asyncio.Event()
    go.set()
    for _ in range(3):
        await asyncio.gather(
            *(http_json(port, "GET", "/api/v1/users/me/wallet", auth) for _ in range(8)),
            *(user_turn(port, probe_user["key"], probe_user["session"], n, go) for n in range(4)),
        )


@dataclass
class Cores:
    """Where the machine's CPU went while the load ran (the start line to the last answer)."""

    busy: float = 0.0  # every process, every core
    processes: dict[str, float] = field(default_factory=dict)  # each Procfile line's process tree
    generator: float = 0.0  # this load generator (the probes are processes of their own)
    services: dict[str, float] = field(default_factory=dict)  # PostgreSQL's and Redis's processes on this machine


def machine_busy_seconds() -> float:
    """CPU time the whole machine has spent busy so far, all cores (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


SERVICES = {"postgres": "PostgreSQL", "redis-server": "Redis"}


def services_cpu_seconds() -> dict[str, float]:
    """CPU so far of the processes of PostgreSQL (its backends, which a pool keeps for
    the whole batch) and Redis running on this machine."""
    spent = dict.fromkeys(SERVICES.values(), 0.0)
    for process in Path("/proc").glob("[0-9]*"):
        if (found := process_cpu(process.name)) is not None and found[0] in SERVICES:
            spent[SERVICES[found[0]]] += found[1]
    return spent


def cores_now(stack: Stack) -> Cores:
    processes = {name: cpu_seconds(proc.pid) for name, proc in stack.procs.items()}
    return Cores(
        busy=machine_busy_seconds(), processes=processes, generator=time.process_time(), services=services_cpu_seconds()
    )


async def load(port: int, seeds: list[dict], ask, stack: Stack) -> tuple[list[TurnResult], Probe, Probe, float, Cores]:  # noqa: ANN001
    """Every user at once runs `ask` (a turn and its stream, or a streamed completion)."""
    start = asyncio.Event()
    probe_user, users = seeds[0], seeds[1:]
    await warm_up(port, probe_user)
    probes = Probes(port, probe_user)
    turns = [asyncio.create_task(ask(port, s["key"], s["session"], n, start)) for n, s in enumerate(users)]
    await asyncio.sleep(0.5)  # every task waits at the start line (and the probes are running)
    began, before = time.perf_counter(), cores_now(stack)
    start.set()
    results = await asyncio.gather(*turns)
    wall, after = time.perf_counter() - began, cores_now(stack)
    health, wallet = probes.finish()
    spent = Cores(
        busy=after.busy - before.busy, generator=after.generator - before.generator,
        processes={name: after.processes[name] - before.processes[name] for name in after.processes},
        services={name: after.services[name] - before.services[name] for name in after.services},
    )  # fmt: skip
    return results, health, wallet, wall, spent


@dataclass
class Figures:
    """One phase's figures against their goals, for --repeat's summary."""

    incomplete: bool
    goals: dict[str, tuple[float, bool]]  # figure -> (value, goal met)
    busy_cpu: float  # CPU-seconds of the whole machine during the batch


def phase(title: str, ask, stack: Stack, args: argparse.Namespace, factor: float, seeds: list[dict]) -> Figures:  # noqa: ANN001
    """One load of every user at once running `ask`, with its figures printed."""
    latency = args.latency_ms / 1000
    idle_rss = {name: rss_bytes(proc.pid) for name, proc in stack.procs.items()}
    cpu_before = {name: cpu_seconds(proc.pid) for name, proc in stack.procs.items()}
    sampler = Sampler(args.pg, stack)
    sampler.start()
    results, health, wallet, wall, cores = asyncio.run(load(stack.port, seeds, ask, stack))
    sampler.running = False
    sampler.join()
    cpu = {name: cpu_seconds(proc.pid) - cpu_before[name] for name, proc in stack.procs.items()}
    completed = [r for r in results if r.final_status == "completed"]
    errors = [r.error or r.final_status for r in results if r.final_status != "completed"]
    firsts = [r.first_piece for r in results if r.first_piece is not None]

    n = args.users
    first_p95, health_p99, wallet_p99 = (percentile(firsts, .95), percentile(health.latencies, .99),
                                         percentile(wallet.latencies, .99))  # fmt: skip
    figures = Figures(
        incomplete=len(completed) != n,
        goals={
            "batch (x latency)": (wall / latency, wall <= factor * latency and len(completed) == n),
            "first piece p95 (ms)": (first_p95 * 1000, len(firsts) == n and first_p95 < 1),
            "health p99 (ms)": (health_p99, health_p99 < 250 and not health.failures),
            "wallet p99 (ms)": (wallet_p99, wallet_p99 < 500 and not wallet.failures),
            "peak PostgreSQL connections": (sampler.peak_connections, sampler.peak_connections <= 50),
        },
        busy_cpu=cores.busy,
    )

    def verdict(name: str) -> str:
        return "met" if figures.goals[name][1] else "NOT met"

    print(f"\n{title}: {n} users, model latency {latency:g} s")
    print(f"completed   : {len(completed)}/{n}" + (f"; first errors: {errors[:3]}" if errors else ""))
    print(f"batch       : {wall:6.2f} s = {wall / latency:4.2f}x the latency (goal <= {factor:g}x: "
          f"{verdict('batch (x latency)')})")  # fmt: skip
    print(f"first piece : p50 {percentile(firsts, .5) * 1000:7.0f} ms  p95 {first_p95 * 1000:7.0f} ms  "
          f"p99 {percentile(firsts, .99) * 1000:7.0f} ms (goal p95 < 1000 ms: {verdict('first piece p95 (ms)')})")  # fmt: skip
    print(f"health      : p50 {percentile(health.latencies, .5):7.1f} ms  p99 {health_p99:7.1f} ms"
          f"  ({len(health.latencies)} asked, {health.failures} failed; goal p99 < 250 ms: "
          f"{verdict('health p99 (ms)')})")  # fmt: skip
    print(f"wallet      : p50 {percentile(wallet.latencies, .5):7.1f} ms  p99 {wallet_p99:7.1f} ms"
          f"  ({len(wallet.latencies)} asked, {wallet.failures} failed; goal p99 < 500 ms: "
          f"{verdict('wallet p99 (ms)')})")  # fmt: skip
    print(f"postgres    : peak {sampler.peak_connections} connections to {BENCH_DB} "
          f"(goal <= 50: {verdict('peak PostgreSQL connections')})")  # fmt: skip
    for name in stack.procs:
        grown = sampler.peak_rss[name] - idle_rss[name]
        print(f"memory      : {name:<6} idle {idle_rss[name] / 2**20:7.1f} MiB, peak {sampler.peak_rss[name] / 2**20:7.1f} MiB,"
              f" {grown / n / 1024:7.1f} KiB per turn in flight; CPU {cpu[name]:6.2f} s")  # fmt: skip
    counted = sum(cores.processes.values()) + sum(cores.services.values()) + cores.generator
    print(f"cores       : {cores.busy:5.2f} of {wall * os.cpu_count():5.2f} CPU-seconds busy during the batch: "
          + ", ".join(f"{name} {spent:4.2f}" for name, spent in (*cores.processes.items(), *cores.services.items()))
          + f", this load generator {cores.generator:4.2f}, the rest (the probes, the kernel) {cores.busy - counted:4.2f}")  # fmt: skip
    return figures


def summarise(title: str, runs: list[Figures]) -> None:
    """Each figure over the runs of one phase: median, range, runs that met its goal."""
    print(f"\n{title}: {len(runs)} runs")
    for name in runs[0].goals:
        values = sorted(run.goals[name][0] for run in runs)
        met = sum(run.goals[name][1] for run in runs)
        print(f"  {name:<28}: median {statistics.median(values):8.2f}, {values[0]:8.2f} to {values[-1]:8.2f}; "
              f"goal met in {met} of {len(runs)}")  # fmt: skip
    busy = sorted(run.busy_cpu for run in runs)
    print(f"  {'busy CPU-seconds':<28}: median {statistics.median(busy):8.2f}, {busy[0]:8.2f} to {busy[-1]:8.2f}")


def main() -> None:
    args = parse_args()
    factor = args.goal_factor or (2.5 if args.latency_ms < 10_000 else 2.0)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CELERY_", "WEB_", "WORKER_"))},
        "DATABASE_URL": database_url(args.pg, BENCH_DB),
        "REDIS_URL": args.redis,
        "SECRET_KEY": "bench-only-not-secret",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "LOCAL_LLM_LATENCY_MS": str(args.latency_ms),
        "LOCAL_LLM_PIECE_WORDS": str(args.piece_words),
        "LOG_LEVEL": "WARNING",
        **({"BENCH_ENDPOINTS": "1"} if args.floor else {}),
    }
    env.pop("DEBUG", None)
    env.pop("CONN_MAX_AGE", None)
    stack = Stack(env, LOG)
    print(f"Creating {BENCH_DB} ...", flush=True)
    try:
        database_create(args.pg, BENCH_DB, stack.env, fresh=args.fresh)
        seeds = stack.seed_users(args.users + 1, credits=CREDITS)  # one more: the wallet probe
        import redis  # the benchmark's own connection, to empty the queues it uses

        redis.Redis.from_url(args.redis).flushdb()
        if args.floor:
            stack.manage("shell", "-c", "from bench.views import ensure_table; ensure_table()")
        stack.start()
        print(f"load average before the run: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
        print("Procfile processes: " + ", ".join(stack.procs))
        phases = [("chat API: POST a turn, read its stream", user_turn),
                  ("/v1/chat/completions, stream: true", user_completion)]  # fmt: skip
        if args.floor:
            phases.insert(0, ("floor: POST /bench/roundtrip (its answer as the first piece)", user_floor))
        runs: dict[str, list[Figures]] = {title: [] for title, _ in phases}
        for _ in range(args.repeat):
            for title, ask in phases:
                runs[title].append(phase(title, ask, stack, args, factor, seeds))
        if args.repeat > 1:
            for title, figures in runs.items():
                summarise(title, figures)
        failed = any(run.incomplete for figures in runs.values() for run in figures)
        stack.stop()
        report = json.loads(stack.manage("shell", "-c", CHECK.format(credits=CREDITS)).splitlines()[-1])
        print(f"check       : {report['wallets']} wallets, turns {report['turns']}, active holds {report['active_holds']}, "
              f"{'all exact' if not report['wrong'] else 'WRONG: ' + json.dumps(report['wrong'][:5])}")  # fmt: skip
        if report["wrong"] or failed or report["active_holds"]:
            sys.exit(1)
    finally:
        stack.stop()
        if not args.keep:
            database_drop(args.pg, BENCH_DB)


if __name__ == "__main__":
    main()
