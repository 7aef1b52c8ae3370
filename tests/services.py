"""Which real services this test run has, and what to do when one is missing.

On a laptop a test that needs PostgreSQL, Redis, a Celery worker or headless Chromium
is skipped when the service is not there. `PARLEY_REQUIRE_SERVICES=postgres,redis,worker,browser`
(set by .ci/run) turns that skip into a failure, so CI can never pass by skipping.
"""

import os
from functools import cache
from pathlib import Path

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
