"""A hold bounds what its call can cost, whatever the text and the tools (the
property of chat.llm.counting and billing.pricing.cost_bound): random Unicode (CJK,
emoji, code, control characters), random tool calls and results, and up to 20
random tool definitions go through the real SDKs to fake upstreams that report the
real count of each counting rule for what they received, in token classes, and the
most output they were allowed. For every rule the settled charge never exceeds the
hold, on /v1 requests and on chat turns with a history.

The upstreams' counts: an OpenAI upstream counts as OpenAI documents it (3 tokens a
message plus its role, the content, each tool call's id, name and arguments, 3 for
the reply; tool definitions as their compact JSON plus a wrapper) with the rule's
encoding; a byte-level upstream (Anthropic, or an open model behind an
OpenAI-compatible server) at its worst, one token per UTF-8 byte of every text, 4
special tokens a message and Anthropic's 346-token tool-use prompt."""

import json
from dataclasses import replace
from decimal import Decimal

import pytest
from django.core.management import call_command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.models import CreditHold
from billing.services import model_price_set, wallet_grant
from chat.llm import ChatMessage, ToolCallRequest
from chat.llm.counting import BYTES, CL100K_BASE, O200K_BASE, encoding
from chat.models import ChatSession, LLMCall, Message, Turn
from chat.services import turn_create
from chat.services.completions import CompletionRequest, completion_turn_create
from core.text import storable
from tests.fakes.llm_servers import FakeAnthropicServer, FakeOpenAIServer, Reply

pytestmark = pytest.mark.django_db(transaction=True)

# Rule, provider: OpenAI's encodings behind OpenAI, bytes behind both wire formats.
CASES = [(O200K_BASE, "openai"), (CL100K_BASE, "openai"), (BYTES, "openai"), (BYTES, "anthropic")]
ANTHROPIC_TOOL_PROMPT = 346


def encoded(rule: str):  # noqa: ANN201
    """The upstream's own tokenizer: tiktoken's encoding, or one token a byte."""
    if rule == BYTES:
        return lambda text: len((text or "").encode("utf-8", "surrogatepass"))
    return lambda text: len(encoding(rule).encode_ordinary(text or ""))


def openai_count(body: dict, rule: str) -> int:
    tokens = encoded(rule)
    total = 3
    for message in body["messages"]:
        total += 3 + tokens(message["role"])
        content = message.get("content")
        total += tokens(content) if isinstance(content, str) else 0
        total += tokens(message.get("tool_call_id"))
        for call in message.get("tool_calls") or ():
            total += 3 + tokens(call["id"]) + tokens(call["function"]["name"]) + tokens(call["function"]["arguments"])
    tools = body.get("tools") or ()
    if tools:
        total += 12 + sum(
            7 + tokens(json.dumps(t["function"], ensure_ascii=False, separators=(",", ":"))) for t in tools
        )
    return total


def anthropic_count(body: dict) -> int:
    tokens = encoded(BYTES)
    total = 4 + tokens(body.get("system"))
    for message in body["messages"]:
        total += 4
        for block in message["content"]:
            if block["type"] == "text":
                total += tokens(block["text"])
            elif block["type"] == "tool_use":
                total += tokens(block["id"]) + tokens(block["name"])
                total += tokens(json.dumps(block["input"], ensure_ascii=False, separators=(",", ":")))
            elif block["type"] == "tool_result":
                total += tokens(block["tool_use_id"]) + tokens(block["content"])
    tools = body.get("tools") or ()
    if tools:
        total += ANTHROPIC_TOOL_PROMPT
        total += sum(4 + tokens(json.dumps(tool, ensure_ascii=False, separators=(",", ":"))) for tool in tools)
    return total


class Counting:
    """Answers every request with the real count of what it received, split into
    classes (`split`: shares read from and written to the cache), and all the
    output it was allowed."""

    rule = BYTES
    split = (0.0, 0.0)

    def _stopped(self, reply: Reply, request: dict) -> Reply:
        count = anthropic_count(request) if isinstance(self, FakeAnthropicServer) else openai_count(request, self.rule)
        read = int(count * self.split[0])
        written = int((count - read) * self.split[1])
        output = request.get("max_tokens") or request.get("max_completion_tokens")
        return replace(
            reply, text="ok", input_tokens=count, cached_input_tokens=read, cache_write_tokens=written,
            output_tokens=output, reasoning_tokens=output // 2,
        )  # fmt: skip


class CountingOpenAI(Counting, FakeOpenAIServer):
    pass


class CountingAnthropic(Counting, FakeAnthropicServer):
    pass


@pytest.fixture
def upstreams(settings):  # noqa: ANN001, ANN201
    servers = {"openai": CountingOpenAI().start(), "anthropic": CountingAnthropic().start()}
    settings.OPENAI_BASE_URL, settings.OPENAI_API_KEY = servers["openai"].base_url, "sk-test"
    settings.ANTHROPIC_BASE_URL, settings.ANTHROPIC_API_KEY = servers["anthropic"].base_url, "sk-ant-test"
    settings.LLM_MAX_RETRIES, settings.LLM_TIMEOUT_SECONDS = 0, 10.0
    settings.BILLING_ENFORCEMENT = "block"
    yield servers
    for server in servers.values():
        server.stop()


def price_of(rule: str, provider: str):  # noqa: ANN201
    # Cache writes dearer than input, reads cheaper, a tier: the bound takes each at its worst.
    return model_price_set(
        alias=f"{provider}-{rule}", provider=provider, provider_model="model", input_credits_per_mtok="3.33333333",
        output_credits_per_mtok="7.77777777", cached_input_credits_per_mtok="0.33333333",
        cache_write_credits_per_mtok="4.16666667", tier_threshold_tokens=20_000, tier_input_credits_per_mtok="6.5",
        tier_output_credits_per_mtok="9.75", context_tokens=2_000_000, max_output_tokens=300, counting=rule,
    )  # fmt: skip


# --- what hypothesis draws ------------------------------------------------------------

CODE = ["def f(x):\n    return {'a': [1, 2]}\n", "SELECT * FROM t WHERE id = $1;", "<|endoftext|>", "\t\r\n  \\u0000"]
TEXT = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF), max_size=300),  # CJK
    st.text(alphabet=st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF), max_size=120),  # emoji
    st.lists(st.sampled_from(CODE), max_size=8).map("".join),
)
NAME = st.from_regex(r"[a-zA-Z0-9_-]{1,64}", fullmatch=True)
ARGUMENTS = st.dictionaries(st.text(max_size=20), st.one_of(TEXT, st.integers(), st.booleans()), max_size=4)


@st.composite
def conversations(draw) -> list[ChatMessage]:  # noqa: ANN001
    messages = [ChatMessage(role="system", content=draw(TEXT))] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(0, 3))):
        messages.append(ChatMessage(role="user", content=draw(TEXT)))
        calls = tuple(
            ToolCallRequest(id=draw(NAME), name=draw(NAME), arguments=draw(ARGUMENTS))
            for _ in range(draw(st.integers(0, 2)))
        )
        messages.append(ChatMessage(role="assistant", content=draw(TEXT) if not calls else "", tool_calls=calls))
        messages += [ChatMessage(role="tool", content=draw(TEXT), tool_call_id=call.id) for call in calls]
    messages.append(ChatMessage(role="user", content=draw(TEXT) or "?"))
    return messages


TOOLS = st.lists(
    st.fixed_dictionaries({
        "name": NAME, "description": TEXT,
        "parameters": st.fixed_dictionaries({
            "type": st.just("object"),
            "properties": st.dictionaries(NAME, st.fixed_dictionaries({"type": st.just("string"), "description": TEXT}),
                                          max_size=3),
        }),
    }),
    max_size=20, unique_by=lambda tool: tool["name"],
)  # fmt: skip
SPLITS = st.tuples(st.sampled_from([0.0, 0.5, 0.9]), st.sampled_from([0.0, 0.5, 1.0]))
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))


def assert_settled_within_hold(turn: Turn) -> None:
    turn.refresh_from_db()
    assert turn.status == "completed", turn.error
    held = CreditHold.objects.get(reference=str(turn.pk)).amount
    assert turn.credits_charged <= held
    assert LLMCall.objects.filter(turn=turn).count() == 1


@pytest.mark.parametrize(("rule", "provider"), CASES)
def test_a_v1_request_is_never_charged_more_than_its_hold(rule, provider, upstreams, owner):
    from accounts.services import api_key_create

    wallet_grant(user=owner, amount=Decimal("10000"), reason="test credits")
    api_key, _ = api_key_create(user=owner, name="property")
    price = price_of(rule, provider)
    upstreams[provider].rule = rule

    @SETTINGS
    @given(messages=conversations(), tools=TOOLS, split=SPLITS, max_tokens=st.integers(1, 300))
    def check(messages, tools, split, max_tokens) -> None:  # noqa: ANN001
        upstreams[provider].split = split
        request = CompletionRequest(price=price, messages=messages, tools=tools, max_tokens=max_tokens)
        assert_settled_within_hold(completion_turn_create(user=owner, api_key=api_key, request=request))

    check()
    call_command("reconcile_wallets")  # every wallet its ledger, nothing held: exits 1 on drift


@pytest.mark.parametrize(("rule", "provider"), CASES)
def test_a_chat_turn_with_any_history_is_never_charged_more_than_its_hold(rule, provider, upstreams, owner):
    wallet_grant(user=owner, amount=Decimal("10000"), reason="test credits")
    price = price_of(rule, provider)
    upstreams[provider].rule = rule

    @SETTINGS
    @given(history=conversations(), content=TEXT.filter(str.strip), prompt=TEXT, split=SPLITS)
    def check(history, content, prompt, split) -> None:  # noqa: ANN001
        upstreams[provider].split = split
        # As stored: a NUL only ever reaches the database as U+FFFD (the API refuses it in
        # a chat message; core.text.storable for what a model or a /v1 client sends).
        prompt, content = storable(prompt[:2000]), storable(content[:32_000])
        session = ChatSession.objects.create(user=owner, model_alias=price.alias, system_prompt=prompt)
        done = Turn.objects.create(session=session, user=owner, model_alias=price.alias, status="completed")
        Message.objects.bulk_create(
            Message(session=session, turn=done, role=m.role, content=storable(m.content),
                    tool_call_id=storable(m.tool_call_id),
                    tool_calls=storable([call.as_dict() for call in m.tool_calls]) or None)
            for m in history if m.role != "system"
        )  # fmt: skip
        turn, _ = turn_create(user=owner, session=session, content=content)
        assert_settled_within_hold(turn)

    check()
    call_command("reconcile_wallets")  # every wallet its ledger, nothing held: exits 1 on drift


def test_dense_text_cannot_pass_a_block_mode_balance_or_a_key_budget(upstreams, owner):
    """The issue's case: one token a character upstream, block mode, a balance of 2
    and a key budget of 2. The hold counts bytes, so a request whose cost could pass
    either is refused (402 / 429, nothing written) and one that fits settles within
    them: the balance never goes below zero, the budget never past 2."""
    from rest_framework.test import APIClient

    from accounts.services import api_key_create
    from billing.models import CreditTransaction, SpendCounter, Wallet

    wallet_grant(user=owner, amount=Decimal("2"), reason="test credits")
    model_price_set(
        alias="dense", provider="openai", provider_model="model", input_credits_per_mtok="1000",
        output_credits_per_mtok="1000", max_output_tokens=256, context_tokens=100_000,
    )  # fmt: skip
    upstreams["openai"].rule = BYTES  # a byte-level tokenizer at its worst
    api_key, raw = api_key_create(user=owner, name="dense", budget_credits=Decimal("2"), budget_window="month")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")

    def ask(characters: int):  # noqa: ANN202
        body = {"model": "dense", "messages": [{"role": "user", "content": "中" * characters}]}
        return client.post("/v1/chat/completions", body, format="json")

    refused = ask(4000)  # 12,000 bytes: a hold of about 12.3 credits
    assert refused.status_code in (402, 429)
    assert not Turn.objects.exists() and not CreditHold.objects.exists()

    answered = ask(500)  # 1,500 bytes: held about 1.78; the upstream reports its count
    assert answered.status_code == 200
    turn = Turn.objects.get()
    assert_settled_within_hold(turn)
    wallet = Wallet.objects.get(user=owner)
    assert wallet.balance >= 0 and wallet.held == 0
    assert SpendCounter.objects.get(api_key=api_key).spent <= Decimal("2")
    assert -CreditTransaction.objects.get(kind="debit").amount == turn.credits_charged
    call_command("reconcile_wallets")
