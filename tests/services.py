"""Which real services this test run has, and what to do when one is missing.

On a laptop a test that needs PostgreSQL, Redis, a Celery worker or headless Chromium
is skipped when the service is not there. `PARLEY_REQUIRE_SERVICES=postgres,redis,worker,browser`
(set by .ci/run) turns that skip into a failure, so CI can never pass by skipping.

Under pytest-xdist (bin/test runs the suite on several processes) each process has a
database of its own (pytest-django suffixes the test database's name with the worker
id: test_parley_gw0, ...) and two Redis databases of its own (`worker_redis_urls`):
one for its broker, cache and Celery worker, and a spare one for the tests that start
a stack of their own beside that worker (`tests.conftest.spare_redis_url`).
"""

import os
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.conf import settings
from django.db import connection


def required_services() -> set[str]:
    return {name.strip() for name in os.environ.get("PARLEY_REQUIRE_SERVICES", "").split(",") if name.strip()}


def missing(service: str, why: str) -> None:
    if service in required_services():
        pytest.fail(f"{service} is required in this run (PARLEY_REQUIRE_SERVICES) but {why}", pytrace=False)
    pytest.skip(f"{service} not available: {why}")


@cache
def redis_available() -> bool:
    if not settings.REDIS_URL:
        return False
    import redis

    try:
        return bool(redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def require_postgres() -> None:
    if connection.vendor != "postgresql":
        missing("postgres", f"the database is {connection.vendor} (set DATABASE_URL=postgres://...)")


def require_redis() -> None:
    if not redis_available():
        missing("redis", "REDIS_URL is unset or Redis does not answer")


# Debian's packages (apt-get install chromium chromium-driver); the browser tests use
# these paths so selenium never downloads a browser or driver.
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def require_browser() -> None:
    absent = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if absent:
        missing("browser", f"{' and '.join(absent)} not found (apt-get install chromium chromium-driver)")


# --- a Redis database per xdist worker ---------------------------------------------

# Redis's default `databases`.
REDIS_DATABASES = 16


def xdist_worker_index() -> int:
    """0, 1, ... for pytest-xdist's gw0, gw1, ...; 0 in a run without xdist."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(name.removeprefix("gw")) if name.startswith("gw") else 0


def redis_db_numbers(base: int) -> list[int]:
    """The Redis databases this run may use, in the order they are handed out: from
    REDIS_URL's own number upward, wrapping after 15; or, with
    PARLEY_REDIS_DB_RANGE=8-14, only those (from REDIS_URL's number if it is one of
    them), for a machine whose other databases belong to someone else."""
    bounds = os.environ.get("PARLEY_REDIS_DB_RANGE", "")
    if not bounds:
        return [(base + step) % REDIS_DATABASES for step in range(REDIS_DATABASES)]
    first, _, last = bounds.partition("-")
    allowed = list(range(int(first), int(last or first) + 1))
    start = allowed.index(base) if base in allowed else 0
    return allowed[start:] + allowed[:start]


def worker_redis_urls(url: str) -> tuple[str, str]:
    """This xdist worker's two Redis databases, derived from the run's REDIS_URL: its
    own (broker, cache and Celery worker) and a spare one (for a test that starts a
    stack of its own). With N workers, worker i has the i-th and the (N+i)-th number of
    `redis_db_numbers`: one worker, REDIS_URL's number and the next."""
    parts = urlsplit(url)
    numbers = redis_db_numbers(int(parts.path.lstrip("/") or 0))
    workers, index = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1), xdist_worker_index()
    if 2 * workers > len(numbers):
        raise RuntimeError(
            f"{workers} xdist workers need {2 * workers} Redis databases but have {numbers}: "
            "run fewer workers (-n) or widen PARLEY_REDIS_DB_RANGE"
        )
    own, spare = numbers[index], numbers[workers + index]
    return urlunsplit(parts._replace(path=f"/{own}")), urlunsplit(parts._replace(path=f"/{spare}"))
