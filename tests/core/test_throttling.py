"""DRF's rates with the window in Redis: one atomic round trip per request, so
requests of one client that arrive together cannot all pass (DRF's own throttle
reads the history, then writes it back)."""

import threading
import time
from types import SimpleNamespace

import pytest
from django.core.cache import cache

from core.cache import FailOpenRedisCache
from core.throttling import UserRateThrottle
from tests.conftest import client_for

pytestmark = pytest.mark.redis


@pytest.fixture
def rates(monkeypatch):
    monkeypatch.setattr(UserRateThrottle, "THROTTLE_RATES", {"user": "5/min", "anon": "5/min"})


def request_of(user_id: int, membership_id: int | None = None) -> SimpleNamespace:
    return SimpleNamespace(
        user=SimpleNamespace(is_authenticated=True, pk=user_id), auth=SimpleNamespace(membership_id=membership_id),
        META={}, headers={},
    )  # fmt: skip


def test_requests_that_arrive_together_get_exactly_the_rate(rates):
    assert hasattr(cache, "window_take")  # the Redis cache: this test is about its window
    ready, allowed = threading.Barrier(20), []

    def ask() -> None:
        throttle = UserRateThrottle()
        ready.wait()
        allowed.append(throttle.allow_request(request_of(7001), None))

    threads = [threading.Thread(target=ask) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert allowed.count(True) == 5
    assert UserRateThrottle().allow_request(request_of(7002), None)  # another client has its own window


def test_each_member_of_an_organization_has_a_window_of_their_own(rates):
    """An organization's keys share its account; its members are people, each with the rate."""
    for _ in range(5):
        assert UserRateThrottle().allow_request(request_of(7010, membership_id=1), None)
    assert not UserRateThrottle().allow_request(request_of(7010, membership_id=1), None)
    assert UserRateThrottle().allow_request(request_of(7010, membership_id=2), None)
    assert UserRateThrottle().allow_request(request_of(7010), None)  # a key of the account itself


def test_a_refusal_waits_until_the_oldest_request_leaves_the_window(rates, monkeypatch):
    clock = [1_000_000.0]
    monkeypatch.setattr(UserRateThrottle, "timer", lambda self: clock[0])
    for second in range(5):
        clock[0] = 1_000_000.0 + second
        assert UserRateThrottle().allow_request(request_of(7003), None)
    clock[0] = 1_000_010.0
    refused = UserRateThrottle()
    assert not refused.allow_request(request_of(7003), None)
    assert refused.wait() == pytest.approx(50.0)  # the first request, at 0 s, leaves at 60 s
    clock[0] = 1_000_060.5
    assert UserRateThrottle().allow_request(request_of(7003), None)


def test_a_rate_of_zero_refuses_everything_for_a_whole_window(monkeypatch):
    monkeypatch.setattr(UserRateThrottle, "THROTTLE_RATES", {"user": "0/min", "anon": "0/min"})
    refused = UserRateThrottle()
    assert not refused.allow_request(request_of(7004), None)
    assert refused.wait() == pytest.approx(60.0)


def test_the_api_answers_429_with_retry_after_over_the_rate(owner, rates):
    client = client_for(owner)
    codes = [client.get("/api/v1/users/me").status_code for _ in range(6)]
    assert codes == [200] * 5 + [429]
    refused = client.get("/api/v1/users/me")
    assert refused.json()["error"]["code"] == "throttled"
    assert 0 < int(refused["Retry-After"]) <= 60


def test_redis_away_lets_requests_through():
    away = FailOpenRedisCache("redis://127.0.0.1:1/0", {"OPTIONS": {"socket_connect_timeout": 0.2}})
    started = time.monotonic()
    assert away.window_take("throttle_user_1:window", now=time.time(), seconds=60, limit=1) is None
    assert time.monotonic() - started < 2
