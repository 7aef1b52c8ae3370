"""The answer to a chat-completion request once its turn is accepted: the
`chat.completion` when the turn has finished, or its chunks as it is produced.

Waiting holds no thread and no database connection on the ASGI server (core.asgi):
the plain answer waits with `finish_on_event_loop`, the stream is an async body fed
by the turn's events (chat.api.stream.turn_event_items over chat.streaming's hub).
Under WSGI (runserver, the test client) the request's thread waits instead."""

import contextlib
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

from asgiref.sync import async_to_sync
from django.http import HttpResponse, JsonResponse

from chat import streaming
from chat.api.stream import KEEP_ALIVE, turn_event_items
from chat.api.turns import turn_detail, turn_wait_handing_over
from chat.metrics import OPEN_STREAMS
from chat.models import Turn
from chat.services.turns import turn_cancel, turn_hand_over, turn_hand_over_robustly
from core.db import db_read
from core.exceptions import StateConflict
from openai_api import shapes
from openai_api.errors import OpenAIError, error_body

TURN_HEADER = "X-Parley-Turn"
CHARGED_HEADER = "X-Parley-Credits-Charged"
# The longest a plain answer waits for its turn (a stream waits as long).
MAX_WAIT_SECONDS = streaming.STREAM_MAX_SECONDS


def completion_response(turn: dict | None, *, turn_id: Any) -> JsonResponse:
    """The plain answer for the turn as GET turns/{id} shows it: 200 with the
    completion; 502 when the provider failed, 504 when it has not finished in time.
    A failed turn is not worth the SDKs' automatic retries (`x-should-retry: false`):
    each would be a new turn."""
    if turn is not None and turn["status"] == Turn.Status.COMPLETED:
        response = HttpResponse(shapes.dumps(shapes.completion(turn), turn=turn), content_type="application/json")
    elif turn is not None and turn["status"] in ("failed", "cancelled"):
        response = JsonResponse(shapes.failure(turn), status=502)
        response["x-should-retry"] = "false"
    else:
        message = (
            f"The model did not finish within {MAX_WAIT_SECONDS:g} s; the turn goes on (GET /api/v1/turns/{turn_id})."
        )
        response = JsonResponse(error_body(message, type="timeout", code="timeout"), status=504)
        response["x-should-retry"] = "false"
    response[TURN_HEADER] = str(turn_id)
    if turn is not None and turn.get("credits_charged") is not None:
        response[CHARGED_HEADER] = turn["credits_charged"]
    return response


def _finished_turn(*, user, turn_id: Any, published: dict | None) -> dict | None:  # noqa: ANN001
    turn = published or turn_detail(user=user, turn_id=turn_id)
    return turn if turn["status"] not in ("queued", "running") else None


async def answer_after_wait(*, user, turn_id: Any) -> HttpResponse:  # noqa: ANN001
    """On the event loop: hands the turn to the worker once it listens, then waits
    for its `done` (or polls without Redis)."""
    published = await turn_wait_handing_over(turn_id=turn_id, timeout=MAX_WAIT_SECONDS)
    turn = published or await db_read(turn_detail, user=user, turn_id=turn_id)
    return completion_response(turn if turn["status"] not in ("queued", "running") else None, turn_id=turn_id)


def answer_now_or_later(*, request, turn: Turn) -> HttpResponse:  # noqa: ANN001
    """The plain answer. Under ASGI (`request.waits_on_event_loop`) the turn was
    accepted without its hand-over, which the wait on the event loop makes. Else it
    was handed over on commit: at once when it has finished (eager tasks), or after a
    wait on this thread (WSGI)."""
    user = request.user
    if getattr(request, "waits_on_event_loop", False):
        response = HttpResponse(status=202)
        response.finish_on_event_loop = lambda: answer_after_wait(user=user, turn_id=turn.pk)
        response.on_abandoned = partial(turn_hand_over_robustly, turn_id=str(turn.pk))  # left before the wait
        return response
    detail = turn_detail(user=user, turn_id=turn.pk)
    if detail["status"] not in ("queued", "running"):
        return completion_response(detail, turn_id=turn.pk)
    _, published = async_to_sync(streaming.turn_wait)(turn_id=turn.pk, timeout=MAX_WAIT_SECONDS)
    return completion_response(_finished_turn(user=user, turn_id=turn.pk, published=published), turn_id=turn.pk)


async def completion_chunks(
    *,
    turn: Turn,
    user,
    include_usage: bool,
    on_close: Callable[[], Any],  # noqa: ANN001
) -> AsyncIterator[str]:
    """The stream's body: `chat.completion.chunk` events as the turn's reply is
    produced (the turn is handed to the worker once this listens, so no piece is
    missed), then its tool calls, finish reason and (when asked) usage, and
    `data: [DONE]`; an error event when the turn failed. A `reset` (a redelivered run
    restarted the reply) cannot take back text already sent: the rest of the final
    reply is sent when it continues what was sent. Replayed deltas (a turn that
    finished before the stream opened, or no Redis) are skipped: the final turn
    carries the whole reply, which `finish` sends. A client that goes away before the
    end stops the turn, as closing an OpenAI stream stops the generation: the worker
    keeps and charges what was said (chat.services.turns.turn_cancel)."""
    writer = shapes.ChunkWriter(
        turn_id=turn.pk, model=turn.model_alias, created=int(turn.created_at.timestamp()), include_usage=include_usage
    )
    finished = False
    OPEN_STREAMS.inc()
    try:
        yield writer.start()
        final = lambda turn_id: turn_detail(user=user, turn_id=turn_id)  # noqa: E731
        ready = partial(db_read, turn_hand_over, turn_id=str(turn.pk))
        async with contextlib.aclosing(turn_event_items(turn=turn, final=final, ready=ready)) as items:
            async for name, data in items:
                if name == KEEP_ALIVE:
                    yield ": keep-alive\n\n"
                elif name == "delta" and "message_id" not in data:
                    line = writer.text(data.get("text") or "")
                    if line:
                        yield line
                elif name == "done":
                    finished = True
                    for line in writer.finish(data):
                        yield line
                    return
    finally:
        OPEN_STREAMS.dec()
        if not finished:
            await db_read(_stop, turn=turn)
        await db_read(on_close)


def _stop(turn: Turn) -> None:
    with contextlib.suppress(StateConflict):  # it finished meanwhile
        turn_cancel(turn=turn)


def stream_abandoned(*, turn: Turn, on_close: Callable[[], Any]) -> None:
    """The client left before its stream began: the turn, never handed over, stops
    (as completion_chunks stops it when its client goes away), and its slot is free."""
    _stop(turn)
    on_close()


def stream_refused(limit: int) -> OpenAIError:
    return OpenAIError(
        f"At most {limit} open streams per user; close one first.", status_code=429, type="requests",
        code="rate_limit_exceeded", headers={"Retry-After": "5"},
    )  # fmt: skip
