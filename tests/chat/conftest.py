import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import ROUND_CEILING, Decimal
from types import SimpleNamespace

import pytest
from rest_framework.test import APIClient

from billing.models import ModelPrice, Wallet
from billing.services import wallet_grant
from chat import leases
from chat.engine import metering
from chat.models import ChatSession, Turn
from config.celery import app as celery_app
from tests.conftest import WorkerProcess
from tests.fakes.llm_servers import FakeAnthropicServer, FakeOpenAIServer
from tests.fakes.searxng_server import FakeSearxng

# Prices with 8 decimals, so a call's cost needs the round-up at the 8th place.
IN_PRICE = Decimal("3.33333333")
OUT_PRICE = Decimal("7.77777777")
START_BALANCE = Decimal("100.00000000")


def expected_cost(input_tokens: int, output_tokens: int, *, in_price: Decimal = IN_PRICE,
                  out_price: Decimal = OUT_PRICE) -> Decimal:  # fmt: skip
    """The pricing rule, computed here independently: rounded up at the 8th place."""
    exact = (Decimal(input_tokens) * in_price + Decimal(output_tokens) * out_price) / Decimal(1_000_000)
    return exact.quantize(Decimal("0.00000001"), rounding=ROUND_CEILING)


def local_tokens(text: str) -> int:
    """The local provider's documented count: 4 characters a token, rounded up."""
    return -(-len(text) // 4)


def make_price(alias: str = "fast", *, provider: str = "local", provider_model: str = "echo", **extra) -> ModelPrice:
    values = {
        "input_credits_per_mtok": IN_PRICE, "output_credits_per_mtok": OUT_PRICE,
        "context_tokens": 8192, "max_output_tokens": 256,
    }  # fmt: skip
    values.update(extra)
    return ModelPrice.objects.create(alias=alias, provider=provider, provider_model=provider_model, **values)


@pytest.fixture
def price(db) -> ModelPrice:  # noqa: ANN001
    return make_price()


@pytest.fixture
def funded_owner(owner):  # noqa: ANN001, ANN201
    wallet_grant(user=owner, amount=START_BALANCE, reason="test credits")
    return owner


@pytest.fixture
def session(funded_owner, price) -> ChatSession:  # noqa: ANN001
    return ChatSession.objects.create(user=funded_owner, title="Owner's chat", model_alias=price.alias)


def wallet_of(user) -> Wallet:  # noqa: ANN001
    return Wallet.objects.get(user=user)


def post_turn(client: APIClient, session: ChatSession, content: str = "Hello", **extra):  # noqa: ANN201
    headers = {}
    for name in ("idempotency_key", "prefer"):
        if name in extra:
            headers["HTTP_" + name.upper()] = extra.pop(name)
    return client.post(f"/api/v1/sessions/{session.pk}/turns", {"content": content, **extra}, format="json", **headers)


def wait_for(predicate: Callable[[], bool], *, timeout: float = 30.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def turn_status(turn_id) -> str:  # noqa: ANN001
    return Turn.objects.values_list("status", flat=True).get(pk=turn_id)


# --- fake model servers ------------------------------------------------------------


@pytest.fixture
def fake_openai(settings) -> Iterator[FakeOpenAIServer]:  # noqa: ANN001
    server = FakeOpenAIServer().start()
    settings.OPENAI_BASE_URL = server.base_url
    settings.OPENAI_API_KEY = "sk-test-openai"
    settings.LLM_MAX_RETRIES = 2
    settings.LLM_TIMEOUT_SECONDS = 5.0
    yield server
    server.stop()


@pytest.fixture
def fake_anthropic(settings) -> Iterator[FakeAnthropicServer]:  # noqa: ANN001
    server = FakeAnthropicServer().start()
    settings.ANTHROPIC_BASE_URL = server.base_url
    settings.ANTHROPIC_API_KEY = "sk-ant-test"
    settings.LLM_MAX_RETRIES = 2
    settings.LLM_TIMEOUT_SECONDS = 5.0
    yield server
    server.stop()


# --- a worker with a different environment -----------------------------------------


@pytest.fixture
def worker_with_env(celery_worker) -> Iterator[Callable[..., WorkerProcess]]:  # noqa: ANN001
    """Restarts the session's worker with extra environment (a fake server's URL, a
    provider latency); the original environment comes back for later tests."""
    original = dict(celery_worker.env)

    def restart(**env: str) -> WorkerProcess:
        celery_worker.stop()
        celery_worker.env = {**original, **env}
        celery_worker.start()
        return celery_worker

    yield restart
    if celery_worker.env != original:
        celery_worker.stop()
        celery_worker.env = original  # the next `celery_worker` use starts it again


@contextmanager
def parked(settings) -> Iterator[None]:  # noqa: ANN001
    """run_turn goes to a queue no worker reads: every accepted turn keeps its hold."""
    settings.CELERY_TASK_ALWAYS_EAGER = False
    celery_app.conf.task_always_eager = False
    # Celery builds its router once: swap it, and put the original back afterwards.
    original_router = celery_app.amqp.router
    celery_app.conf.task_routes = {"chat.run_turn": {"queue": "parley-test-parked"}}
    celery_app.amqp.flush_routes()
    celery_app.amqp.router = celery_app.amqp.Router()
    try:
        yield
    finally:
        celery_app.conf.task_routes = None
        celery_app.amqp.flush_routes()
        celery_app.amqp.router = original_router
        settings.CELERY_TASK_ALWAYS_EAGER = True
        celery_app.conf.task_always_eager = True
        with celery_app.connection_for_write() as conn:
            conn.default_channel.queue_purge("parley-test-parked")


@pytest.fixture
def parked_turns(settings) -> Iterator[None]:  # noqa: ANN001
    with parked(settings):
        yield


# --- participants, modes, tools and files (formerly tests/chat_modes) ----------------


def make_local_price(alias: str, *, active: bool = True) -> ModelPrice:
    """A local-provider price at 1 and 2 credits per million tokens (the modes' tests)."""
    return ModelPrice.objects.create(
        alias=alias,
        provider=ModelPrice.Provider.LOCAL,
        provider_model=f"local-{alias}",
        input_credits_per_mtok=Decimal("1.00000000"),
        output_credits_per_mtok=Decimal("2.00000000"),
        active=active,
    )


@pytest.fixture
def prices(db) -> dict[str, ModelPrice]:  # noqa: ANN001
    """Two active aliases and one retired one."""
    return {
        "fast": make_local_price("fast"),
        "smart": make_local_price("smart"),
        "retired": make_local_price("retired", active=False),
    }


@pytest.fixture
def panel_session(owner, prices) -> ChatSession:  # noqa: ANN001
    """The owner's session on `prices` (unfunded), for participants, modes and files."""
    return ChatSession.objects.create(user=owner, title="Owner's session", model_alias="fast")


@pytest.fixture
def other_session(other_user, prices) -> ChatSession:  # noqa: ANN001
    return ChatSession.objects.create(user=other_user, title="Someone else's session", model_alias="fast")


@pytest.fixture
def searxng(settings) -> Iterator[FakeSearxng]:  # noqa: ANN001
    with FakeSearxng() as fake:
        settings.WEB_SEARCH_URL = fake.url
        yield fake


@pytest.fixture
def fake_openai_server(settings) -> Iterator[FakeOpenAIServer]:  # noqa: ANN001
    server = FakeOpenAIServer().start()
    settings.OPENAI_BASE_URL, settings.OPENAI_API_KEY = server.base_url, "sk-test-openai"
    settings.LLM_MAX_RETRIES, settings.LLM_TIMEOUT_SECONDS = 0, 5.0
    yield server
    server.stop()


@pytest.fixture
def fake_anthropic_server(settings) -> Iterator[FakeAnthropicServer]:  # noqa: ANN001
    server = FakeAnthropicServer().start()
    settings.ANTHROPIC_BASE_URL, settings.ANTHROPIC_API_KEY = server.base_url, "sk-ant-test"
    settings.LLM_MAX_RETRIES, settings.LLM_TIMEOUT_SECONDS = 0, 5.0
    yield server
    server.stop()


# --- streaming and the owner's Stop, in-process -------------------------------------


def calls_stream(monkeypatch, enabled: bool = True) -> list[tuple[str, dict]]:  # noqa: ANN001
    """Whether the turn's calls stream, whatever this run's services: with Redis or
    turns in process they do, with eager turns in the request they are plain;
    llm_call_run's `streaming` is made to answer `enabled` (what it would publish is
    kept in the list returned)."""
    published: list[tuple[str, dict]] = []

    def publish(turn_id, event: str, data: dict | None = None) -> None:  # noqa: ANN001
        published.append((event, data or {}))

    monkeypatch.setattr(metering, "streaming", SimpleNamespace(live=lambda: enabled, publish=publish))
    return published


@pytest.fixture
def streamed(monkeypatch) -> list[tuple[str, dict]]:  # noqa: ANN001
    return calls_stream(monkeypatch)


@pytest.fixture
def owner_stops_at(monkeypatch):  # noqa: ANN001, ANN201
    """`owner_stops_at(n)`: the owner presses Stop as the n-th streamed piece arrives.
    It reaches the run as a worker's lease keeper delivers it (leases.cancel_received);
    the run asks at every piece (leases.stop_requested), as it always does."""
    asked: list[str] = []

    def arm(n: int) -> list[str]:
        def stop_requested(turn_id) -> bool:  # noqa: ANN001
            asked.append(str(turn_id))
            if len(asked) == n:
                leases.cancel_received(str(turn_id))
            return leases.stop_requested(turn_id)

        monkeypatch.setattr(metering, "stop_requested", stop_requested)
        return asked

    return arm
