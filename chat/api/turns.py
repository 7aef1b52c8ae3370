"""Turns (`sessions/{id}/turns`, `turns/{id}`): thin views over
chat.services.turns. Every lookup starts from request.user, so another user's turn
is a 404. The turn stream is chat.api.stream."""

import re
from functools import wraps

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import Http404
from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chat import selectors, streaming
from chat.api.serializers import TurnCreateSerializer, TurnDetailSerializer, TurnSerializer
from chat.api.sessions import session_or_404
from chat.models import Turn
from chat.services.turns import turn_create
from core.db import db_read, db_release
from core.exceptions import field_error
from core.pagination import NewestFirstCursorPagination

IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII, no spaces
PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*\"?(\d+(?:\.\d+)?)\"?", re.IGNORECASE)


def turn_or_404(request: Request, turn_id) -> Turn:  # noqa: ANN001
    turn = selectors.turn_get(user=request.user, turn_id=turn_id)
    if turn is None:
        raise Http404
    return turn


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not IDEMPOTENCY_KEY.match(key):
        raise field_error("Idempotency-Key", "Must be 1 to 255 printable ASCII characters without spaces.")
    return key


def _prefer_wait(request: Request) -> float:
    """Seconds from `Prefer: wait=N` (RFC 7240), capped by TURN_MAX_WAIT_SECONDS;
    a preference that cannot be read is ignored, as the RFC asks."""
    match = PREFER_WAIT.search(request.headers.get("Prefer", ""))
    if not match:
        return 0.0
    return min(float(match.group(1)), float(settings.TURN_MAX_WAIT_SECONDS))


def _turn_detail(*, user, turn_id) -> dict:  # noqa: ANN001
    return dict(TurnDetailSerializer(selectors.turn_get(user=user, turn_id=turn_id)).data)


def waits_on_the_event_loop(view):  # noqa: ANN001, ANN201
    """Wraps a DRF view whose answer may ask to wait for a turn (`response.turn_wait`
    = (turn id, user, seconds)). The view runs on a thread as usual; then its
    database connection is given back and the wait happens on the event loop, so a
    waiting request holds no thread and no connection (ASGI). The DRF view's own
    attributes (csrf_exempt, cls for the schema) are kept."""

    @wraps(view)
    async def waiting_view(request, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        response = await sync_to_async(view)(request, *args, **kwargs)
        await sync_to_async(db_release)()  # on the view's own thread: its connection goes back
        pending = getattr(response, "turn_wait", None)
        if pending is None:
            return response
        turn_id, user, wait = pending
        finished, published = await streaming.turn_wait(turn_id=turn_id, timeout=wait)
        # The worker publishes the finished turn with its `done` event: no read needed.
        response.data = published or await db_read(_turn_detail, user=user, turn_id=turn_id)
        if finished:
            response.status_code = status.HTTP_201_CREATED
            del response["Location"]
        return response

    return waiting_view


class SessionTurnsView(generics.ListAPIView):
    serializer_class = TurnSerializer
    pagination_class = NewestFirstCursorPagination
    queryset = Turn.objects.none()

    @classmethod
    def as_view(cls, **initkwargs):  # noqa: ANN003, ANN206
        return waits_on_the_event_loop(super().as_view(**initkwargs))

    def get_queryset(self):  # noqa: ANN201
        return selectors.turns_for_session(session=session_or_404(self.request, self.kwargs["session_id"]))

    @extend_schema(
        request=TurnCreateSerializer,
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                str,
                OpenApiParameter.HEADER,
                description="Repeating a key (per user) returns the same turn instead of a new one.",
            ),
            OpenApiParameter(
                "Prefer",
                str,
                OpenApiParameter.HEADER,
                description="`wait=N`: wait up to N seconds (at most TURN_MAX_WAIT_SECONDS) for the turn to finish.",
            ),
        ],  # fmt: skip
        responses={
            201: OpenApiResponse(TurnDetailSerializer, description="The turn finished within the request."),
            202: OpenApiResponse(
                TurnDetailSerializer, description="Accepted and still running; `Location` is GET turns/{id}."
            ),
        },
    )
    def post(self, request: Request, session_id: int) -> Response:
        session = session_or_404(request, session_id)
        key = _idempotency_key(request)
        serializer = TurnCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        turn, created = turn_create(
            user=request.user, session=session, idempotency_key=key, **serializer.validated_data
        )
        wait = _prefer_wait(request)
        if wait and selectors.turn_status(turn_id=turn.pk) not in selectors.FINISHED:
            # The body is the turn as it is after the wait (waits_on_the_event_loop).
            response = Response(status=status.HTTP_202_ACCEPTED)
            response.turn_wait = (turn.pk, request.user, wait)
        else:  # no wait asked, or already finished (an eager run, a replayed key)
            current = selectors.turn_get(user=request.user, turn_id=turn.pk)
            finished = current.status in selectors.FINISHED
            response = Response(
                TurnDetailSerializer(current).data,
                status=status.HTTP_201_CREATED if finished else status.HTTP_202_ACCEPTED,
            )
        if response.status_code == status.HTTP_202_ACCEPTED:
            response["Location"] = reverse("turn", kwargs={"turn_id": turn.pk})
        if wait:
            response["Preference-Applied"] = f"wait={wait:g}"
        if not created:
            response["Idempotent-Replayed"] = "true"
        return response


class TurnDetailView(APIView):
    @extend_schema(responses={200: TurnDetailSerializer})
    def get(self, request: Request, turn_id) -> Response:  # noqa: ANN001
        return Response(TurnDetailSerializer(turn_or_404(request, turn_id)).data)
