"""GET turns/{id}/stream: server-sent events, live through Redis pub/sub while the
reply is produced, replayed from the database once the turn has finished."""

import asyncio
import json
import threading
import time
import uuid

import pytest
from django.db import connection

from chat import streaming
from chat.models import Message, Turn
from chat.services import turn_run
from tests.chat.conftest import post_turn
from tests.chat.sse import SyncStream, read_all


def events(body: bytes) -> list[tuple[str, dict]]:
    parsed = []
    for block in body.decode().split("\n\n"):
        lines = [line for line in block.splitlines() if not line.startswith(":")]
        if lines:
            name = lines[0].removeprefix("event: ")
            parsed.append((name, json.loads(lines[1].removeprefix("data: "))))
    return parsed


@pytest.mark.django_db(transaction=True)
def test_a_finished_turn_is_replayed_from_the_database(owner_client, session):
    turn = post_turn(owner_client, session, "Stream me").data
    response = owner_client.get(f"/api/v1/turns/{turn['id']}/stream", HTTP_ACCEPT="text/event-stream")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/event-stream")
    received = events(read_all(response))
    assert [name for name, _ in received] == ["status", "delta", "done"]  # the live stream's kinds
    assert received[0][1] == {"status": "completed"}
    assert received[1][1]["text"] == "Echo: Stream me"
    done = received[-1][1]
    assert (done["id"], done["status"], done["credits_charged"]) == (turn["id"], "completed", turn["credits_charged"])
    assert [m["content"] for m in done["messages"]] == ["Stream me", "Echo: Stream me"]


@pytest.mark.django_db(transaction=True)
def test_the_stream_of_someone_elses_turn_is_404_even_as_event_stream(owner_client, other_client, session):
    turn = post_turn(owner_client, session, "private").data
    answer = other_client.get(f"/api/v1/turns/{turn['id']}/stream", HTTP_ACCEPT="text/event-stream")
    assert answer.status_code == 404 and b"private" not in answer.content
    assert json.loads(answer.content)["error"]["code"] == "not_found"


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_running_turn_streams_its_reply_live_through_redis(owner_client, session, settings):
    settings.LOCAL_LLM_LATENCY_MS = 1200  # long enough to be read while it is produced
    turn = Turn.objects.create(session=session, user=session.user, model_alias="fast", price_id=None)
    content = "one two three four five six seven eight nine ten eleven twelve"
    Message.objects.create(session=session, turn=turn, role="user", content=content)

    def work() -> None:
        try:
            turn_run(turn_id=turn.pk)
        finally:
            connection.close()

    response = owner_client.get(f"/api/v1/turns/{turn.pk}/stream")
    stream = SyncStream(response)
    first = next(stream).decode()  # subscribed, and the turn is still queued
    assert first.startswith("event: status") and '"queued"' in first
    worker = threading.Thread(target=work)
    worker.start()
    rest = b"".join(stream).decode()
    worker.join()
    received = events(first.encode() + rest.encode())
    names = [name for name, _ in received]
    deltas = [data["text"] for name, data in received if name == "delta"]
    assert names[-1] == "done" and len(deltas) >= 3  # it came in pieces, before the end
    assert "".join(deltas) == f"Echo: {content}"
    assert received[-1][1]["status"] == "completed" and received[-1][1]["credits_charged"] != "0.00000000"


@pytest.mark.redis
def test_the_publisher_keeps_each_turns_order_and_shares_round_trips(settings, monkeypatch):
    """Events of many turns published at once from many threads reach a subscriber
    complete and, per turn, in order; most leave in pipelined batches."""
    turns, per_turn = [f"publisher-test-{n}" for n in range(8)], 150
    subscriber = streaming.client().pubsub(ignore_subscribe_messages=True)
    subscriber.subscribe(
        *(name for turn in turns for name in (streaming.channel(turn), streaming.pieces_channel(turn)))
    )
    batches: list[int] = []
    send = streaming.Publisher._send
    monkeypatch.setattr(
        streaming.Publisher, "_send", staticmethod(lambda batch: (batches.append(len(batch)), send(batch)))
    )

    def produce(turn: str) -> None:
        for number in range(per_turn):
            streaming.publish(turn, "delta", {"text": f"{number} "})
        streaming.publish(turn, "done", {"status": "completed"})

    threads = [threading.Thread(target=produce, args=(turn,)) for turn in turns]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    received: dict[str, list] = {turn: [] for turn in turns}
    deadline = time.monotonic() + 10
    while (
        sum(len(events) for events in received.values()) < len(turns) * (per_turn + 1) and time.monotonic() < deadline
    ):
        if (message := subscriber.get_message(timeout=1.0)) is not None:
            payload = json.loads(message["data"])
            turn = message["channel"].decode().removeprefix("parley:turn:").removesuffix(":pieces")
            received[turn].append((payload["event"], payload["data"]))
    subscriber.close()
    for events_of_turn in received.values():
        assert [name for name, _ in events_of_turn] == ["delta"] * per_turn + ["done"]
        assert [data["text"] for _, data in events_of_turn[:-1]] == [f"{n} " for n in range(per_turn)]
    assert sum(batches) == len(turns) * (per_turn + 1)
    assert max(batches) > 1  # a burst shares round trips


@pytest.mark.redis
def test_a_waiter_hears_only_the_end_and_a_stream_every_piece():
    """`Prefer: wait` (and /v1 without `stream`) listen to the turn's end only; a stream
    listens to its pieces as well, in the order they were published."""
    hub, turn = streaming.Hub(), f"pieces-test-{uuid.uuid4().hex}"

    async def scenario() -> tuple[list, list]:
        try:
            async with hub.listen(turn) as waiter, hub.listen(turn, pieces=True) as stream:
                for number in range(3):
                    streaming.publish(turn, "delta", {"text": str(number)})
                streaming.publish(turn, "done", {"status": "completed"})
                streamed = [await asyncio.wait_for(stream.get(), 5) for _ in range(4)]
                waited = [await asyncio.wait_for(waiter.get(), 5)]
                await asyncio.sleep(0.2)  # anything else published would have come by now
                while not waiter.empty():
                    waited.append(waiter.get_nowait())
            assert not hub.waiters  # both channels unsubscribed once nobody listens
            return streamed, waited
        finally:
            hub.reader.cancel()
            await hub.pubsub.aclose()

    streamed, waited = asyncio.run(scenario())
    assert streamed == [("delta", {"text": "0"}), ("delta", {"text": "1"}), ("delta", {"text": "2"}),
                        ("done", {"status": "completed"})]  # fmt: skip
    assert waited == [("done", {"status": "completed"})]
