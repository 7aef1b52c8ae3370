"""Baseline endpoints for the benchmarks: the same stack as the real API (DRF, API key
auth, throttling, the database). Mounted only when BENCH_ENDPOINTS is on.

- BareInsertView: one INSERT and nothing else.
- RoundTripView: the same INSERT, then a no-op Celery task that answers on Redis
  pub/sub while the request waits: the floor of any work handed to a worker the way
  a turn is (task sent on commit, completion heard through pub/sub)."""

import time
import uuid
from functools import wraps

from asgiref.sync import sync_to_async
from django.db import connection
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from bench.tasks import echo
from chat import streaming
from core.db import db_release

TABLE_DDL = (
    "CREATE TABLE IF NOT EXISTS bench_insert (id BIGSERIAL PRIMARY KEY, user_id BIGINT NOT NULL, body TEXT NOT NULL)"
)
TABLE_DDL_SQLITE = "CREATE TABLE IF NOT EXISTS bench_insert (id INTEGER PRIMARY KEY AUTOINCREMENT, user_id BIGINT NOT NULL, body TEXT NOT NULL)"


def ensure_table() -> None:
    with connection.cursor() as cursor:
        cursor.execute(TABLE_DDL if connection.vendor == "postgresql" else TABLE_DDL_SQLITE)


def _insert(request: Request) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO bench_insert (user_id, body) VALUES (%s, %s) RETURNING id",
            [request.user.pk, str(request.data)[:1000]],
        )
        return cursor.fetchone()[0]


class BareInsertView(APIView):
    @extend_schema(exclude=True)
    def post(self, request: Request) -> Response:
        _insert(request)
        return Response({"ok": True}, status=status.HTTP_201_CREATED)


class RoundTripView(APIView):
    """Waits the way a turn's `Prefer: wait` does: subscribed on the process's one
    pub/sub connection before the task is sent, the wait on the event loop, the
    request's thread and database connection given back meanwhile."""

    @classmethod
    def as_view(cls, **initkwargs):  # noqa: ANN003, ANN206
        view = super().as_view(**initkwargs)

        @wraps(view)
        async def floor(request, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            request.bench_token = token = f"bench-{uuid.uuid4().hex}"
            async with streaming.hub.listen(token) as events:  # subscribed before the task can answer
                response = await sync_to_async(view)(request, *args, **kwargs)
                await sync_to_async(db_release)()
                if response.status_code != status.HTTP_201_CREATED:
                    return response
                deadline = time.monotonic() + 30
                while (left := deadline - time.monotonic()) > 0:
                    if (event := await streaming.next_event(events, left)) is not None and event[0] == "done":
                        return response
            response.status_code, response.data = status.HTTP_504_GATEWAY_TIMEOUT, {"ok": False}
            return response

        return floor

    @extend_schema(exclude=True)
    def post(self, request: Request) -> Response:
        _insert(request)
        echo.apply_async(args=[request.bench_token])
        return Response({"ok": True}, status=status.HTTP_201_CREATED)
