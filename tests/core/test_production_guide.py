"""docs/production.md, followed word for word on a fresh PostgreSQL database.

The commands are read from the guide itself (its numbered steps' code blocks), so the
guide and this test cannot drift apart. Only the values an operator would choose are
replaced: the database's name and server (this run's, `<name>_guide`), the Redis
database (one no other process of this run uses) and the port the web listens on.
Then: `manage.py` against the database before it exists says so in one line;
createdb; migrate and collectstatic; the models files; the first staff user; a user,
a key and a grant; the Procfile's web, worker and beat, started from its own lines;
and the guide's checks: health, `/v1/models` with the models, a chat completion on
the offline `local` provider, charged to the user's wallet.

PARLEY_GUIDE_REDIS_URL names the Redis database for the guide's stack when the run
must choose it (default: the spare database tests.conftest gives, else the one after
REDIS_URL's).
"""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import urllib.request
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from django.conf import settings
from django.db import connection

from tests.core.test_docs import code_blocks

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "production.md"

# xdist_group: with the Procfile's other stacks, one at a time (tests/conftest.py): its
# migrate and three processes would otherwise slow their timed takeovers.
pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.xdist_group("stack")]


def guide_steps() -> dict[str, list[str]]:
    """{step title: its commands}, from the guide's "### N. Title" sections; a command
    continued with a trailing backslash is one command."""
    text = GUIDE.read_text()
    steps = {}
    for match in re.finditer(r"^### \d+\. (.+?)\n(.*?)(?=^### |^## |\Z)", text, flags=re.S | re.M):
        blocks = code_blocks(match.group(2))
        commands = []
        for block in blocks[:1]:  # a step's first block is what it runs
            for line in block.replace("\\\n", " ").splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    commands.append(line)
        steps[match.group(1)] = commands
    return steps


def server_url() -> str:
    db = connection.settings_dict
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}"


def admin() -> psycopg.Connection:
    db = connection.settings_dict
    return psycopg.connect(
        dbname="postgres", host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"],
        password=db["PASSWORD"] or None, autocommit=True,
    )  # fmt: skip


def guide_redis_url() -> str:
    if os.environ.get("PARLEY_GUIDE_REDIS_URL"):
        return os.environ["PARLEY_GUIDE_REDIS_URL"]
    try:
        from tests.conftest import spare_redis_url  # where the suite hands out spare Redis databases

        return spare_redis_url()
    except ImportError:
        parts = urlsplit(settings.REDIS_URL)
        number = int(parts.path.lstrip("/") or 0)
        return urlunsplit(parts._replace(path=f"/{(number + 1) % 16}"))


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(port: int, path: str, key: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310  a local server
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def bash(script: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_the_guide_has_the_steps_this_test_walks():
    steps = guide_steps()
    assert list(steps) == [
        "Install", "Set the environment", "Create the database", "Create the tables and collect the static files",
        "Load models and prices", "The first staff user", "A user, an API key and credits", "Start the processes",
        "Check it",
    ]  # fmt: skip
    # Step 1 is what made the environment this test runs in (bin/test's .venv); not run again.
    assert steps["Install"] == ["python3 -m venv .venv", ".venv/bin/python -m pip install -r requirements.txt"]
    assert steps["Create the tables and collect the static files"] == [
        "python manage.py migrate --no-input", "python manage.py collectstatic --no-input",
    ]  # fmt: skip
    # The Procfile's release line is those two.
    release = next(line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("release:"))
    assert release == "release: python manage.py migrate --no-input && python manage.py collectstatic --no-input"


@pytest.mark.timeout(900)
def test_the_production_guide_word_for_word_on_a_fresh_database(tmp_path):
    steps = guide_steps()
    name = re.sub(r"^test_", "", connection.settings_dict["NAME"]) + "_guide"
    url, redis_url = f"{server_url()}/{name}", guide_redis_url()
    with admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    # Step 2, the environment: the guide's variables, with this run's database and Redis.
    exports = steps["Set the environment"]
    assert [line.split("=", 1)[0] for line in exports] == [
        "export DATABASE_URL", "export REDIS_URL", "export SECRET_KEY", "export ALLOWED_HOSTS", "export PATH",
    ]  # fmt: skip
    guide_url = exports[0].split("=", 1)[1]
    exports = [f"export DATABASE_URL={url}", f"export REDIS_URL={redis_url}", *exports[2:]]
    base_env = {
        key: value for key, value in os.environ.items()
        if not key.startswith(("DATABASE_", "REDIS_", "CELERY_", "DEBUG", "SECURE_", "DJANGO_", "PROMETHEUS_"))
    }  # fmt: skip
    base_env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "metrics")  # not the machine's shared default
    prelude = "set -euo pipefail\n" + "\n".join(exports) + "\n"

    # Before step 3: manage.py says in one line that the database is missing, at once.
    began = time.monotonic()
    missing = bash(prelude + "python manage.py migrate --no-input", base_env, timeout=60)
    assert missing.returncode == 1
    assert time.monotonic() - began < 20
    assert missing.stderr.strip().splitlines() == [
        f'manage.py: the database "{name}" does not exist on PostgreSQL at '
        f"{connection.settings_dict['HOST'] or '127.0.0.1'}:{connection.settings_dict['PORT'] or 5432} "
        f"(DATABASE_URL). Create it first, e.g.: createdb -h {connection.settings_dict['HOST'] or '127.0.0.1'} "
        f"-p {connection.settings_dict['PORT'] or 5432} -U {connection.settings_dict['USER']} {name}"
    ]

    # Step 3: the guide's createdb, with this run's server and name.
    (createdb,) = steps["Create the database"]
    parts = urlsplit(guide_url)
    assert shlex.split(createdb) == [
        "createdb", "-h", parts.hostname, "-p", str(parts.port), "-U", parts.username, parts.path.lstrip("/"),
    ]  # fmt: skip
    db = connection.settings_dict
    createdb = shlex.join(
        ["createdb", "-h", db["HOST"] or "127.0.0.1", "-p", str(db["PORT"] or 5432), "-U", db["USER"], name]
    )
    try:
        # Steps 3 to 7, as one shell session; then what the processes need from it.
        commands = [createdb] if shutil.which("createdb") else []
        if not commands:
            with admin() as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
        for title in ("Create the tables and collect the static files", "Load models and prices",
                      "The first staff user", "A user, an API key and credits"):  # fmt: skip
            commands += steps[title]
        env_file = tmp_path / "env.json"
        script = prelude + "\n".join(commands) + (
            f"\nexport KEY\npython3 -c 'import json, os; print(json.dumps(dict(os.environ)))' > {env_file}\n"
        )
        walked = bash(script, base_env, timeout=600)
        assert walked.returncode == 0, walked.stdout[-3000:] + walked.stderr[-3000:]
        env = json.loads(env_file.read_text())
        key = env["KEY"]
        assert key.startswith("prl_") and key in walked.stdout  # `echo "$KEY"`

        # Step 8: the Procfile's web, worker and beat, each from its own line.
        port = free_port()
        env["PORT"] = str(port)
        procfile = dict(line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if ": " in line)
        processes = []
        for process in ("web", "worker", "beat"):
            log = open(tmp_path / f"{process}.log", "wb")  # noqa: SIM115  kept open for the process's life
            # beat keeps its schedule file (celerybeat-schedule) in its folder: its own
            # here, so another test's beat in the checkout cannot lock it.
            cwd, extra = (tmp_path, {"PYTHONPATH": str(ROOT)}) if process == "beat" else (ROOT, {})
            processes.append(subprocess.Popen(
                ["bash", "-c", f"exec {procfile[process]}"], cwd=cwd, env={**env, **extra}, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            ))  # fmt: skip
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                for process, label in zip(processes, ("web", "worker", "beat"), strict=True):
                    assert process.poll() is None, f"{label} exited: " + (tmp_path / f"{label}.log").read_text()[-3000:]
                try:
                    if get(port, "/api/v1/health")[0] == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.5)
            else:
                pytest.fail("the web process did not answer within 90 s")

            # Step 9: the guide's checks, on this run's port.
            checks = [line.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for line in steps["Check it"]]
            answers = []
            for check in checks:
                ran = bash(check, env, timeout=120)
                assert ran.returncode == 0, ran.stderr
                answers.append(json.loads(ran.stdout))
            health, models, completion = answers
            assert health["status"] == "ok"
            assert {"fast", "claude", "local-llama", "echo"} <= {model["id"] for model in models["data"]}
            assert completion["choices"][0]["message"]["content"] == "Echo: Hello"
            cost = Decimal(str(completion["usage"]["cost"]))
            assert cost > 0

            # The grant and the charge, in alice's wallet; the static files; the staff user.
            status, body = get(port, "/api/v1/users/me/wallet", key)
            assert status == 200
            assert Decimal(json.loads(body)["balance"]) == Decimal("100") - cost
            assert get(port, "/static/admin/css/base.css")[0] == 200
            with psycopg.connect(url.replace("postgres://", "postgresql://", 1)) as conn:
                row = conn.execute(
                    "SELECT is_staff, is_superuser FROM accounts_user WHERE email = 'admin@example.com'"
                ).fetchone()
            assert row == (True, True)
        finally:
            for process in processes:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGTERM)
            for process in processes:
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(10)
    finally:
        with admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

