"""POST /v1/embeddings once its turn is accepted (chat.services.embeddings): the
call, its charge, and OpenAI's `list` of embeddings.

No web thread waits on the model. Under ASGI (`request.waits_on_event_loop`) the view
returns at once with `finish_on_event_loop`: the handler awaits the call on the event
loop (the provider's async client, chat.engine.embedding.embedding_call_async), and
its database writes go to a thread of the loop's executor (core.db.db_read), the
connection given back after each. The call and its completion run as ONE task the
request only waits for (`asyncio.shield`): a client that leaves mid-call cancels its
wait, not the task, so a provider that answered is charged exactly once all the same.
A client that leaves before the wait began (the view was still running) gets its
turn cancelled and its hold released (`on_abandoned`). Under WSGI (runserver, the
test client) the request's thread makes the call."""

import asyncio
import logging
from functools import partial

from django.http import HttpResponse, JsonResponse

from chat import leases
from chat.engine.embedding import EmbeddingCount, EmbeddingRequest, embedding_call, embedding_call_async
from chat.llm.base import EmbeddingResult
from chat.models import LLMCall, Turn
from chat.services.embeddings import embedding_outcome, embedding_turn_abandon, embedding_turn_finish
from core.db import db_read, db_release
from openai_api import shapes
from openai_api.answers import CHARGED_HEADER, TURN_HEADER
from openai_api.errors import error_body
from routing.selectors import Route

logger = logging.getLogger(__name__)

# An answer of more floats than this is encoded off the event loop (about 10 ms of JSON).
ON_LOOP_FLOATS = 20_000
# The calls and completions in flight whose clients left: kept referenced until done
# (the event loop holds only weak references to tasks).
_IN_FLIGHT: set[asyncio.Task] = set()


def _answer(*, turn: Turn, calls: list[LLMCall], result: EmbeddingResult | None,
            encoding_format: str) -> HttpResponse:  # fmt: skip
    """200 with the vectors and the usage billed; 502 when no deployment answered."""
    if result is None or turn.status != Turn.Status.COMPLETED:
        response = JsonResponse(
            error_body(turn.error or "The model did not answer.", type="api_error", code="upstream_error"), status=502
        )
        response["x-should-retry"] = "false"  # each retry would be a new request
    else:
        billed = sum(call.input_tokens for call in calls if call.billed)
        body = shapes.embedding_list(vectors=result.vectors, model=turn.model_alias, prompt_tokens=billed,
                                     encoding_format=encoding_format)  # fmt: skip
        response = HttpResponse(body, content_type="application/json")
    response[TURN_HEADER] = str(turn.pk)
    if turn.credits_charged is not None:
        response[CHARGED_HEADER] = f"{turn.credits_charged:.8f}"
    return response


def answer_now(*, turn: Turn, request: EmbeddingRequest, count: EmbeddingCount, routes: list[Route],
               lease: leases.Lease, encoding_format: str) -> HttpResponse:  # fmt: skip
    """The call on this thread (WSGI), then its completion."""
    db_release()  # no connection is held while the model answers
    try:
        result, calls = embedding_call(turn=turn, request=request, count=count, routes=routes)
    except BaseException:
        # A crash of the call itself (not a provider's refusal): nothing answered, so
        # nothing is charged; the turn fails now, and its lease is no longer renewed.
        logger.exception("turn %s: the embeddings call crashed", turn.pk)
        embedding_turn_finish(turn=turn, outcome=embedding_outcome([], None), lease=lease)
        raise
    done = embedding_turn_finish(turn=turn, outcome=embedding_outcome(calls, result), lease=lease)
    return _answer(turn=done, calls=calls, result=result, encoding_format=encoding_format)


async def _call_and_finish(*, turn: Turn, request: EmbeddingRequest, count: EmbeddingCount, routes: list[Route],
                           lease: leases.Lease) -> tuple[Turn, list[LLMCall], EmbeddingResult | None]:  # fmt: skip
    try:
        result, calls = await embedding_call_async(
            turn=turn, request=request, count=count, routes=routes, on_thread=db_read
        )
    except BaseException:
        # A crash of the call itself (not a provider's refusal): nothing answered, so
        # nothing is charged; the turn fails at once rather than when its lease lapses.
        logger.exception("turn %s: the embeddings call crashed", turn.pk)
        await db_read(embedding_turn_finish, turn=turn, outcome=embedding_outcome([], None), lease=lease)
        raise
    done = await db_read(embedding_turn_finish, turn=turn, outcome=embedding_outcome(calls, result), lease=lease)
    return done, calls, result


async def answer_on_event_loop(*, turn: Turn, request: EmbeddingRequest, count: EmbeddingCount,
                               routes: list[Route], lease: leases.Lease, encoding_format: str) -> HttpResponse:  # fmt: skip
    """The call on the event loop, shielded from the client's leaving (module docstring)."""
    task = asyncio.ensure_future(_call_and_finish(turn=turn, request=request, count=count, routes=routes, lease=lease))
    _IN_FLIGHT.add(task)
    task.add_done_callback(_IN_FLIGHT.discard)
    done, calls, result = await asyncio.shield(task)
    answer = partial(_answer, turn=done, calls=calls, result=result, encoding_format=encoding_format)
    if result is not None and sum(len(vector) for vector in result.vectors) > ON_LOOP_FLOATS:
        # A big answer's JSON (2048 vectors of 1536 floats: about a second) is written
        # off the loop, so other requests' waits go on meanwhile.
        return await asyncio.get_running_loop().run_in_executor(None, answer)
    return answer()


def answer(*, http_request, turn: Turn, request: EmbeddingRequest, count: EmbeddingCount,  # noqa: ANN001
           routes: list[Route], lease: leases.Lease, encoding_format: str) -> HttpResponse:  # fmt: skip
    """The view's answer: finished on the event loop under ASGI, here under WSGI."""
    call = dict(turn=turn, request=request, count=count, routes=routes, lease=lease)
    if not getattr(http_request, "waits_on_event_loop", False):
        return answer_now(**call, encoding_format=encoding_format)
    response = HttpResponse(status=202)
    response.finish_on_event_loop = partial(answer_on_event_loop, **call, encoding_format=encoding_format)
    response.on_abandoned = partial(embedding_turn_abandon, turn_id=turn.pk, lease=lease)  # left before the call
    response[TURN_HEADER] = str(turn.pk)
    return response
