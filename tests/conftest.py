import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission
from django.db import connection
from django.db.backends.postgresql.operations import DatabaseOperations as PostgresOperations
from django.test import Client
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle

from accounts.services import api_key_create, user_create, user_make_staff
from config.celery import app as celery_app
from tests.services import require_browser, require_postgres, require_redis, worker_redis_urls, xdist_worker_index

ROOT = Path(__file__).resolve().parent.parent


def _use_this_workers_redis() -> str:
    """Points this pytest process at its own Redis database (tests.services): its
    settings, its Celery app and, through the environment, the processes its tests
    start. Django has read REDIS_URL by now (pytest-django sets Django up before it
    imports this file) but has made no cache client or broker connection yet. Returns
    the spare database's URL."""
    if not settings.REDIS_URL:
        return ""
    own, spare = worker_redis_urls(settings.REDIS_URL)
    os.environ["REDIS_URL"] = own
    settings.REDIS_URL = settings.CELERY_BROKER_URL = own
    settings.CACHES["default"]["LOCATION"] = own
    celery_app.conf.broker_url = own
    return spare


SPARE_REDIS_URL = _use_this_workers_redis()


def spare_redis_url() -> str:
    """An empty Redis database that neither this process nor its Celery worker uses,
    for a test that starts a stack (web, worker, beat) of its own."""
    import redis

    redis.Redis.from_url(SPARE_REDIS_URL).flushdb()
    return SPARE_REDIS_URL


# --- the flush after each transactional test, on PostgreSQL ----------------------
#
# Django empties the database after a `transaction=True` test with one TRUNCATE of
# every table (93 here). PostgreSQL makes new files for each table, index and TOAST
# table and syncs them at commit: 0.6-0.9 s per test on an idle machine of this kind,
# 4-6 s with other runs on it (most of the slowest 80 steps of a serial run were such
# teardowns, 2026-12-07). Deleting the few rows a test left takes 0.02 s. The rows are deleted with triggers and foreign
# key checks off for that one transaction (session_replication_role, as pg_restore
# does): the ledger's append-only triggers would refuse the DELETE, and the order of
# the tables does not matter then. The tables end empty, as after TRUNCATE; sequences
# are not reset by either (a `reset_sequences` test gets Django's TRUNCATE). A role
# that may not set session_replication_role (not a superuser) gets TRUNCATE too.

_truncate = PostgresOperations.sql_flush


def _sql_flush_by_delete(self, style, tables, *, reset_sequences=False, allow_cascade=False) -> list[str]:  # noqa: ANN001
    if reset_sequences or not tables or not _may_skip_triggers(self.connection):
        return _truncate(self, style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade)
    return [
        "SET LOCAL session_replication_role = replica",
        *(f"{style.SQL_KEYWORD('DELETE FROM')} {style.SQL_FIELD(self.quote_name(table))};" for table in tables),
        "SET LOCAL session_replication_role = DEFAULT",  # should the flush run inside a longer transaction
    ]


def _may_skip_triggers(db) -> bool:  # noqa: ANN001
    with db.cursor() as cursor:
        cursor.execute("SELECT current_setting('is_superuser') = 'on'")
        return cursor.fetchone()[0]


PostgresOperations.sql_flush = _sql_flush_by_delete


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under xdist (--dist loadgroup, bin/test) the browser tests run on one process,
    one after the other: a Chromium each at once would starve the other tests of two
    cores. The tests that start the Procfile's processes (web, worker, beat) mark
    themselves `xdist_group("stack")` for the same reason, and because their timings
    (a takeover within 90 s, a database outage that must cover a completion) assume
    no other such stack competes for the cores."""
    for item in items:
        if item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.xdist_group("browser"))


@pytest.fixture(autouse=True)
def _test_defaults(settings, monkeypatch) -> Iterator[None]:  # noqa: ANN001
    """Every test starts on eager tasks run inside the request (not in the web
    process's turn pool: tests/chat/test_in_process.py opts in) and generous
    throttles; worker tests opt out. DRF reads throttle rates once, at import, so the
    class attribute is patched."""
    settings.CELERY_TASK_ALWAYS_EAGER = True
    settings.TURNS_IN_PROCESS = False
    celery_app.conf.task_always_eager = True
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", {"anon": "10000/min", "user": "100000/min"})
    yield
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(autouse=True)
def _service_markers(request) -> None:  # noqa: ANN001
    if request.node.get_closest_marker("postgres"):
        require_postgres()
    if request.node.get_closest_marker("redis") or request.node.get_closest_marker("worker"):
        require_redis()
    if request.node.get_closest_marker("browser"):
        require_browser()


# --- personas ------------------------------------------------------------------


def make_user(email: str, *, staff: bool = False, password: str | None = None, **extra):  # noqa: ANN201
    return user_create(email=email, password=password, is_staff=staff, **extra)


@pytest.fixture
def owner(db):  # noqa: ANN001, ANN201
    return make_user("owner@example.com")


@pytest.fixture
def other_user(db):  # noqa: ANN001, ANN201
    return make_user("other@example.com")


@pytest.fixture
def staff_user(db):  # noqa: ANN001, ANN201
    return make_user("staff@example.com", staff=True, password="staff-password-123")


@pytest.fixture
def admin_browser(staff_user) -> Client:  # noqa: ANN001
    """The staff console (Django's test client) logged in as a superuser."""
    staff_user.is_superuser = True
    staff_user.save(update_fields=["is_superuser"])
    client = Client()
    client.force_login(staff_user)
    return client


@pytest.fixture
def grant_staff(db):  # noqa: ANN001, ANN201
    """A staff member in the "Parley staff" group: every staff API endpoint, granting
    included (billing.grant_credits). `staff_user` is staff with no permission at all."""
    user = make_user("granter@example.com", staff=True, password="granter-password-123")
    user_make_staff(user=user)
    return user


def staff_with(*permissions: str):  # noqa: ANN201
    """A staff member holding exactly these permissions ("app_label.codename")."""
    user = make_user(f"staff-{len(permissions)}-{'-'.join(p.split('.')[1] for p in permissions)}@example.com", staff=True)
    for name in permissions:
        app_label, codename = name.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return user


@pytest.fixture
def console(db) -> Client:  # noqa: ANN001
    """The staff console (the Django admin), logged in as a superuser."""
    client = Client()
    client.force_login(make_user("boss@example.com", staff=True, is_superuser=True))
    return client


def client_for(user, **limits) -> APIClient:  # noqa: ANN001, ANN003
    """A client with a new API key of `user`: scopes chat and openai unless `limits`
    says otherwise (`scopes=all_scopes()` for a test of key management)."""
    client = APIClient()
    _, raw_key = api_key_create(user=user, name="test", **limits)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client


@pytest.fixture
def owner_client(owner) -> APIClient:  # noqa: ANN001
    return client_for(owner)


@pytest.fixture
def other_client(other_user) -> APIClient:  # noqa: ANN001
    return client_for(other_user)


@pytest.fixture
def staff_client(grant_staff) -> APIClient:  # noqa: ANN001
    """The staff API as a member of the "Parley staff" group."""
    return client_for(grant_staff)


@pytest.fixture
def grant_staff_client(grant_staff) -> APIClient:  # noqa: ANN001
    return client_for(grant_staff)


@pytest.fixture
def anon_client() -> APIClient:
    return APIClient()


# --- a real Celery worker --------------------------------------------------------


class WorkerProcess:
    """A `celery worker` subprocess consuming from Redis against the test database."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.log_path = ROOT / ".pytest_cache" / f"celery-worker-{xdist_worker_index()}.log"

    def start(self) -> None:
        self.log_path.parent.mkdir(exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115  kept open for the process's life
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool=threads", "--concurrency=4",
             "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel=INFO"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"celery worker exited early; see {self.log_path}")
            if celery_app.control.ping(timeout=0.5):
                return
        raise RuntimeError(f"celery worker did not answer a ping within 60 s; see {self.log_path}")

    def kill(self) -> None:
        """SIGKILL, like an OOM kill: unacknowledged tasks stay on the broker."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def _worker_env() -> dict[str, str]:
    db = connection.settings_dict
    env = dict(os.environ)
    env.update(
        DATABASE_URL=f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
        REDIS_URL=settings.REDIS_URL,
        CELERY_TASK_ALWAYS_EAGER="false",
        CELERY_VISIBILITY_TIMEOUT=os.environ.get("CELERY_VISIBILITY_TIMEOUT", "5"),
        SECRET_KEY=settings.SECRET_KEY,
        ALLOWED_HOSTS=",".join(settings.ALLOWED_HOSTS) or "localhost",
        DEBUG="false",
    )
    return env


@pytest.fixture(scope="session")
def celery_worker_process(django_db_setup, django_db_blocker) -> Iterator[WorkerProcess]:  # noqa: ANN001
    with django_db_blocker.unblock():
        require_postgres()  # the worker must share the test database, so it needs a server database
        require_redis()
        worker = WorkerProcess(_worker_env())
    celery_app.conf.task_always_eager = False
    # Drop messages a previous run left behind in this Redis database.
    with celery_app.connection_for_write() as conn:
        celery_app.amqp.queues.select(None)
        conn.default_channel.queue_purge(celery_app.conf.task_default_queue)
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def celery_worker(celery_worker_process, transactional_db, settings) -> Iterator[WorkerProcess]:  # noqa: ANN001
    """Use in tests whose tasks must run in a real worker. The test process publishes
    to Redis on commit; the worker reads the same (committed) test database."""
    settings.CELERY_TASK_ALWAYS_EAGER = False
    celery_app.conf.task_always_eager = False
    if celery_worker_process.proc is None or celery_worker_process.proc.poll() is not None:
        celery_worker_process.start()  # a previous test killed it
    yield celery_worker_process
    celery_app.conf.task_always_eager = True
