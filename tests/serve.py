"""bin/serve's own server line (gunicorn's ASGI worker, one process) in a subprocess on
a free port of 127.0.0.1, serving what a test has committed.

On the embedded default (the suite on SQLite) the server gets a copy of the test
database in a file (SQLite's backup API: the tables pytest-django made, the rows the
test committed), no Redis, and so turns run in its own process (TURNS_IN_PROCESS by
default). On PostgreSQL and Redis it serves the test database itself, with Redis
and TURNS_IN_PROCESS set: the same in-process runs, their events through Redis. Either way a test reads the outcome through the API."""

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings
from django.db import connection

from bench.stack import PYTHON, free_port
from tests.conftest import _worker_env

ROOT = Path(__file__).resolve().parent.parent
SERVE = ROOT / "bin" / "serve"


def serve_line() -> str:
    """The line of bin/serve that starts the server (after migrate and seed_demo)."""
    lines = [line for line in SERVE.read_text().splitlines() if line.startswith('exec "$PY" -m gunicorn ')]
    assert len(lines) == 1, 'bin/serve must start its server with one `exec "$PY" -m gunicorn ...` line'
    return lines[0]


def server_env(directory: Path, **extra: str) -> dict[str, str]:
    """The server's environment: the test's committed rows, DEBUG on as bin/serve's
    embedded default has it, and `extra` (LOCAL_LLM_LATENCY_MS, say)."""
    if connection.vendor == "sqlite":
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "TURNS_IN_PROCESS")}
        copy = directory / "db.sqlite3"
        connection.ensure_connection()
        with contextlib.closing(sqlite3.connect(copy)) as target:
            connection.connection.backup(target)
        env["DATABASE_URL"] = f"sqlite:///{copy}"
    else:
        # The suite's own Redis database: turn channels are named by turn, and with
        # other tasks eager the server sends nothing to the broker a Celery worker reads.
        env = {**_worker_env(), "TURNS_IN_PROCESS": "true", "CELERY_TASK_ALWAYS_EAGER": "true"}
    env.update(DEBUG="true", SECRET_KEY=settings.SECRET_KEY, ALLOWED_HOSTS="127.0.0.1,localhost", **extra)
    return env


@contextlib.contextmanager
def served(env: dict[str, str], log: Path) -> Iterator[str]:
    """bin/serve's server line on a free port; yields its base URL once /api/v1/health
    answers 200, and stops it (and anything it started) after."""
    addr = f"127.0.0.1:{free_port()}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["bash", "-c", serve_line()], cwd=ROOT, env={**env, "PY": PYTHON, "addr": addr},
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        base = f"http://{addr}"
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"bin/serve's server exited early:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/api/v1/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"bin/serve's server did not answer within 60 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield base
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
