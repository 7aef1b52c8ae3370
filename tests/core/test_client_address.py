"""The address throttles count by (issue 29): the socket's peer unless
TRUSTED_PROXY_COUNT says how many proxies in front append to X-Forwarded-For. A
client's own X-Forwarded-For changes nothing: registering with a new header per
request no longer beats the anonymous throttle."""

from decimal import Decimal
from types import SimpleNamespace

import pytest
from rest_framework.throttling import SimpleRateThrottle

from accounts.models import User
from billing.models import Wallet
from core.throttling import client_address

pytestmark = pytest.mark.django_db

REGISTER = "/api/v1/auth/register"


@pytest.fixture
def registration(settings, monkeypatch):  # noqa: ANN001, ANN201
    """Registration open with signup credits, and an anonymous throttle of 3 a minute."""
    settings.ALLOW_REGISTRATION = True
    settings.SIGNUP_CREDITS = 5
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", {"anon": "3/min", "user": "100000/min"})


def register(client, n: int, **headers) -> int:  # noqa: ANN001
    body = {"email": f"signup{n}@example.com", "password": "a-long-passphrase-1"}
    return client.post(REGISTER, body, format="json", **headers).status_code


def funded_accounts() -> int:
    return Wallet.objects.filter(balance=Decimal("5")).count()


def test_a_new_forwarded_for_per_request_does_not_beat_the_throttle(anon_client, registration, settings):
    assert settings.TRUSTED_PROXY_COUNT == 0  # the default: nothing in front
    codes = [register(anon_client, n, HTTP_X_FORWARDED_FOR=f"203.0.113.{n}") for n in range(5)]

    assert codes == [201, 201, 201, 429, 429]
    assert User.objects.count() == funded_accounts() == 3


def test_without_a_proxy_the_socket_peer_is_the_client(anon_client, registration):
    codes = [register(anon_client, n, REMOTE_ADDR="192.0.2.1") for n in range(4)]
    codes.append(register(anon_client, 4, REMOTE_ADDR="192.0.2.2"))  # another machine: its own window

    assert codes == [201, 201, 201, 429, 201]


def test_behind_one_proxy_the_rightmost_address_decides(anon_client, registration, settings):
    settings.TRUSTED_PROXY_COUNT = 1
    # The proxy (the socket's peer, 10.0.0.1) appends the address it saw: 198.51.100.7.
    # Whatever the client wrote before it changes nothing.
    spoofed = [f"203.0.113.{n}, 198.51.100.{n}, 198.51.100.7" for n in range(5)]
    codes = [register(anon_client, n, REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR=spoofed[n]) for n in range(5)]
    assert codes == [201, 201, 201, 429, 429]

    # Another client behind the same proxy has a window of its own.
    assert register(anon_client, 5, REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="198.51.100.8") == 201
    assert User.objects.count() == funded_accounts() == 4


def request_with(remote_addr: str, forwarded_for: str | None = None) -> SimpleNamespace:
    meta = {"REMOTE_ADDR": remote_addr}
    if forwarded_for is not None:
        meta["HTTP_X_FORWARDED_FOR"] = forwarded_for
    return SimpleNamespace(META=meta)


@pytest.mark.parametrize(
    ("count", "forwarded_for", "address"),
    [
        (0, None, "10.0.0.1"),
        (0, "203.0.113.9", "10.0.0.1"),  # no proxy: the header is the client's own words
        (1, None, "10.0.0.1"),  # not through the proxy: the socket's peer
        (1, "203.0.113.9", "203.0.113.9"),
        (1, "1.1.1.1, 203.0.113.9", "203.0.113.9"),
        (1, " 1.1.1.1 ,203.0.113.9 ", "203.0.113.9"),
        (2, "1.1.1.1, 203.0.113.9, 172.16.0.5", "203.0.113.9"),  # what the outer proxy saw
        (2, "203.0.113.9", "10.0.0.1"),  # fewer entries than proxies: the socket's peer
        (2, "", "10.0.0.1"),
    ],
)
def test_client_address(settings, count, forwarded_for, address):
    settings.TRUSTED_PROXY_COUNT = count
    assert client_address(request_with("10.0.0.1", forwarded_for)) == address
