"""Turn events through Redis pub/sub: the publish side (the engine's `delta`, the
services' `reset` and `done`, from worker threads) and the waiting side (`hub`,
`turn_wait`, on the web process's event loop), and the open-streams slots of fair
use. The server-sent events a client reads are rendered in chat.api.stream.

The worker publishes while it runs the turn: `delta` (a piece of the reply, on
`parley:turn:<id>:pieces`, which only streams read), `reset` (a redelivered task
restarted the reply: discard what came before) and, after the completion commits,
`done` (both on `parley:turn:<id>`, which everyone waiting for the turn reads). A reader
subscribes *before* it checks the database, so a turn that finishes in between is
seen either way; a reader that hands its own new turn over (`hand_over`) does so
once subscribed, and needs no first check. Publishing is best effort: a lost event
costs a reader at most a periodic database check, never the turn. Events leave
through one thread per process (`Publisher`), in order, pipelined: many turns
streaming at once share round trips.

Waiting holds no thread, worker or database connection (ASGI): a web process keeps
ONE pub/sub connection for all of its waiters. A waiter subscribes its turn's
channel on it (the first waiter of a channel subscribes, the last unsubscribes), and
one reader task hands each event to the waiters of its channel. The database stays
the truth: a waiter checks the turn right after subscribing (it may have finished
before; not when it hands the turn over itself), every RECHECK_SECONDS (a `done`
lost with a Redis hiccup) and after the pub/sub connection was re-made; each check
borrows a database connection for one query and gives it back (core.db.db_read).

Without Redis, turns run in the web process (TURNS_IN_PROCESS, the embedded default:
chat.dispatch), so their events need no broker: `publish` hands each one to this
process's waiters (`LocalHub`) on their own event loops (`call_soon_threadsafe`),
and the rest is as above (the database checked after listening and every
RECHECK_SECONDS). With neither Redis nor in-process turns (eager turns run inside
the request, the test suite's default) waiters poll the database, and the stream
replays a finished turn from it.
"""

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import lru_cache
from queue import Empty, SimpleQueue
from typing import Any
from uuid import UUID

import redis
import redis.asyncio as aioredis
from django.conf import settings

from chat.api.serializers import turn_detail_payload
from chat.models import LLMCall, Message, ToolCall, Turn
from chat.selectors import FINISHED, turn_status
from core.db import db_read

logger = logging.getLogger(__name__)

# A waiter re-checks the database this often when no event arrives (lost `done`).
RECHECK_SECONDS = 10.0
POLL_SECONDS = 0.2
RECONNECT_SECONDS = 1.0
# Sent to every waiter when the pub/sub connection was re-made: events may be lost.
RECHECK = ("recheck", {})
# The longest a stream stays open waiting for a turn to finish.
STREAM_MAX_SECONDS = 600.0


def enabled() -> bool:
    """Redis is there: events go through its pub/sub (and other processes hear them)."""
    return bool(settings.REDIS_URL)


def live() -> bool:
    """Turn events reach waiters as they happen: through Redis, or (turns run in this
    process) straight from the turn's thread. Else waiters poll the database."""
    return enabled() or settings.TURNS_IN_PROCESS


@lru_cache(maxsize=4)
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30)


def client() -> redis.Redis:
    return _client(settings.REDIS_URL)


def channel(turn_id: UUID | str) -> str:
    """A turn's `reset` and `done`: what anyone waiting for the turn needs."""
    return f"parley:turn:{turn_id}"


def pieces_channel(turn_id: UUID | str) -> str:
    """A turn's `delta`s: only a stream reads them, so a request that waits for the
    end (`Prefer: wait`, /v1 without `stream`) is not woken for every piece. Both
    channels leave through the one publisher and arrive on one subscriber
    connection, so their events stay in the order they were published."""
    return f"parley:turn:{turn_id}:pieces"


class Publisher:
    """Sends the process's turn events from ONE thread, in the order they were given,
    every event waiting at that moment in one pipelined round trip. A worker streaming
    hundreds of turns at once then pays a round trip per batch, not per piece (and its
    turn threads do not queue for the interpreter lock around each one). One sender
    keeps the order of each channel: a turn's pieces, then its `done`."""

    BATCH = 500

    def __init__(self) -> None:
        self.queue: SimpleQueue = SimpleQueue()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def put(self, url: str, name: str, message: str) -> None:
        if self.thread is None or not self.thread.is_alive():
            with self.lock:
                if self.thread is None or not self.thread.is_alive():
                    self.thread = threading.Thread(target=self._send_forever, name="turn-events", daemon=True)
                    self.thread.start()
        self.queue.put((url, name, message))

    def _send_forever(self) -> None:
        while True:
            batch = [self.queue.get()]
            while len(batch) < self.BATCH:
                try:
                    batch.append(self.queue.get_nowait())
                except Empty:
                    break
            self._send(batch)

    @staticmethod
    def _send(batch: list[tuple[str, str, str]]) -> None:
        try:
            if len(batch) == 1:
                url, name, message = batch[0]
                _client(url).publish(name, message)
                return
            pipes: dict[str, redis.client.Pipeline] = {}
            for url, name, message in batch:
                if url not in pipes:
                    pipes[url] = _client(url).pipeline(transaction=False)
                pipes[url].publish(name, message)
            for pipe in pipes.values():
                pipe.execute()
        except redis.RedisError as exc:  # best effort: a reader re-checks the database
            logger.warning("could not publish %d turn events: %s", len(batch), exc.__class__.__name__)


publisher = Publisher()


def publish(turn_id: UUID | str, event: str, data: dict[str, Any] | None = None) -> None:
    """Hands the event to the process's publisher (it returns at once); without Redis,
    to this process's own waiters (turns run here: TURNS_IN_PROCESS)."""
    name = pieces_channel(turn_id) if event == "delta" else channel(turn_id)
    if enabled():
        publisher.put(settings.REDIS_URL, name, json.dumps({"event": event, "data": data or {}}))
    elif settings.TURNS_IN_PROCESS:
        local_hub.deliver(name, event, data or {})


def publish_done(*, turn: Turn, messages: list[Message], llm_calls: list[LLMCall], tool_calls: list[ToolCall]) -> None:
    """`done`, carrying the finished turn as GET turns/{id} shows it, from the rows
    the completion has in memory: a waiting request or stream needs no read. (The
    body is the API's, so this side of the channel renders it with chat.api's
    serializers; the services only hand over rows.)"""
    payload = turn_detail_payload(turn=turn, messages=messages, llm_calls=llm_calls, tool_calls=tool_calls)
    publish(turn.pk, "done", {"status": turn.status, "turn": payload})


# --- waiting, on the event loop ------------------------------------------------------


def _event(message: dict | None) -> tuple[str, tuple[str, dict]] | None:
    """(channel, (event, data)) of a pub/sub message; None for anything else."""
    if message is None or message.get("type") != "message":
        return None
    name = message["channel"].decode() if isinstance(message["channel"], bytes) else message["channel"]
    try:
        payload = json.loads(message["data"])
        return name, (payload["event"], payload.get("data") or {})
    except (ValueError, KeyError, TypeError):
        return None


def _redis() -> aioredis.Redis:
    return aioredis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, health_check_interval=30)


class Hub:
    """The server's one pub/sub connection and the waiters on each turn channel. It
    serves the event loop of the process's main thread (the ASGI server's). A waiter
    on any other loop (a sync caller bridged with async_to_sync, a test) gets a
    connection of its own for the length of its wait."""

    def __init__(self) -> None:
        self.waiters: dict[str, set[asyncio.Queue]] = {}
        self.pubsub: aioredis.client.PubSub | None = None
        self.reader: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        # (Un)subscribes one at a time: redis-py's PubSub.connect() is not safe to
        # await concurrently (two first subscribes each take a connection, and one
        # is dropped with its subscription: its waiter saw no event until a recheck).
        self.lock: asyncio.Lock | None = None

    def listen(
        self, turn_id: UUID | str, *, pieces: bool = False
    ) -> contextlib.AbstractAsyncContextManager[asyncio.Queue]:
        """The turn's events in one queue: `reset` and `done`, and with `pieces` its
        `delta`s too (a stream)."""
        names = (channel(turn_id), pieces_channel(turn_id)) if pieces else (channel(turn_id),)
        if not enabled():
            return local_hub.listen(names)
        if threading.current_thread() is threading.main_thread():
            return self._listen_shared(names)
        return self._listen_alone(names)

    @contextlib.asynccontextmanager
    async def _listen_shared(self, names: tuple[str, ...]) -> AsyncIterator[asyncio.Queue]:
        loop = asyncio.get_running_loop()
        if self.loop is not loop:  # a new server loop (a test may run several in turn)
            self.loop, self.waiters, self.reader, self.lock = loop, {}, None, asyncio.Lock()
            self.pubsub = _redis().pubsub(ignore_subscribe_messages=True)
        if self.reader is None or self.reader.done():
            self.reader = loop.create_task(self._read())
        queue: asyncio.Queue = asyncio.Queue()
        joined = {name: self.waiters.setdefault(name, set()) for name in names}
        for waiters in joined.values():
            waiters.add(queue)
        try:
            if new := [name for name, waiters in joined.items() if len(waiters) == 1]:
                async with self.lock:
                    await self.pubsub.subscribe(*new)
            yield queue
        finally:
            left = []
            for name, waiters in joined.items():
                waiters.discard(queue)
                if not waiters and self.waiters.get(name) is waiters:
                    del self.waiters[name]
                    left.append(name)
            if left:
                with contextlib.suppress(redis.RedisError, OSError, RuntimeError):
                    async with self.lock:
                        await self.pubsub.unsubscribe(*left)

    async def _read(self) -> None:
        while True:
            try:
                if not self.pubsub.subscribed:
                    await asyncio.sleep(0.05)
                    continue
                got = _event(await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0))
            except (redis.RedisError, OSError) as exc:
                logger.warning("turn events: pub/sub connection lost (%s); re-subscribing", exc.__class__.__name__)
                await self._reconnect()
                continue
            if got is not None:
                for queue in self.waiters.get(got[0], ()):
                    queue.put_nowait(got[1])

    async def _reconnect(self) -> None:
        with contextlib.suppress(Exception):
            await self.pubsub.aclose()
        await asyncio.sleep(RECONNECT_SECONDS)
        self.pubsub = _redis().pubsub(ignore_subscribe_messages=True)
        with contextlib.suppress(redis.RedisError, OSError):
            if self.waiters:
                await self.pubsub.subscribe(*self.waiters)
        for queues in self.waiters.values():
            for queue in queues:
                queue.put_nowait(RECHECK)

    @staticmethod
    @contextlib.asynccontextmanager
    async def _listen_alone(names: tuple[str, ...]) -> AsyncIterator[asyncio.Queue]:
        client = _redis()
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        queue: asyncio.Queue = asyncio.Queue()

        async def read() -> None:
            try:
                while True:
                    got = _event(await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0))
                    if got is not None:
                        queue.put_nowait(got[1])
            except (redis.RedisError, OSError):
                queue.put_nowait(RECHECK)

        try:
            await pubsub.subscribe(*names)
            reader = asyncio.create_task(read())
            try:
                yield queue
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
        finally:
            with contextlib.suppress(redis.RedisError, OSError, RuntimeError):
                await pubsub.aclose()
                await client.aclose()


hub = Hub()


class LocalHub:
    """Without Redis: the waiters of this process on each turn channel, fed by
    `publish` from the threads that run turns here (TURNS_IN_PROCESS). Each waiter is
    a queue on its own event loop (the server's, or a sync caller's bridged with
    async_to_sync), handed each event with `call_soon_threadsafe`: a turn's thread
    never touches a loop's queue itself, and the loop runs the hand-overs in the order
    they were made (a turn's pieces, then its `done`). An event nobody waits for is
    dropped; the database stays the truth (waiters check it after listening and
    every RECHECK_SECONDS)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Queue]]] = {}

    def deliver(self, name: str, event: str, data: dict[str, Any]) -> None:
        with self.lock:
            waiters = list(self.waiters.get(name, ()))
        if not waiters:
            return
        # What a Redis subscriber would read: JSON's types, a copy the turn's thread
        # no longer touches (its rows may change after `done`).
        item = (event, json.loads(json.dumps(data)))
        for loop, queue in waiters:
            with contextlib.suppress(RuntimeError):  # its loop has closed: that waiter is gone
                loop.call_soon_threadsafe(queue.put_nowait, item)

    @contextlib.asynccontextmanager
    async def listen(self, names: tuple[str, ...]) -> AsyncIterator[asyncio.Queue]:
        waiter = (asyncio.get_running_loop(), asyncio.Queue())
        with self.lock:
            for name in names:
                self.waiters.setdefault(name, set()).add(waiter)
        try:
            yield waiter[1]
        finally:
            with self.lock:
                for name in names:
                    waiters = self.waiters.get(name)
                    if waiters is not None:
                        waiters.discard(waiter)
                        if not waiters:
                            del self.waiters[name]


local_hub = LocalHub()


async def finished(turn_id: UUID | str) -> bool:
    """Has the turn finished (or gone)? One read on a pooled connection."""
    return await db_read(turn_status, turn_id=turn_id) in (*FINISHED, None)


async def next_event(queue: asyncio.Queue, timeout: float) -> tuple[str, dict] | None:
    """The next event of `queue`, or None after `timeout` seconds. (Not wait_for: in
    Python 3.11 it makes a task per call, and a stream calls this for every piece.)"""
    if not queue.empty():
        return queue.get_nowait()
    try:
        async with asyncio.timeout(max(timeout, 0.0)):
            return await queue.get()
    except TimeoutError:
        return None


async def turn_wait(
    *, turn_id: UUID | str, timeout: float, hand_over: Callable[[], Awaitable[Any]] | None = None
) -> tuple[bool, dict | None]:
    """Waits up to `timeout` seconds for the turn to finish. Returns (finished, the
    turn as the worker published it with `done`, if it came that way). `hand_over`
    (a turn not yet given to the worker) is awaited once this listens: the turn
    cannot finish before, so no read is needed to learn whether it already did."""
    deadline = time.monotonic() + timeout
    if not live():
        if hand_over is not None:
            await hand_over()
        while not await finished(turn_id):
            if time.monotonic() >= deadline:
                return False, None
            await asyncio.sleep(POLL_SECONDS)
        return True, None
    async with hub.listen(turn_id) as events:
        next_check = 0.0  # right after subscribing: it may have finished before
        if hand_over is not None:
            await hand_over()
            next_check = time.monotonic() + RECHECK_SECONDS
        while (now := time.monotonic()) < deadline:
            if now >= next_check:
                if await finished(turn_id):
                    return True, None
                next_check = time.monotonic() + RECHECK_SECONDS
            event = await next_event(events, min(deadline, next_check) - time.monotonic())
            if event is not None and event[0] == "done":
                return True, event[1].get("turn")
            if event == RECHECK:
                next_check = 0.0
    return await finished(turn_id), None


# --- fair use: open streams per user ----------------------------------------------------

# Each open stream is a member of the user's sorted set, scored by when it expires
# (a process that died without closing its streams frees them then).
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""
_local_streams: dict[str, set[str]] = {}
_local_lock = threading.Lock()


def stream_owner(request) -> str:  # noqa: ANN001
    """Whose allowance of open streams a request spends: its user's, or through an
    organization's key, its member's (each member is a person with their own)."""
    membership_id = getattr(request.auth, "membership_id", None)
    return f"{request.user.pk}:m{membership_id}" if membership_id else str(request.user.pk)


def _streams_key(owner: str) -> str:
    return f"parley:streams:{owner}"


def stream_slot_take(*, owner: str) -> str | None:
    """A slot for one more open stream of this owner (stream_owner; its token), or
    None when they already have MAX_STREAMS_PER_USER open."""
    token = uuid.uuid4().hex
    limit = settings.MAX_STREAMS_PER_USER
    if not enabled():
        with _local_lock:
            mine = _local_streams.setdefault(owner, set())
            if len(mine) >= limit:
                return None
            mine.add(token)
        return token
    now = time.time()
    ttl = int(STREAM_MAX_SECONDS + 60)
    taken = client().eval(_ACQUIRE, 1, _streams_key(owner), now, limit, now + ttl, token, ttl)
    return token if taken else None


def stream_slot_free(*, owner: str, token: str) -> None:
    if not enabled():
        with _local_lock:
            _local_streams.get(owner, set()).discard(token)
        return
    try:
        client().zrem(_streams_key(owner), token)
    except redis.RedisError:
        logger.warning("could not free a stream slot of %s; it expires by itself", owner)
