from collections.abc import Iterator
from decimal import Decimal

import pytest

from billing.models import ModelPrice
from chat.models import ChatSession
from tests.fakes.llm_servers import FakeAnthropicServer, FakeOpenAIServer
from tests.fakes.searxng_server import FakeSearxng


def make_price(alias: str, *, active: bool = True) -> ModelPrice:
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
    return {"fast": make_price("fast"), "smart": make_price("smart"), "retired": make_price("retired", active=False)}


@pytest.fixture
def session(owner, prices) -> ChatSession:  # noqa: ANN001
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
