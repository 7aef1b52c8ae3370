"""Database connections around waits. On PostgreSQL connections come from Django's
pool (psycopg_pool); a thread that is about to wait on a model, a stream or a timer
gives its connection back first, so connections stay bounded however many turns
and streams are in flight."""

import asyncio
from collections.abc import Callable
from functools import partial
from typing import Any

from django.db import InterfaceError, OperationalError, connections

# What a lost or refused database connection raises through Django.
DATABASE_DOWN = (OperationalError, InterfaceError)


def db_release() -> None:
    """Gives this thread's database connections back (to the pool) before a wait, or
    after a failure that may have broken them (the next query then connects anew;
    the pool drops a broken connection rather than lend it again). Inside a
    transaction (a test's, or a caller's) they stay: closing would end it."""
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            try:
                connection.close()
            except DATABASE_DOWN:
                connection.connection = None


def db_call(call: Callable[..., Any], /, **kwargs: Any) -> Any:  # noqa: ANN401  whatever `call` returns
    """`call(**kwargs)`, this thread's connection given back right after."""
    try:
        return call(**kwargs)
    finally:
        db_release()


async def db_read(read: Callable[..., Any], /, **kwargs: Any) -> Any:  # noqa: ANN401  whatever `read` returns
    """`read(**kwargs)` (a read, or a short write such as a hand-over) on a thread of
    the loop's executor, its connection given back right after: an async waiter holds
    no connection between its calls. The thread runs in its own context (core.asgi
    says why)."""
    return await asyncio.get_running_loop().run_in_executor(None, partial(db_call, read, **kwargs))
