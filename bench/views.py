"""Baseline endpoint for the benchmarks: the same stack as the real API (DRF, API key
auth, throttling, the database) doing one INSERT and nothing else. Mounted only when
BENCH_ENDPOINTS is on."""

from django.db import connection
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

TABLE_DDL = (
    "CREATE TABLE IF NOT EXISTS bench_insert (id BIGSERIAL PRIMARY KEY, user_id BIGINT NOT NULL, body TEXT NOT NULL)"
)
TABLE_DDL_SQLITE = "CREATE TABLE IF NOT EXISTS bench_insert (id INTEGER PRIMARY KEY AUTOINCREMENT, user_id BIGINT NOT NULL, body TEXT NOT NULL)"


def ensure_table() -> None:
    with connection.cursor() as cursor:
        cursor.execute(TABLE_DDL if connection.vendor == "postgresql" else TABLE_DDL_SQLITE)


class BareInsertView(APIView):
    @extend_schema(exclude=True)
    def post(self, request: Request) -> Response:
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO bench_insert (user_id, body) VALUES (%s, %s)", [request.user.pk, str(request.data)[:1000]]
            )
        return Response({"ok": True}, status=status.HTTP_201_CREATED)
