"""POST sessions/{id}/turns and the turn reads on eager tasks: the
turn runs when its transaction commits, so these tests commit (transaction=True)."""

import uuid
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

import pytest

from billing.models import CreditHold, CreditTransaction
from chat import streaming
from chat.models import LLMCall, Message, Turn
from openai_api import shapes
from reporting.models import UsageDaily
from tests.chat.conftest import (
    START_BALANCE,
    expected_cost,
    local_tokens,
    make_price,
    post_turn,
    wallet_of,
)
from tests.reporting.factories import CallSpec, record_turn

TOKEN_CLASSES = ("cached_input_tokens", "cache_write_tokens", "reasoning_tokens")
NOW = datetime(2025, 1, 10, 12, tzinfo=UTC)

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_turn_completes_within_the_request_and_is_charged_exactly(owner_client, session, funded_owner):
    answer = post_turn(owner_client, session, "Hello there")
    assert answer.status_code == 201, answer.content
    body = answer.data
    assert body["status"] == "completed" and body["error"] == ""
    assert "Location" not in answer

    # The local provider's documented usage: 4 tokens a message plus ceil(chars / 4).
    tokens_in, tokens_out = 4 + local_tokens("Hello there"), local_tokens("Echo: Hello there")
    cost = expected_cost(tokens_in, tokens_out)
    assert body["credits_charged"] == f"{cost:.8f}"
    assert body["balance_after"] == f"{START_BALANCE - cost:.8f}"
    assert body["low_balance"] is False

    assert [(m["role"], m["content"]) for m in body["messages"]] == [
        ("user", "Hello there"),
        ("assistant", "Echo: Hello there"),
    ]
    assert body["messages"][0]["participant"] is None
    [call] = body["llm_calls"]
    assert (call["purpose"], call["model_alias"], call["input_tokens"], call["output_tokens"]) == (
        "reply",
        "fast",
        tokens_in,
        tokens_out,
    )
    assert (
        call["credits_burned"] == f"{cost.quantize(Decimal('0.0001'), rounding=ROUND_HALF_UP):.4f}"
        and call["used_fallback"] is False
    )
    assert body["tool_calls"] == []

    wallet = wallet_of(funded_owner)
    assert (wallet.balance, wallet.held) == (START_BALANCE - cost, Decimal("0"))
    debit = CreditTransaction.objects.get(kind="debit")
    assert (debit.reference, debit.amount, debit.balance_after) == (body["id"], -cost, START_BALANCE - cost)
    assert CreditHold.objects.get(reference=body["id"]).status == "settled"
    rollup = UsageDaily.objects.get(user=funded_owner, model_alias="fast")
    assert (rollup.calls, rollup.input_tokens, rollup.output_tokens) == (1, tokens_in, tokens_out)


def test_the_context_carries_the_system_prompt_and_earlier_turns(owner_client, session):
    session.system_prompt = "You are terse."
    session.save()
    post_turn(owner_client, session, "First question")
    second = post_turn(owner_client, session, "Second question").data
    # system + first user + first reply + second user, each 4 tokens of overhead.
    expected = sum(
        4 + local_tokens(t) for t in ("You are terse.", "First question", "Echo: First question", "Second question")
    )
    assert second["llm_calls"][0]["input_tokens"] == expected


def test_get_turn_and_list_turns_for_the_owner(owner_client, session):
    first = post_turn(owner_client, session, "one").data
    second = post_turn(owner_client, session, "two").data
    fetched = owner_client.get(f"/api/v1/turns/{first['id']}")
    assert fetched.status_code == 200 and fetched.data == first
    listed = owner_client.get(f"/api/v1/sessions/{session.pk}/turns")
    assert listed.status_code == 200
    assert [t["id"] for t in listed.data["results"]] == [second["id"], first["id"]]
    assert "messages" not in listed.data["results"][0]


def test_a_turn_shows_the_token_classes_of_each_call(owner_client, session):
    """GET turns/{id} shows each call's classes, as parts of its input and output."""
    [cached, plain] = record_turn(
        session=session,
        calls=[
            CallSpec("fast", NOW, 5000, 900, cached_input_tokens=4000, cache_write_tokens=600, reasoning_tokens=700),
            CallSpec("fast", NOW, 30, 10),
        ],
    )
    body = owner_client.get(f"/api/v1/turns/{cached.turn_id}").data
    classes = [
        {name: call[name] for name in ("input_tokens", *TOKEN_CLASSES, "output_tokens")} for call in body["llm_calls"]
    ]
    assert classes == [
        {"input_tokens": 5000, "cached_input_tokens": 4000, "cache_write_tokens": 600, "output_tokens": 900,
         "reasoning_tokens": 700},
        {"input_tokens": 30, "cached_input_tokens": 0, "cache_write_tokens": 0, "output_tokens": 10,
         "reasoning_tokens": 0},
    ]  # fmt: skip
    assert [call["id"] for call in body["llm_calls"]] == [cached.pk, plain.pk]


def test_the_done_event_carries_the_token_classes_the_v1_usage_is_read_from(session, monkeypatch):
    """The worker publishes the finished turn with `done`; a waiting /v1 request builds
    its usage (cached_tokens, reasoning_tokens) from that payload, not from the database."""
    calls = record_turn(
        session=session,
        calls=[
            CallSpec("fast", NOW, 2000, 500, cached_input_tokens=1500, cache_write_tokens=200, reasoning_tokens=300),
            CallSpec("fast", NOW, 100, 50, cached_input_tokens=20, reasoning_tokens=50),
        ],
    )
    published = []
    monkeypatch.setattr(streaming, "publish", lambda turn_id, event, data=None: published.append((event, data)))
    streaming.publish_done(turn=calls[0].turn, messages=[], llm_calls=calls, tool_calls=[])
    [(event, data)] = published
    assert event == "done"
    assert [
        (c["cached_input_tokens"], c["cache_write_tokens"], c["reasoning_tokens"]) for c in data["turn"]["llm_calls"]
    ] == [
        (1500, 200, 300),
        (20, 0, 50),
    ]
    usage = shapes.usage(data["turn"])
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (2100, 550)
    assert usage["prompt_tokens_details"]["cached_tokens"] == 1520
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 350


def test_someone_elses_session_and_turn_are_404(owner_client, other_client, session):
    turn = post_turn(owner_client, session, "private words").data
    assert post_turn(other_client, session, "let me in").status_code == 404
    assert other_client.get(f"/api/v1/sessions/{session.pk}/turns").status_code == 404
    for path in (f"/api/v1/turns/{turn['id']}", f"/api/v1/turns/{turn['id']}/stream"):
        answer = other_client.get(path)
        assert answer.status_code == 404 and b"private words" not in answer.content
    assert Turn.objects.count() == 1
    assert owner_client.get(f"/api/v1/turns/{uuid.uuid4()}").status_code == 404


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "blank"),
        ("   \n ", "blank"),
        ("x" * 32_001, "no more than 32000 characters"),
        (123, "Must be a string"),
        (True, "Must be a string"),
        (["hi"], "Must be a string"),
    ],  # fmt: skip
)
def test_bad_content_is_400_naming_content(owner_client, session, content, message):
    answer = post_turn(owner_client, session, content)
    assert answer.status_code == 400
    assert (
        list(answer.data["error"]["fields"]) == ["content"] and message in answer.data["error"]["fields"]["content"][0]
    )
    assert not Turn.objects.exists() and not CreditHold.objects.exists()


def test_content_of_exactly_32000_characters_is_accepted(owner_client, session, settings):
    # 32,000 bytes counted (the default rule), and the framing.
    session.model_alias = make_price("big", context_tokens=40_000, max_output_tokens=100).alias
    session.save()
    assert post_turn(owner_client, session, "y" * 32_000).status_code == 201


def test_content_too_long_for_the_models_window_is_400(owner_client, session):
    small = make_price("tiny", context_tokens=512, max_output_tokens=256)
    answer = post_turn(owner_client, session, "z" * 2_000, model_alias=small.alias)
    assert answer.status_code == 400 and list(answer.data["error"]["fields"]) == ["content"]
    assert "tiny" in answer.data["error"]["message"]


@pytest.mark.parametrize("alias", ["retired", "unknown"])
def test_inactive_or_unknown_alias_is_400_naming_model_alias(owner_client, session, alias):
    make_price("retired", active=False)
    answer = post_turn(owner_client, session, "hi", model_alias=alias)
    assert answer.status_code == 400 and list(answer.data["error"]["fields"]) == ["model_alias"]
    assert not Turn.objects.exists()


def test_turn_alias_overrides_the_session_default(owner_client, session):
    make_price("smart", input_credits_per_mtok=Decimal("1000"), output_credits_per_mtok=Decimal("2000"))
    body = post_turn(owner_client, session, "hi", model_alias="smart").data
    assert body["model_alias"] == "smart" and body["llm_calls"][0]["model_alias"] == "smart"
    tokens_in, tokens_out = 4 + 1, local_tokens("Echo: hi")
    assert (
        body["credits_charged"]
        == f"{expected_cost(tokens_in, tokens_out, in_price=Decimal(1000), out_price=Decimal(2000)):.8f}"
    )


def test_repeated_idempotency_key_returns_the_same_turn_and_charges_once(owner_client, session, funded_owner):
    first = post_turn(owner_client, session, "once", idempotency_key="key-1")
    again = post_turn(owner_client, session, "once", idempotency_key="key-1")
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.data["id"] == first.data["id"] and again["Idempotent-Replayed"] == "true"
    assert Turn.objects.count() == 1 and Message.objects.filter(role="user").count() == 1
    assert CreditTransaction.objects.filter(kind="debit").count() == 1
    assert wallet_of(funded_owner).balance == START_BALANCE - Decimal(first.data["credits_charged"])


def test_idempotency_key_reused_for_a_different_request_is_422(owner_client, session):
    post_turn(owner_client, session, "once", idempotency_key="key-2")
    answer = post_turn(owner_client, session, "something else", idempotency_key="key-2")
    assert answer.status_code == 422
    assert Turn.objects.count() == 1


def test_idempotency_keys_are_per_user(owner_client, other_client, other_user, session, price):
    from chat.models import ChatSession

    theirs = ChatSession.objects.create(user=other_user, model_alias="fast")
    mine = post_turn(owner_client, session, "hi", idempotency_key="shared")
    other = post_turn(other_client, theirs, "hi", idempotency_key="shared")
    assert (mine.status_code, other.status_code) == (201, 201)
    assert mine.data["id"] != other.data["id"]


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "ключ"])
def test_bad_idempotency_key_is_400_naming_it(owner_client, session, key):
    answer = owner_client.post(
        f"/api/v1/sessions/{session.pk}/turns", {"content": "hi"}, format="json", HTTP_IDEMPOTENCY_KEY=key
    )
    assert answer.status_code == 400 and list(answer.data["error"]["fields"]) == ["Idempotency-Key"]
    assert not Turn.objects.exists()


def test_block_mode_refuses_a_turn_the_wallet_cannot_cover(owner_client, owner, price, settings):
    from chat.models import ChatSession

    settings.BILLING_ENFORCEMENT = "block"
    session = ChatSession.objects.create(user=owner, model_alias="fast")  # owner has 0 credits
    answer = post_turn(owner_client, session, "hi")
    assert answer.status_code == 402 and answer.data["error"]["code"] == "insufficient_credits"
    assert not Turn.objects.exists() and not Message.objects.exists() and not CreditHold.objects.exists()
    assert (wallet_of(owner).balance, wallet_of(owner).held) == (Decimal("0"), Decimal("0"))


def test_warn_mode_runs_the_turn_and_flags_the_low_balance(owner_client, owner, price, settings):
    from chat.models import ChatSession

    settings.BILLING_ENFORCEMENT = "warn"
    session = ChatSession.objects.create(user=owner, model_alias="fast")
    body = post_turn(owner_client, session, "hi").data
    cost = expected_cost(5, local_tokens("Echo: hi"))
    assert body["status"] == "completed" and body["low_balance"] is True
    assert body["balance_after"] == f"{-cost:.8f}"
    assert wallet_of(owner).balance == -cost and wallet_of(owner).held == 0


def test_the_hold_is_the_worst_case_and_completion_releases_the_rest(owner_client, session, funded_owner):
    # With no worker, the turn waits queued holding its worst case: the prompt counted
    # by the price's rule (bytes, framed) plus max_output_tokens at the alias's prices.
    from django.db import transaction

    from chat.services import turn_create

    with transaction.atomic():
        turn, _ = turn_create(user=funded_owner, session=session, content="Hello there")
        hold = CreditHold.objects.get(reference=str(turn.pk))
        assert hold.amount == expected_cost(8 + 8 + len("Hello there"), 256)
        assert wallet_of(funded_owner).held == hold.amount
        # The debit and the release happen on completion, once the transaction commits (eager).
    turn.refresh_from_db()
    assert turn.status == "completed"
    hold.refresh_from_db()
    assert hold.status == "settled" and wallet_of(funded_owner).held == 0


def test_prefer_wait_is_acknowledged(owner_client, session):
    answer = post_turn(owner_client, session, "hi", prefer="wait=5")
    assert answer.status_code == 201 and answer["Preference-Applied"] == "wait=5"


def test_a_provider_failure_fails_the_turn_unbilled_with_a_readable_error(
    owner_client, session, funded_owner, fake_openai
):
    from tests.fakes.llm_servers import Error

    make_price("gpt", provider="openai", provider_model="gpt-test")
    fake_openai.script(*[Error(500, "model on fire")] * 3)
    body = post_turn(owner_client, session, "hi", model_alias="gpt").data
    assert body["status"] == "failed"
    assert body["error"].startswith("The openai provider answered HTTP 500 (up to 3 attempts)")
    assert body["credits_charged"] == "0.00000000"
    assert body["balance_after"] == f"{START_BALANCE:.8f}"
    [call] = body["llm_calls"]
    assert (call["status"], call["input_tokens"], call["output_tokens"], call["credits_burned"]) == (
        "failed",
        0,
        0,
        "0.0000",
    )
    assert [m["role"] for m in body["messages"]] == ["user"]
    assert not CreditTransaction.objects.filter(kind="debit").exists()
    assert CreditHold.objects.get(reference=body["id"]).status == "released"
    assert wallet_of(funded_owner).held == 0


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_turns_through_real_sdks_are_metered_from_reported_usage(
    owner_client, session, funded_owner, fake_openai, fake_anthropic, provider
):
    from tests.fakes.llm_servers import Reply

    server = fake_openai if provider == "openai" else fake_anthropic
    make_price("remote", provider=provider, provider_model="model-x")
    server.script(Reply(text="Remote answer.", input_tokens=1234, output_tokens=567))
    body = post_turn(owner_client, session, "hi", model_alias="remote").data
    assert body["status"] == "completed"
    assert body["messages"][-1]["content"] == "Remote answer."
    assert (body["llm_calls"][0]["input_tokens"], body["llm_calls"][0]["output_tokens"]) == (1234, 567)
    assert body["credits_charged"] == f"{expected_cost(1234, 567):.8f}"
    assert LLMCall.objects.get().provider == provider


def test_a_chat_turn_into_a_session_of_the_openai_endpoint_is_refused(funded_owner, price):
    from accounts.services import api_key_create
    from chat.models import ChatSession
    from tests.conftest import client_for

    key, _ = api_key_create(user=funded_owner, name="sdk")
    endpoint_session = ChatSession.objects.create(
        user=funded_owner, model_alias=price.alias, source=ChatSession.Source.OPENAI, api_key=key
    )
    answer = post_turn(client_for(funded_owner), endpoint_session, "Hello")
    assert answer.status_code == 422
    assert "OpenAI-compatible endpoint" in answer.json()["error"]["message"]
    assert not Turn.objects.exists() and wallet_of(funded_owner).held == 0
