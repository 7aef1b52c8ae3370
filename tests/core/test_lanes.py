"""core.lanes: reads jump the queue of waiting writes, on the same threads."""

import threading
from concurrent.futures import CancelledError

import pytest

from core.lanes import LanedPool


def test_urgent_work_runs_before_waiting_ordinary_work():
    pool, gate, order = LanedPool(2, name="test"), threading.Event(), []
    busy = [pool.submit(gate.wait) for _ in range(2)]  # both threads taken
    writes = [pool.submit(order.append, f"write {n}") for n in range(3)]
    reads = [pool.submit(order.append, f"read {n}", urgent=True) for n in range(2)]
    gate.set()
    for future in busy + writes + reads:
        future.result(timeout=5)
    assert order[:2] == ["read 0", "read 1"]
    assert sorted(order[2:]) == ["write 0", "write 1", "write 2"]
    assert {thread.name for thread in threading.enumerate() if thread.name.startswith("test_")} == {"test_0", "test_1"}


def test_a_failure_reaches_the_caller_and_a_cancelled_wait_never_runs():
    pool, gate, ran = LanedPool(1, name="test-fail"), threading.Event(), []
    busy = pool.submit(gate.wait)
    gone = pool.submit(ran.append, "gone")
    assert gone.cancel()
    failing = pool.submit(int, "not a number")
    gate.set()
    busy.result(timeout=5)
    with pytest.raises(ValueError, match="invalid literal"):
        failing.result(timeout=5)
    with pytest.raises(CancelledError):
        gone.result()
    assert pool.submit(len, "abc").result(timeout=5) == 3
    assert ran == []
