"""Liveness of the parts a request depends on: the database and the broker."""

from functools import lru_cache

import redis
from django.conf import settings
from django.db import connection

from config.celery import app as celery_app


def database_status() -> dict:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return {"ok": True, "vendor": connection.vendor}
    except Exception as exc:  # any driver error means "down"; the reason is reported
        return {"ok": False, "vendor": connection.vendor, "error": exc.__class__.__name__}


@lru_cache(maxsize=2)
def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)


def broker_status() -> dict:
    if settings.CELERY_TASK_ALWAYS_EAGER and not settings.REDIS_URL:
        return {"ok": True, "transport": "eager"}
    broker_url = celery_app.conf.broker_url
    if broker_url.startswith(("redis://", "rediss://")):
        # A PING on a kept connection: a probe must stay cheap under load.
        try:
            _redis(broker_url).ping()
            return {"ok": True, "transport": "redis"}
        except redis.RedisError as exc:
            return {"ok": False, "error": exc.__class__.__name__}
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2, timeout=2)
            transport = conn.transport_cls
        return {"ok": True, "transport": str(transport)}
    except Exception as exc:  # kombu raises many transport-specific errors
        return {"ok": False, "error": exc.__class__.__name__}
