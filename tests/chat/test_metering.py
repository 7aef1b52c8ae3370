"""The metering's two warnings (chat.engine.metering): a model that reports no usage
is billed on the count of its price's rule, with one warning per alias; a provider
that reports more than was held is charged what it reports, and the overrun is
logged with the alias and counted (parley_hold_overruns_total)."""

import logging

import pytest

from billing.services import model_price_set
from chat.engine import metering
from chat.llm.counting import count_text
from chat.metrics import HOLD_OVERRUNS
from chat.models import ChatSession, LLMCall, Turn
from tests.chat.engine_support import post_turn
from tests.fakes.llm_servers import Reply

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def price(db):  # noqa: ANN001, ANN201
    return model_price_set(
        alias="quiet", provider="openai", provider_model="model", input_credits_per_mtok="3",
        output_credits_per_mtok="15", max_output_tokens=100,
    )  # fmt: skip


def test_a_model_without_usage_is_billed_on_the_count_and_warned_about_once(
    owner_client, funded_owner, price, fake_openai_server, caplog, monkeypatch
):
    monkeypatch.setattr(metering, "_WARNED_UNREPORTED", set())
    session = ChatSession.objects.create(user=funded_owner, model_alias="quiet")
    fake_openai_server.script(Reply(text="中文 reply", include_usage=False), Reply(text="again", include_usage=False))
    with caplog.at_level(logging.WARNING, logger="chat.engine.metering"):
        post_turn(owner_client, session, "first")
        post_turn(owner_client, session, "second")
    first, second = LLMCall.objects.order_by("id")
    assert (first.usage_reported, first.output_tokens) == (False, count_text("中文 reply", "bytes"))
    assert first.input_tokens > len("first") and first.cost > 0
    assert second.output_tokens == len("again")
    warnings = [r for r in caplog.records if "reported no usage" in r.getMessage()]
    assert len(warnings) == 1 and "quiet" in warnings[0].getMessage()


def test_a_provider_reporting_more_than_was_held_is_charged_its_report_and_the_overrun_counted(
    owner_client, funded_owner, price, fake_openai_server, caplog
):
    session = ChatSession.objects.create(user=funded_owner, model_alias="quiet")
    before = HOLD_OVERRUNS.labels(alias="quiet")._value.get()
    fake_openai_server.script(Reply(text="hi", input_tokens=1_000_000, output_tokens=5))
    with caplog.at_level(logging.WARNING, logger="chat.engine.metering"):
        body = post_turn(owner_client, session, "hello").data
    call = LLMCall.objects.get()
    assert call.input_tokens == 1_000_000  # the provider's bill is the truth
    assert Turn.objects.get().credits_charged == call.cost and body["credits_charged"] == f"{call.cost:.8f}"
    assert HOLD_OVERRUNS.labels(alias="quiet")._value.get() == before + 1
    assert any("model alias quiet reported 1000000 input" in r.getMessage() for r in caplog.records)
