"""The stack a benchmark measures, started from the Procfile's own lines with their
default settings, so what is measured is what ships. Also: a throwaway PostgreSQL
database copied from a migrated template, and CPU and memory of process trees."""

import asyncio
import hashlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_DB = "parley_bench_template"
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
# Procfile lines a benchmark runs: the release step (migrations) is done by the
# template database instead.
SERVED = ("web", "worker", "turns", "beat")


def database_url(server: str, name: str) -> str:
    parts = urlsplit(server)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", "", ""))


def admin_connection(server: str) -> psycopg.Connection:
    return psycopg.connect(database_url(server, "postgres").replace("postgres://", "postgresql://", 1), autocommit=True)


def migration_fingerprint() -> str:
    """Changes whenever a migration (ours, or a pinned package's) could have changed."""
    digest = hashlib.sha256((ROOT / "requirements.txt").read_bytes())
    for path in sorted(ROOT.glob("*/migrations/*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()[:32]


def database_create(server: str, name: str, env: dict[str, str], *, fresh: bool = False) -> None:
    """`name` as a copy of a migrated template: migrating from scratch takes minutes
    (dj-stripe brings many migrations), so the template is kept between runs and
    rebuilt only when the migrations change."""
    fingerprint = migration_fingerprint()
    with admin_connection(server) as conn:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", [TEMPLATE_DB]
        ).fetchone()
        stale = fresh or row is None or row[0] != fingerprint
        if stale:
            print(f"  migrating the template database {TEMPLATE_DB} (once per set of migrations) ...", flush=True)
            conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    if stale:
        migrate_env = {**env, "DATABASE_URL": database_url(server, TEMPLATE_DB)}
        subprocess.run([PYTHON, "manage.py", "migrate", "--no-input", "-v", "0"], cwd=ROOT, env=migrate_env, check=True)
        with admin_connection(server) as conn:
            conn.execute(f"COMMENT ON DATABASE {TEMPLATE_DB} IS '{fingerprint}'")
    with admin_connection(server) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")


def database_drop(server: str, name: str) -> None:
    with admin_connection(server) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def connections_to(server: str, name: str) -> int:
    with admin_connection(server) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [name]).fetchone()[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bench_env(*, database: str, redis: str) -> dict[str, str]:
    """The Procfile's processes with their defaults (this shell's Django, Celery and
    pool settings dropped), on the benchmark's database and Redis, with the baseline
    endpoints, a zero-latency model and throttles out of the way."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CELERY_", "WEB_", "WORKER_"))}
    env.pop("DEBUG", None)
    env.pop("CONN_MAX_AGE", None)
    return {
        **env,
        "DATABASE_URL": database,
        "REDIS_URL": redis,
        "SECRET_KEY": "bench-only-not-secret",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "BENCH_ENDPOINTS": "1",
        "LOCAL_LLM_LATENCY_MS": "0",
        "THROTTLE_USER_RATE": "10000000/min",
        "THROTTLE_ANON_RATE": "10000000/min",
        "LOG_LEVEL": "WARNING",
    }


def procfile() -> dict[str, str]:
    lines = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if ":" in line and not line.lstrip().startswith("#"):
            name, command = line.split(":", 1)
            lines[name.strip()] = command.strip()
    return lines


def _expand(command: str, env: dict[str, str]) -> list[str]:
    """The Procfile's ${NAME:-default} and $NAME, as the shell would expand them."""

    def value(match: re.Match) -> str:
        name, default = match.group(1) or match.group(3), match.group(2) or ""
        return env.get(name) or default

    expanded = re.sub(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)", value, command)
    words = shlex.split(expanded)
    wrapper = words[:1] if words[0] == "bin/with-metrics" else []  # it runs the rest (metrics' directory)
    words = words[len(wrapper) :]
    # `celery`, `gunicorn` and the like from this project's virtualenv.
    return [*wrapper, *([PYTHON, "-m"] if words[0] in ("gunicorn", "celery", "uvicorn") else []), *words]


SEED_USERS = """
import json
from decimal import Decimal
from accounts.services import api_key_create, user_create
from billing.models import ModelPrice
from billing.services import wallet_grant
from chat.models import ChatSession, Message, Turn
from organizations.services import member_budget_set, organization_api_key_create, organization_create
from organizations.models import Membership
if not ModelPrice.objects.filter(alias="bench", active=True).exists():
    ModelPrice.objects.create(alias="bench", provider="local", provider_model="echo", counting="{counting}",
        input_credits_per_mtok=Decimal("3.33333333"), output_credits_per_mtok=Decimal("7.77777777"),
        context_tokens=1_000_000)
WORDS = "The ledger 中文 keeps every credit 😀 exact: def f(x): return x * 2. ".split()
out = []
org = None
if {organization}:
    # One organization whose members each have a budget and a key of its own: every
    # turn holds the member's budget too, and charges the organization's wallet.
    org = organization_create(creator=user_create(email="bench-owner@example.com"), name="Bench")
    wallet_grant(user=org.account, amount=Decimal("{credits}"), reason="benchmark credits")
for n in range({count}):
    user = user_create(email=f"bench{{'-org' if org else ''}}{{n}}@example.com")
    if org is None:
        wallet_grant(user=user, amount=Decimal("{credits}"), reason="benchmark credits")
        _, key = api_key_create(user=user, name="bench")
        account, member = user, None
    else:
        member = Membership.objects.create(organization=org, user=user, role="member")
        member_budget_set(member=member, budget_credits=Decimal("{credits}"), budget_window="day")
        _, key = organization_api_key_create(member=member, name="bench")
        account = org.account
    # A member's session is theirs alone (chat.selectors): made as their key would make it.
    session = ChatSession.objects.create(user=account, membership=member, model_alias="bench", title="bench")
    if {history}:
        # A finished history the context reads (and counts) on every turn.
        done = Turn.objects.create(session=session, user=account, membership=member, model_alias="bench",
                                   status="completed")
        Message.objects.bulk_create(
            Message(session=session, turn=done, role=("user", "assistant")[m % 2],
                    content=" ".join(WORDS[(m + w) % len(WORDS)] for w in range(60)))
            for m in range({history})
        )
    out.append({{"key": key, "session": session.pk}})
print(json.dumps(out))
"""


class Stack:
    """The Procfile's processes on a benchmark database, stopped on exit."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.env = {**env, "PORT": str(self.port)}
        self.log = log
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, names: tuple[str, ...] = SERVED) -> None:
        lines = procfile()
        out = open(self.log, "w")  # noqa: SIM115  kept open for the processes
        for name in names:
            if name in lines:
                command = _expand(lines[name], self.env)
                # Production binds every interface; a benchmark only loopback.
                command = [word.replace("0.0.0.0:", "127.0.0.1:") for word in command]
                self.procs[name] = subprocess.Popen(
                    command, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
        self.wait_until_up()

    def wait_until_up(self, seconds: float = 90) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"Procfile process {name!r} exited early; see {self.log}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v1/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"the web process did not answer /api/v1/health within {seconds:g} s; see {self.log}")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    def seed_users(
        self, count: int, *, credits: str, counting: str = "bytes", history: int = 0, organization: bool = False
    ) -> list[dict]:
        """`count` users, each with credits, an API key and a session on the `bench`
        alias (a `local` model counted by `counting`) holding `history` finished
        messages of about 300 characters: [{"key", "session"}]. With `organization`,
        `count` members of one organization holding the credits, each with a member
        budget, an organization key and a session of the organization's."""
        code = SEED_USERS.format(
            count=count, credits=credits, counting=counting, history=history, organization=organization
        )
        return json.loads(self.manage("shell", "-c", code).splitlines()[-1])

    def manage(self, *command: str) -> str:
        done = subprocess.run(
            [PYTHON, "manage.py", *command], cwd=ROOT, env=self.env, check=True, capture_output=True, text=True
        )
        return done.stdout


def process_tree(pid: int) -> list[int]:
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


def process_cpu(pid: int | str) -> tuple[str, float] | None:
    """(command name, user + system CPU seconds so far) of one process; None when it is gone."""
    try:
        name, rest = Path(f"/proc/{pid}/stat").read_text().split("(", 1)[1].rsplit(")", 1)
    except (OSError, IndexError):
        return None
    fields = rest.split()
    return name, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime in ticks


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process tree so far."""
    return sum(found[1] for member in process_tree(pid) if (found := process_cpu(member)) is not None)


def rss_bytes(pid: int) -> int:
    """Resident memory of a process tree (sum of its processes' RSS)."""
    total = 0
    for member in process_tree(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


# --- a small HTTP/1.1 client on asyncio: one connection per request, no dependency ---


async def http_open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, limit=2**20)


def http_request(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed before an answer")
    status = int(status_line.split()[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str]):  # noqa: ANN202  an async iterator
    """The body as it arrives, de-chunked."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                return
            data = await reader.readexactly(size)
            await reader.readline()
            yield data
    elif "content-length" in headers:
        yield await reader.readexactly(int(headers["content-length"]))
    else:
        while data := await reader.read(65536):
            yield data


async def http_json(port: int, method: str, path: str, headers: dict[str, str], body: dict | None = None):  # noqa: ANN201
    reader, writer = await http_open(port)
    try:
        payload = json.dumps(body).encode() if body is not None else b""
        if body is not None:
            headers = {**headers, "Content-Type": "application/json"}
        writer.write(http_request(method, path, headers, payload))
        await writer.drain()
        status, answer_headers = await read_head(reader)
        data = b"".join([chunk async for chunk in read_body(reader, answer_headers)])
        return status, json.loads(data) if data else {}
    finally:
        writer.close()


async def sse_events(reader: asyncio.StreamReader, headers: dict[str, str]):  # noqa: ANN201  an async iterator
    """(event name, data text) of each server-sent event of a body as it arrives; an
    event with data and no name (OpenAI's chunks) is named "message", as the SSE spec
    names it."""
    buffer = b""
    async for chunk in read_body(reader, headers):
        buffer += chunk
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            name, data = "", ""
            for line in block.decode().splitlines():
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data = line[5:].strip()
            if name or data:
                yield name or "message", data
