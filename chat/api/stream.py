"""GET turns/{id}/stream: the server-sent events a client reads, fed by the turn's
pub/sub channel (chat.streaming) or, without Redis, replayed from the database."""

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.views import APIView

from chat import selectors, streaming
from chat.api.serializers import TurnDetailSerializer
from chat.api.turns import turn_or_404
from chat.models import Message, Turn
from chat.selectors import FINISHED, turn_is_finished

# SSE comment lines keep proxies from closing an idle stream.
HEARTBEAT_SECONDS = 15.0
# The longest a stream stays open waiting for a turn to finish.
STREAM_MAX_SECONDS = 600.0


def sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def _replay(turn: Turn, final: Callable[[Turn], dict]) -> Iterator[str]:
    for message in Message.objects.filter(turn=turn, role=Message.Role.ASSISTANT).order_by("id"):
        if message.content:
            yield sse(
                "delta", {"text": message.content, "message_id": message.id, "participant": message.participant_id}
            )
    yield sse("done", final(turn))


def turn_events(*, turn: Turn, final: Callable[[Turn], dict], max_seconds: float = STREAM_MAX_SECONDS) -> Iterator[str]:
    """The SSE body for GET turns/{id}/stream: `delta` events while the reply is
    produced, then one `done` event carrying the turn (`final(turn)`, with its
    status). A finished turn, or any turn without Redis, is replayed from the
    database once it has finished."""
    deadline = time.monotonic() + max_seconds
    if turn.status in FINISHED or not streaming.enabled():
        if turn.status not in FINISHED:
            streaming.poll(turn.pk, deadline)
            turn.refresh_from_db()
        yield from _replay(turn, final)
        return
    with streaming.subscription(turn.pk) as events:
        turn.refresh_from_db()
        if turn.status in FINISHED:
            yield from _replay(turn, final)
            return
        yield sse("status", {"status": turn.status})
        last_sent = next_check = time.monotonic()
        while (now := time.monotonic()) < deadline:
            if now >= next_check:
                if turn_is_finished(turn_id=turn.pk):
                    break
                next_check = now + streaming.RECHECK_SECONDS
            event = events.get(timeout=min(deadline, next_check) - now)
            if event is None:
                if time.monotonic() - last_sent >= HEARTBEAT_SECONDS:
                    last_sent = time.monotonic()
                    yield ": keep-alive\n\n"
                continue
            name, data = event
            if name == "done":
                if data.get("turn"):
                    yield sse("done", data["turn"])
                    return
                break
            if name in ("delta", "reset", "status"):
                last_sent = time.monotonic()
                yield sse(name, data)
    turn.refresh_from_db()
    yield sse("done", final(turn))


class EventStreamRenderer(BaseRenderer):
    """Lets a client ask for `text/event-stream`; errors still go out as JSON text."""

    media_type = "text/event-stream"
    format = "sse"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None) -> bytes:  # noqa: ANN001
        return JSONRenderer().render(data)


class TurnStreamView(APIView):
    renderer_classes = [JSONRenderer, EventStreamRenderer]

    @extend_schema(
        responses={
            (200, "text/event-stream"): OpenApiResponse(
                OpenApiTypes.STR,
                description="Server-sent events: `status`, `delta` ({text}) while the reply is produced, `reset` "
                "when a redelivered run restarts it, and a final `done` carrying the turn with its status.",
            )
        }
    )
    def get(self, request: Request, turn_id) -> StreamingHttpResponse:  # noqa: ANN001
        turn = turn_or_404(request, turn_id)

        def final(current: Turn) -> dict:
            return dict(TurnDetailSerializer(selectors.turn_get(user=request.user, turn_id=current.pk)).data)

        response = StreamingHttpResponse(
            turn_events(turn=turn, final=final), content_type="text/event-stream; charset=utf-8"
        )
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # nginx: pass events through as they come
        return response
