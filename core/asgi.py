"""The web process's ASGI handler: Django's, run the way its WSGI handler runs
requests, plus waits that hold nothing.

Django's own ASGI handler runs every sync middleware method, the view and the
rendering in threads made for each request (ThreadSensitiveContext), a dozen hops per
request here: it cost twice the CPU of the same request under gunicorn's threads.
This one builds the middleware chain sync, as WSGI does, and runs chain and view in
ONE hop to a shared thread pool (threads, their database wrappers and cache clients
are reused), then gives the thread's database connection back to the pool. What
must wait (a streamed body, a `Prefer: wait`) waits on the event loop:

- a streaming response with an async iterator is sent from the loop, as Django does;
- a response may carry `finish_on_event_loop`, a coroutine function the handler
  awaits (on the loop) for the final response. Views learn they may use it from
  `request.waits_on_event_loop`; under WSGI they wait the old way.

Requests run on a pool of WEB_THREADS threads, reads (GET, HEAD, OPTIONS) before any
waiting write (core.lanes), and the health probe on a thread of its own, so a burst
of turn POSTs never queues a read or the probe behind it (measured in
bench/concurrency.py, with the alternatives tried). A pool thread runs in its own
context, as a WSGI thread does: its database wrapper and other thread-locals live as
long as the thread. (asgiref's sync_to_async would copy the request's context into
the thread and back, and re-home every Local, for each request: about 7% of the
web's CPU under load, and a new database wrapper per request.)

For the same reason the request's signals run where WSGI runs them, in the request's
own hop: `request_started` before the view and `request_finished` (the response's
close) right after it, when the thread's part of the request is done (a response
that still waits on the event loop holds nothing of the thread, and its body is bytes:
nothing to release later; the answer a wait makes is bytes too, and is not closed
again). Django's handler sends both through sync_to_async, two more hops per request
(6% of the web's CPU in the 200-user burst). A streamed response is closed once
sent. A client that leaves while its view runs leaves that view to finish on its
thread: whatever its response left to the event loop runs there instead
(`on_abandoned`: a turn still to be handed over), and a stream is closed unsent.
"""

import asyncio
import contextlib
from concurrent.futures import Future

from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers import base
from django.core.handlers.asgi import ASGIHandler as DjangoASGIHandler
from django.core.handlers.asgi import get_script_prefix
from django.http import HttpRequest, HttpResponseBase
from django.urls import reverse, set_script_prefix

from core.db import db_release
from core.lanes import LanedPool

# Served before any waiting write: they are short, and a person is looking at them.
READS = frozenset({"GET", "HEAD", "OPTIONS"})


class ASGIHandler(DjangoASGIHandler):
    def __init__(self) -> None:
        base.BaseHandler.__init__(self)
        self.load_middleware(is_async=False)  # one sync chain, run in one hop
        self.requests = LanedPool(settings.WEB_THREADS, name="web")
        self.probes = LanedPool(1, name="web-probe")
        self.probe_path = reverse("health")

    async def __call__(self, scope: dict, receive, send) -> None:  # noqa: ANN001
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        # Without Django's per-request ThreadSensitiveContext: the chain, the view and
        # the request's signals run on the shared pool (get_response_async, handle).
        await self.handle(scope, receive, send)

    async def handle(self, scope: dict, receive, send) -> None:  # noqa: ANN001
        """Django's ASGIHandler.handle without its signal hops (see the module's
        docstring): the request is answered while a second task listens for the client
        going away, which cancels a wait or a stream at once."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        request, response = self.create_request(scope, body_file)
        if request is None:  # refused before any view (400, 413)
            await self.send_response(response, send)
            await self._on_a_pool_thread(self._refused, response, scope)
        else:
            response = await self._answer_unless_client_leaves(request, receive, send)
            if response is not None and response.streaming:
                await self._on_a_pool_thread(self._finished, response)
            # None: the client left first. A view that had started finishes on its
            # thread all the same (_left_behind); one that had not never runs.
        body_file.close()

    async def _on_a_pool_thread(self, call, /, *args) -> None:  # noqa: ANN001, ANN002
        await asyncio.wrap_future(self.requests.submit(call, *args, urgent=True))

    def _finished(self, response: HttpResponseBase) -> None:
        response._handler_class = self.__class__
        response.close()  # request_finished

    def _refused(self, response: HttpResponseBase, scope: dict) -> None:
        signals.request_started.send(sender=self.__class__, scope=scope)
        self._finished(response)

    def _left_behind(self, done: Future) -> None:
        """The client left while its view ran (a done-callback of the view's job): what
        the view left to the event loop must still happen, on the pool. A job cancelled
        before it started made nothing."""
        if not done.cancelled() and done.exception() is None:
            self.requests.submit(self._abandon, done.result(), urgent=True)

    def _abandon(self, response: HttpResponseBase) -> None:
        """A response nobody will finish or send: its `on_abandoned` (a turn waiting to
        be handed over, say) runs, and a stream's body is closed."""
        try:
            if (on_abandoned := getattr(response, "on_abandoned", None)) is not None:
                on_abandoned()
            if response.streaming:
                self._finished(response)
        finally:
            db_release()

    async def _answer_unless_client_leaves(self, request: HttpRequest, receive, send) -> HttpResponseBase | None:  # noqa: ANN001
        async def answer() -> HttpResponseBase:
            response = await self.run_get_response(request)
            with contextlib.suppress(asyncio.CancelledError):  # the client went away while it was sent
                await self.send_response(response, send)
            return response

        tasks = [asyncio.create_task(self.listen_for_disconnect(receive)), asyncio.create_task(answer())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                with contextlib.suppress(RequestAborted):  # the client went away
                    task.result()
            else:
                task.cancel()  # a view may handle its cancellation
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        try:
            return tasks[1].result()
        except asyncio.CancelledError:
            return None

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        request.waits_on_event_loop = True
        pool = self.probes if request.path == self.probe_path else self.requests
        done = pool.submit(self._get_response_on_a_pool_thread, request, urgent=request.method in READS)
        try:
            response = await asyncio.wrap_future(done)
        except asyncio.CancelledError:
            done.add_done_callback(self._left_behind)
            raise
        # From here a cancelled `finish` cleans up after itself.
        finish = getattr(response, "finish_on_event_loop", None)
        if finish is None:
            return response
        response = await finish()
        if response.has_header("Content-Length"):  # set by CommonMiddleware for the body before the wait
            response["Content-Length"] = str(len(response.content))
        return response

    def _get_response_on_a_pool_thread(self, request: HttpRequest) -> HttpResponseBase:
        set_script_prefix(request.script_name)  # set on the loop by Django, not seen in this thread's context
        try:
            signals.request_started.send(sender=self.__class__, scope=request.scope)
            response = self.get_response(request)
            if not response.streaming:  # its request is finished here (see the module's docstring)
                self._finished(response)
            return response
        finally:
            db_release()
