"""Baseline endpoints for the benchmarks: the same stack as the real API (DRF, API key
auth, throttling, the database). Mounted only when BENCH_ENDPOINTS is on.

- BareInsertView: one INSERT and nothing else.
- RoundTripView: the same INSERT, then a no-op Celery task that answers on Redis
  pub/sub while the request waits: the floor of any work handed to a worker the way
  a turn is (task sent on commit, completion heard through pub/sub)."""

import time
import uuid
from functools import partial

from asgiref.sync import sync_to_async
from django.db import connection
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from bench.tasks import echo
from chat import streaming

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
    """Waits the way a turn's `Prefer: wait` does (core.asgi): the INSERT on a pool
    thread, then, on the event loop, subscribed on the process's one pub/sub
    connection before the task is sent (nothing here to re-check in the database),
    the wait holding no thread and no connection."""

    @extend_schema(exclude=True)
    def post(self, request: Request) -> Response:
        _insert(request)
        response = Response({"ok": True}, status=status.HTTP_201_CREATED)
        response.finish_on_event_loop = partial(_echo_round_trip, response)
        return response


async def _echo_round_trip(response: Response) -> Response:
    token = f"bench-{uuid.uuid4().hex}"
    async with streaming.hub.listen(token) as events:
        await sync_to_async(echo.apply_async, thread_sensitive=False)(args=[token])
        deadline = time.monotonic() + 30
        while (left := deadline - time.monotonic()) > 0:
            if (event := await streaming.next_event(events, left)) is not None and event[0] == "done":
                return response
    response.status_code, response.data = status.HTTP_504_GATEWAY_TIMEOUT, {"ok": False}
    response.content = response.rendered_content
    return response
