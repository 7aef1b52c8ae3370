from collections.abc import Iterator
from decimal import Decimal

import httpx2
import openai
import pytest

from accounts.services import api_key_create
from billing.models import ModelPrice
from billing.services import wallet_grant
from tests.chat.conftest import make_price

START_BALANCE = Decimal("100.00000000")


@pytest.fixture
def fast(db) -> ModelPrice:  # noqa: ANN001
    """The `fast` alias on the local provider (prices with 8 decimals, tests/chat)."""
    return make_price("fast")


@pytest.fixture
def raw_key(owner) -> str:  # noqa: ANN001
    wallet_grant(user=owner, amount=START_BALANCE, reason="test credits")
    _, key = api_key_create(user=owner, name="sdk")
    return key


@pytest.fixture
def base_url(live_server) -> str:  # noqa: ANN001
    return f"{live_server.url}/v1"


@pytest.fixture
def sdk(base_url: str, raw_key: str) -> Iterator[openai.OpenAI]:
    """The real `openai` SDK against this server (no retries: each would be a turn)."""
    client = openai.OpenAI(base_url=base_url, api_key=raw_key, max_retries=0, timeout=30)
    yield client
    client.close()


@pytest.fixture
def async_sdk(base_url: str, raw_key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key=raw_key, max_retries=0, timeout=60)


def raw_post(base_url: str, key: str, body: dict, *, accept: str = "application/json") -> httpx2.Response:
    headers = {"Authorization": f"Bearer {key}", "Accept": accept}
    return httpx2.post(f"{base_url}/chat/completions", json=body, headers=headers, timeout=30)


# The fake model servers of tests/chat (their fixtures set the providers' base URLs).
from tests.chat.conftest import fake_anthropic_server, fake_openai_server  # noqa: E402, F401
