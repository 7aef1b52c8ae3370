"""A thread pool with two lanes: work submitted as `urgent` runs before any ordinary
work still waiting. The web process runs reads (GET, HEAD, OPTIONS) in the urgent
lane, so an ordinary `GET /api/v1/users/me/wallet` during a burst of turn POSTs waits
for a free thread, not behind the whole burst (bench/concurrency.py's wallet p99).
The same number of threads as one pool: no more contention for the interpreter lock.
"""

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class LanedPool:
    def __init__(self, threads: int, name: str) -> None:
        self.threads, self.name = threads, name
        self._urgent: deque = deque()
        self._ordinary: deque = deque()
        self._ready = threading.Condition()
        self._started = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, urgent: bool = False) -> Future:  # noqa: ANN401
        future: Future = Future()
        with self._ready:
            if not self._started:  # at the first request, in the process that serves it (not before a fork)
                self._started = True
                for number in range(self.threads):
                    threading.Thread(target=self._work, name=f"{self.name}_{number}", daemon=True).start()
            (self._urgent if urgent else self._ordinary).append((future, fn, args))
            self._ready.notify()
        return future

    def _work(self) -> None:
        while True:
            with self._ready:
                while not (self._urgent or self._ordinary):
                    self._ready.wait()
                future, fn, args = (self._urgent or self._ordinary).popleft()
            if future.set_running_or_notify_cancel():  # False: its request went away while it waited
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:  # noqa: BLE001  handed to whoever awaits the future
                    future.set_exception(exc)
            del future, fn, args  # nothing of a request is kept while the thread is idle
