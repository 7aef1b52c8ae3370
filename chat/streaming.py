"""Turn events through Redis pub/sub: the publish side (the engine's `delta`, the
services' `reset` and `done`) and the waiting side (a subscription, `turn_wait`).
The server-sent events a client reads are rendered in chat.api.stream.

The worker publishes to the channel `parley:turn:<id>` while it runs the turn:
`delta` (a piece of the reply), `reset` (a redelivered task restarted the reply:
discard what came before) and, after the completion commits, `done`. A reader
subscribes *before* it checks the database, so a turn that finishes in between is
seen either way. Publishing is best effort: a lost event costs a reader at most a
periodic database check, never the turn.

Without Redis (the embedded default) there is nothing to subscribe to: readers poll
the database, and the stream replays a finished turn from it.
"""

import json
import logging
import os
import queue
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any
from uuid import UUID

import redis
from django.conf import settings

from chat.api.serializers import turn_detail_payload
from chat.models import LLMCall, Message, ToolCall, Turn
from chat.selectors import turn_is_finished

logger = logging.getLogger(__name__)

# A reader re-checks the database this often when no event arrives (lost `done`).
RECHECK_SECONDS = 2.0
POLL_SECONDS = 0.05


def enabled() -> bool:
    return bool(settings.REDIS_URL)


@lru_cache(maxsize=4)
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30)


def client() -> redis.Redis:
    return _client(settings.REDIS_URL)


def channel(turn_id: UUID | str) -> str:
    return f"parley:turn:{turn_id}"


def publish(turn_id: UUID | str, event: str, data: dict[str, Any] | None = None) -> None:
    if not enabled():
        return
    try:
        client().publish(channel(turn_id), json.dumps({"event": event, "data": data or {}}))
    except redis.RedisError as exc:
        logger.warning("could not publish %s for turn %s: %s", event, turn_id, exc.__class__.__name__)


def publish_done(*, turn: Turn, messages: list[Message], llm_calls: list[LLMCall], tool_calls: list[ToolCall]) -> None:
    """`done`, carrying the finished turn as GET turns/{id} shows it, from the rows
    the completion has in memory: a waiting request or stream needs no read. (The
    body is the API's, so this side of the channel renders it with chat.api's
    serializers; the services only hand over rows.)"""
    payload = turn_detail_payload(turn=turn, messages=messages, llm_calls=llm_calls, tool_calls=tool_calls)
    publish(turn.pk, "done", {"status": turn.status, "turn": payload})


class Subscription:
    def __init__(self, pubsub: redis.client.PubSub, name: str) -> None:
        self.pubsub = pubsub
        self.name = name

    def get(self, timeout: float) -> tuple[str, dict] | None:
        """The next event on this channel, or None when none arrived within `timeout`."""
        message = self.pubsub.get_message(ignore_subscribe_messages=True, timeout=max(timeout, 0.0))
        if message is None or message.get("type") != "message":
            return None
        channel_name = message.get("channel")
        if isinstance(channel_name, bytes):
            channel_name = channel_name.decode()
        if channel_name != self.name:
            return None  # a late message for the channel this connection listened to before
        try:
            payload = json.loads(message["data"])
            return payload["event"], payload.get("data") or {}
        except (ValueError, KeyError, TypeError):
            return None


# Idle pub/sub connections of this process. Closing a PubSub drops its TCP
# connection, so a waiting request borrows one instead of connecting each time.
_idle: queue.SimpleQueue = queue.SimpleQueue()
_idle_pid = os.getpid()
IDLE_MAX = 32


def _borrow() -> redis.client.PubSub:
    global _idle, _idle_pid
    if _idle_pid != os.getpid():  # forked: connections of the parent are not ours
        _idle, _idle_pid = queue.SimpleQueue(), os.getpid()
    try:
        return _idle.get_nowait()
    except queue.Empty:
        return client().pubsub(ignore_subscribe_messages=True)


def _give_back(pubsub: redis.client.PubSub) -> None:
    if _idle.qsize() < IDLE_MAX:
        _idle.put(pubsub)
    else:
        pubsub.close()


@contextmanager
def subscription(turn_id: UUID | str) -> Iterator[Subscription]:
    name = channel(turn_id)
    pubsub = _borrow()
    clean = False
    try:
        pubsub.subscribe(name)
        yield Subscription(pubsub, name)
        clean = True
    finally:
        if clean:
            try:
                pubsub.unsubscribe(name)
                _give_back(pubsub)
            except redis.RedisError:
                pubsub.close()
        else:
            pubsub.close()


def turn_wait(*, turn_id: UUID | str, timeout: float) -> tuple[bool, dict | None]:
    """Waits up to `timeout` seconds for the turn to finish (completed or failed).
    Returns (finished, the turn as the worker published it with `done`, if it came
    that way). Listens on Redis when there is one, else polls the database. Never
    waits on a Celery result."""
    deadline = time.monotonic() + timeout
    if not enabled() or timeout <= 0:
        return poll(turn_id, deadline), None
    try:
        with subscription(turn_id) as events:
            next_check = 0.0  # check right after subscribing: it may have finished before
            while (now := time.monotonic()) < deadline:
                if now >= next_check:
                    if turn_is_finished(turn_id=turn_id):
                        return True, None
                    next_check = now + RECHECK_SECONDS
                event = events.get(timeout=min(deadline, next_check) - now)
                if event is not None and event[0] == "done":
                    return True, event[1].get("turn")
    except redis.RedisError as exc:
        logger.warning("turn wait falls back to polling: %s", exc.__class__.__name__)
        return poll(turn_id, deadline), None
    return turn_is_finished(turn_id=turn_id), None


def poll(turn_id: UUID | str, deadline: float) -> bool:
    while True:
        if turn_is_finished(turn_id=turn_id):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)
