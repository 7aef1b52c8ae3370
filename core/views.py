from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.defaults import page_not_found
from django.views.defaults import server_error as default_server_error
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.stripe.client import stripe_enabled
from core.exceptions import error_body
from core.health import broker_status, database_status


def home(request: HttpRequest) -> HttpResponse:
    """`/`: what this server is and where to go (the admin's "View site" link lands
    here). A page rather than a redirect to the API docs, so staff following "View
    site" and someone trying the bare host both see the admin and health links too."""
    return render(request, "core/home.html", {"stripe_enabled": stripe_enabled()})


class HealthView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes: list = []

    @extend_schema(
        responses={
            (200, "application/json"): inline_serializer(
                "Health",
                {
                    "status": serializers.CharField(),
                    "database": serializers.DictField(),
                    "broker": serializers.DictField(),
                },
            ),
            (503, "application/json"): inline_serializer(
                "HealthDown",
                {
                    "status": serializers.CharField(),
                    "database": serializers.DictField(),
                    "broker": serializers.DictField(),
                },
            ),
        }
    )
    def get(self, request: Request) -> Response:
        database, broker = database_status(), broker_status()
        down = [name for name, part in (("database", database), ("broker", broker)) if not part["ok"]]
        body = {"status": "down: " + ", ".join(down) if down else "ok", "database": database, "broker": broker}
        return Response(body, status=status.HTTP_503_SERVICE_UNAVAILABLE if down else status.HTTP_200_OK)


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """URLs that match no route: the shared JSON error body under /api/, Django's page elsewhere."""
    if request.path.startswith("/api/"):
        return JsonResponse(error_body("not_found", "Not found."), status=404)
    return page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if request.path.startswith("/api/"):
        return JsonResponse(error_body("server_error", "Internal server error."), status=500)
    return default_server_error(request)
