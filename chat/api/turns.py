"""Turns (`sessions/{id}/turns`, `turns/{id}`): thin views over
chat.services.turns. Every lookup starts from request.user, so another user's turn
is a 404. The turn stream is chat.api.stream."""

import asyncio
import re
from functools import partial

from asgiref.sync import async_to_sync
from django.conf import settings
from django.http import Http404
from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.attribution import request_attribution, request_membership_id
from chat import selectors, streaming
from chat.api.serializers import TurnCreateSerializer, TurnDetailSerializer, TurnSerializer, turn_detail_payload
from chat.api.sessions import session_or_404
from chat.models import Turn
from chat.services.turns import turn_cancel, turn_create, turn_hand_over_robustly
from core.db import db_call, db_read
from core.exceptions import field_error
from core.pagination import NewestFirstCursorPagination

IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII, no spaces
PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*\"?(\d+(?:\.\d+)?)\"?", re.IGNORECASE)


def turn_or_404(request: Request, turn_id) -> Turn:  # noqa: ANN001
    turn = selectors.turn_get(user=request.user, turn_id=turn_id, membership_id=request_membership_id(request))
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


def turn_detail(*, user, turn_id) -> dict:  # noqa: ANN001
    """GET turns/{id}'s body, read."""
    return dict(TurnDetailSerializer(selectors.turn_get(user=user, turn_id=turn_id)).data)


def _turn_answer(response: Response, *, user, turn_id, published: dict | None = None) -> Response:  # noqa: ANN001
    """The turn as GET turns/{id} shows it (as the worker published it with `done`,
    or read): 201 when it has finished, else 202 with Location."""
    response.data = published or turn_detail(user=user, turn_id=turn_id)
    finished = response.data["status"] in selectors.FINISHED
    response.status_code = status.HTTP_201_CREATED if finished else status.HTTP_202_ACCEPTED
    if not finished:
        response["Location"] = reverse("turn", kwargs={"turn_id": turn_id})
    return response


async def turn_wait_handing_over(*, turn_id, timeout: float) -> dict | None:  # noqa: ANN001
    """streaming.turn_wait for a turn accepted without its hand-over: it is given to
    the worker once the wait listens, so its `done` cannot be missed and nothing is
    read first. A client that leaves before that does not stop the turn: it is handed
    over all the same (and once). Returns the turn as published with `done`, if it
    came so. (A client that leaves while the view still runs: the view's
    `on_abandoned`, core.asgi.)"""
    loop, sent = asyncio.get_running_loop(), None
    hand_over_now = partial(db_call, turn_hand_over_robustly, turn_id=str(turn_id))

    async def hand_over() -> None:
        nonlocal sent
        sent = loop.run_in_executor(None, hand_over_now)
        await asyncio.shield(sent)  # a client leaving now does not stop the send

    try:
        return (await streaming.turn_wait(turn_id=turn_id, timeout=timeout, hand_over=hand_over))[1]
    finally:
        if sent is None:  # not awaited: the executor's thread sends it after this request is gone
            loop.run_in_executor(None, hand_over_now)


async def _answer_after_wait(response: Response, *, user, turn_id, wait: float, hand_over: bool) -> Response:  # noqa: ANN001
    """`Prefer: wait` on the event loop (core.asgi): no thread, no connection held.
    With `hand_over`, the turn is given to the worker once the wait listens."""
    if hand_over:
        published = await turn_wait_handing_over(turn_id=turn_id, timeout=wait)
    else:
        _, published = await streaming.turn_wait(turn_id=turn_id, timeout=wait)
    if published is None:
        await db_read(_turn_answer, response=response, user=user, turn_id=turn_id)
    else:
        _turn_answer(response, user=user, turn_id=turn_id, published=published)
    response.content = response.rendered_content  # rendered in the thread before the wait
    return response


class SessionTurnsView(generics.ListAPIView):
    serializer_class = TurnSerializer
    pagination_class = NewestFirstCursorPagination
    queryset = Turn.objects.none()

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
        wait = _prefer_wait(request)
        waits_on_event_loop = bool(wait) and getattr(request, "waits_on_event_loop", False)
        data = dict(serializer.validated_data)
        attribution = request_attribution(
            request, end_user=data.pop("end_user", ""), purpose=data.pop("purpose", ""),
            end_user_field="end_user", purpose_field="purpose",
        )  # fmt: skip
        turn, created = turn_create(
            user=request.user, session=session, idempotency_key=key, api_key=request.auth, attribution=attribution,
            hand_over=not waits_on_event_loop, **data,
        )  # fmt: skip
        response = Response(status=status.HTTP_202_ACCEPTED)
        if waits_on_event_loop:
            # The wait hands a new turn over once it listens: nothing to read here.
            response.finish_on_event_loop = partial(
                _answer_after_wait, response, user=request.user, turn_id=turn.pk, wait=wait, hand_over=created
            )
            if created:  # the client left before the wait began
                response.on_abandoned = partial(turn_hand_over_robustly, turn_id=str(turn.pk))
        else:
            self._answer_now(response, turn=turn, created=created, wait=wait)
        if wait:
            response["Preference-Applied"] = f"wait={wait:g}"
        if not created:
            response["Idempotent-Replayed"] = "true"
        return response

    def _answer_now(self, response: Response, *, turn: Turn, created: bool, wait: float) -> None:
        """The answer without the event loop: at once, or (WSGI) after this thread waited."""
        current = selectors.turn_status(turn_id=turn.pk)
        if created and current == Turn.Status.QUEUED and not wait:
            # Just accepted: the turn and its question are all there is (no calls yet).
            turn.status = current
            accepted = turn_detail_payload(turn=turn, messages=turn.accepted_messages, llm_calls=[], tool_calls=[])
            _turn_answer(response, user=self.request.user, turn_id=turn.pk, published=accepted)
        elif not wait or current in selectors.FINISHED:
            _turn_answer(response, user=self.request.user, turn_id=turn.pk)
        else:  # WSGI (runserver, the test client): this thread waits
            _, published = async_to_sync(streaming.turn_wait)(turn_id=turn.pk, timeout=wait)
            _turn_answer(response, user=self.request.user, turn_id=turn.pk, published=published)


class TurnDetailView(APIView):
    @extend_schema(responses={200: TurnDetailSerializer})
    def get(self, request: Request, turn_id) -> Response:  # noqa: ANN001
        return Response(TurnDetailSerializer(turn_or_404(request, turn_id)).data)


class TurnCancelView(APIView):
    @extend_schema(
        request=None,
        responses={
            200: OpenApiResponse(TurnDetailSerializer, description="Cancelled: the turn had not started."),
            202: OpenApiResponse(
                TurnDetailSerializer,
                description="Running: it stops at its next streamed piece; what was said is kept and charged, the "
                "rest of the hold released, and the stream ends with `done` (status `cancelled`).",
            ),
        },
    )
    def post(self, request: Request, turn_id) -> Response:  # noqa: ANN001
        turn = turn_cancel(turn=turn_or_404(request, turn_id))
        finished = turn.status in selectors.FINISHED
        return Response(
            turn_detail(user=request.user, turn_id=turn.pk),
            status=status.HTTP_200_OK if finished else status.HTTP_202_ACCEPTED,
        )
