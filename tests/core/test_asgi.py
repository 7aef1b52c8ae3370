"""The web process's ASGI handler (core.asgi) runs a request's signals where WSGI runs
them: on the request's own pool thread, in the hop that runs the view."""

import asyncio
import threading
import time

import pytest
from django.core.signals import request_finished, request_started

from core.asgi import ASGIHandler
from tests.asgi import asgi_call

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def signal_threads():  # noqa: ANN201
    """(signal, thread name) for each request_started / request_finished sent."""
    seen: list[tuple[str, str]] = []

    def started(**kwargs) -> None:  # noqa: ANN003
        seen.append(("started", threading.current_thread().name))

    def finished(**kwargs) -> None:  # noqa: ANN003
        seen.append(("finished", threading.current_thread().name))

    request_started.connect(started)
    request_finished.connect(finished)
    yield seen
    request_started.disconnect(started)
    request_finished.disconnect(finished)


def one_pair_on_a_thread(seen: list[tuple[str, str]], prefix: str) -> None:
    """request_started then request_finished, both on one thread of the pool `prefix`."""
    assert [signal for signal, _ in seen] == ["started", "finished"], seen
    assert seen[0][1] == seen[1][1] and seen[0][1].startswith(prefix), seen


def test_a_request_signals_run_on_the_thread_that_runs_its_view(signal_threads):
    status, _, _ = asyncio.run(asgi_call(ASGIHandler(), "GET", "/api/v1/health"))
    assert status == 200
    one_pair_on_a_thread(signal_threads, "web-probe_")

    status, _, _ = asyncio.run(asgi_call(ASGIHandler(), "GET", "/api/v1/users/me"))
    assert status == 401
    one_pair_on_a_thread(signal_threads[2:], "web_")


def test_a_request_whose_client_left_while_its_view_ran_finishes_once_on_its_thread(signal_threads, monkeypatch):
    """The client goes away while the view runs: the request is cancelled on the event
    loop, the view ends on its thread all the same, and its signals are sent once."""
    from core import views

    running, go_on = threading.Event(), threading.Event()

    def slow_database_status() -> dict:
        running.set()
        assert go_on.wait(10)
        return real_database_status()

    real_database_status = views.database_status
    monkeypatch.setattr(views, "database_status", slow_database_status)
    messages = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict:
        if messages:
            return messages.pop(0)
        assert await asyncio.to_thread(running.wait, 10)
        return {"type": "http.disconnect"}

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "http_version": "1.1", "method": "GET", "path": "/api/v1/health", "raw_path": b"/api/v1/health",
        "root_path": "", "scheme": "http", "query_string": b"", "server": ("testserver", 80),
        "client": ("127.0.0.1", 5000), "headers": [(b"host", b"testserver")],
    }  # fmt: skip
    asyncio.run(ASGIHandler()(scope, receive, send))
    assert sent == [] and signal_threads == [("started", "web-probe_0")]  # answered nobody; still running
    go_on.set()
    deadline = time.monotonic() + 5
    while len(signal_threads) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # a second request_finished, had there been one, would have come by now
    one_pair_on_a_thread(signal_threads, "web-probe_")


def test_a_request_that_waits_on_the_event_loop_finishes_once_on_its_thread(signal_threads, owner):
    """`Prefer: wait` (eager tasks, as the embedded default runs them): the view's
    thread sends request_finished when its part is done; the wait on the loop sends
    none."""
    import json

    from accounts.services import api_key_create
    from billing.services import wallet_grant
    from chat.models import ChatSession
    from tests.chat.conftest import START_BALANCE, make_price

    wallet_grant(user=owner, amount=START_BALANCE, reason="test credits")
    session = ChatSession.objects.create(user=owner, title="ASGI", model_alias=make_price().alias)
    _, key = api_key_create(user=owner, name="asgi")
    headers = [
        (b"authorization", f"Bearer {key}".encode()), (b"content-type", b"application/json"), (b"prefer", b"wait=10"),
    ]  # fmt: skip
    body = json.dumps({"content": "Hello"}).encode()
    status, _, content = asyncio.run(
        asgi_call(ASGIHandler(), "POST", f"/api/v1/sessions/{session.pk}/turns", body=body, headers=headers)
    )
    assert status == 201, content
    assert json.loads(content)["status"] == "completed"
    one_pair_on_a_thread(signal_threads, "web_")

    # A streamed response: finished once, after its body was sent.
    signal_threads.clear()
    turn_id = json.loads(content)["id"]
    stream_headers = [(b"authorization", f"Bearer {key}".encode()), (b"accept", b"text/event-stream")]
    status, _, body = asyncio.run(
        asgi_call(ASGIHandler(), "GET", f"/api/v1/turns/{turn_id}/stream", headers=stream_headers)
    )
    assert status == 200 and b"event: done" in body
    assert [signal for signal, _ in signal_threads] == ["started", "finished"]
    assert all(name.startswith("web_") for _, name in signal_threads)
