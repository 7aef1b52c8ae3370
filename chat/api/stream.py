"""GET turns/{id}/stream: the server-sent events a client reads, fed by the turn's
pub/sub channel (chat.streaming: Redis, or this process's hub when turns run here) or,
with neither, replayed from the database."""

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any
from uuid import UUID

from django.conf import settings
from django.http import Http404, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.views import APIView

from accounts.attribution import request_membership_id
from chat import selectors, streaming
from chat.api.turns import turn_detail
from chat.metrics import OPEN_STREAMS
from chat.models import Message, Turn
from chat.selectors import FINISHED, turn_status
from core.db import db_read, db_release
from core.exceptions import TooManyRequests

# SSE comment lines keep proxies from closing an idle stream.
HEARTBEAT_SECONDS = 15.0


def sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def _replay_events(*, turn_id: UUID | str) -> list[tuple[str, dict]]:
    """A finished turn's events as the live stream sent them: its status, then its
    replies (with the speaker in a round table), before `done`."""
    messages = Message.objects.filter(turn_id=turn_id, role=Message.Role.ASSISTANT).select_related("participant")
    events = [("status", {"status": turn_status(turn_id=turn_id)})]
    for message in messages.order_by("id"):
        if message.content:
            who = {"participant": message.participant_id}
            if message.participant is not None:
                who["participant_name"] = message.participant.name
            events.append(("delta", {"text": message.content, "message_id": message.id, **who}))
    return events


async def _replay(turn_id: UUID | str, final: Callable[..., dict]) -> AsyncIterator[tuple[str, dict]]:
    for event in await db_read(_replay_events, turn_id=turn_id):
        yield event
    yield "done", await db_read(final, turn_id=turn_id)


# What turn_event_items yields when HEARTBEAT_SECONDS passed without an event.
KEEP_ALIVE = "keep-alive"


async def turn_event_items(
    *, turn: Turn, final: Callable[..., dict], ready: Callable[[], Awaitable[Any]] | None = None
) -> AsyncIterator[tuple[str, dict]]:
    """A turn's events as (name, data): `status`, then `delta` (and `reset`) while the
    reply is produced, then one `done` carrying the turn (`final(turn_id=...)`, with
    its status); KEEP_ALIVE after HEARTBEAT_SECONDS of silence. A finished turn, or any
    turn when events are not live (eager turns, no Redis), is replayed from the
    database once finished. It runs on the event loop and holds no database
    connection between its reads; closing it unsubscribes at once. (GET
    turns/{id}/stream renders these as server-sent events; the OpenAI-compatible
    endpoint, openai_api, as completion chunks.) `ready` hands a queued turn to the
    worker once the reader listens: no event is lost, and the turn's status needs no
    read."""
    deadline = time.monotonic() + streaming.STREAM_MAX_SECONDS
    if turn.status in FINISHED or not streaming.live():
        if ready is not None:
            await ready()
        while not await streaming.finished(turn.pk) and time.monotonic() < deadline:
            await asyncio.sleep(streaming.POLL_SECONDS)
        async for item in _replay(turn.pk, final):
            yield item
        return
    async with streaming.hub.listen(turn.pk, pieces=True) as events:
        if ready is not None:  # the turn is handed over now: it is queued, and the rest is heard
            await ready()
            status = Turn.Status.QUEUED
        else:
            status = await db_read(turn_status, turn_id=turn.pk)
        if status in FINISHED:
            async for item in _replay(turn.pk, final):
                yield item
            return
        yield "status", {"status": status}
        last_sent = time.monotonic()
        next_check = last_sent + streaming.RECHECK_SECONDS
        while (now := time.monotonic()) < deadline:
            if now >= next_check:
                if await streaming.finished(turn.pk):
                    break
                next_check = time.monotonic() + streaming.RECHECK_SECONDS
            wake = min(deadline, next_check, last_sent + HEARTBEAT_SECONDS)
            event = await streaming.next_event(events, wake - time.monotonic())
            if event is None:
                if time.monotonic() - last_sent >= HEARTBEAT_SECONDS:
                    last_sent = time.monotonic()
                    yield KEEP_ALIVE, {}
                continue
            name, data = event
            if event == streaming.RECHECK:
                next_check = 0.0
            elif name == "done":
                if data.get("turn"):
                    yield "done", data["turn"]
                    return
                break
            elif name in ("delta", "reset", "status"):
                last_sent = time.monotonic()
                yield name, data
    yield "done", await db_read(final, turn_id=turn.pk)


async def turn_events(
    *, turn: Turn, final: Callable[..., dict], on_close: Callable[[], Any] | None = None
) -> AsyncIterator[str]:
    """The SSE body of GET turns/{id}/stream (turn_event_items as server-sent events).
    When the client goes away the body is closed, which unsubscribes at once, and
    `on_close` runs."""
    OPEN_STREAMS.inc()
    try:
        async with contextlib.aclosing(turn_event_items(turn=turn, final=final)) as items:
            async for name, data in items:
                yield ": keep-alive\n\n" if name == KEEP_ALIVE else sse(name, data)
                if name == "done":
                    return
    finally:
        OPEN_STREAMS.dec()
        if on_close is not None:
            await db_read(on_close)


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
        turn = selectors.turn_brief(user=request.user, turn_id=turn_id, membership_id=request_membership_id(request))
        if turn is None:
            raise Http404
        user = request.user
        owner = streaming.stream_owner(request)
        slot = streaming.stream_slot_take(owner=owner)
        if slot is None:
            raise TooManyRequests(
                f"At most {settings.MAX_STREAMS_PER_USER} open streams per user; close one first.", retry_after=5
            )

        final = partial(turn_detail, user=user)

        def close() -> None:
            streaming.stream_slot_free(owner=owner, token=slot)

        db_release()  # the stream holds no database connection while it waits
        response = StreamingHttpResponse(
            turn_events(turn=turn, final=final, on_close=close), content_type="text/event-stream; charset=utf-8"
        )
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # nginx: pass events through as they come
        response.on_abandoned = close  # the client left before the body began (core.asgi)
        return response
