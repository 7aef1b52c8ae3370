"""Reading an async streaming answer (GET turns/{id}/stream) from a synchronous test,
piece by piece, as a client does: the body's async generator runs on an event loop
of its own in a background thread, so the test can act between two pieces."""

import asyncio
import contextlib
import threading


class SyncStream:
    def __init__(self, response, timeout: float = 60) -> None:  # noqa: ANN001
        self.body = response.streaming_content
        self.timeout = timeout
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def __iter__(self) -> "SyncStream":
        return self

    def __next__(self) -> bytes:
        try:
            return asyncio.run_coroutine_threadsafe(self.body.__anext__(), self.loop).result(self.timeout)
        except StopAsyncIteration:
            self.loop.call_soon_threadsafe(self.loop.stop)
            raise StopIteration from None

    def close(self) -> None:
        """Goes away as a client does mid-stream: the ASGI server cancels the read the
        body is waiting in, and the cancellation runs through the body's `finally`."""
        if not self.loop.is_running():
            return

        async def cancel_the_pending_read() -> None:
            read = asyncio.ensure_future(self.body.__anext__())
            await asyncio.sleep(0.1)  # the body is waiting for its next event now
            read.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await read

        asyncio.run_coroutine_threadsafe(cancel_the_pending_read(), self.loop).result(self.timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(self.timeout)


def read_all(response) -> bytes:  # noqa: ANN001
    return b"".join(SyncStream(response))
