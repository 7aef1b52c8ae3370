"""manage.py against a PostgreSQL server that cannot be used: one line on stderr and
exit status 1 at once (config/preflight.py), not a minute of connection-pool retries.
The missing database itself is walked in tests/core/test_production_guide.py."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


def manage(*args: str, database_url: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DATABASE_", "DEBUG"))}
    env.update(DATABASE_URL=database_url, SECRET_KEY="preflight-test-key", ALLOWED_HOSTS="localhost")
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_an_unreachable_server_is_one_line_and_exit_1_at_once():
    port = closed_port()
    began = time.monotonic()
    result = manage("migrate", "--no-input", database_url=f"postgres://postgres@127.0.0.1:{port}/parley")
    assert result.returncode == 1
    assert time.monotonic() - began < 20
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"manage.py: cannot connect to PostgreSQL at 127.0.0.1:{port} (DATABASE_URL): ")


def test_commands_that_need_no_database_run_without_one():
    port = closed_port()
    result = manage("help", database_url=f"postgres://postgres@127.0.0.1:{port}/parley")
    assert result.returncode == 0, result.stderr
    assert "migrate" in result.stdout
    result = manage("collectstatic", "--help", database_url=f"postgres://postgres@127.0.0.1:{port}/parley")
    assert result.returncode == 0, result.stderr
