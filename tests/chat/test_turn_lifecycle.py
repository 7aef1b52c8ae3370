"""The worker side of a turn (chat.services): compare-and-set moves, one completion
transaction, charged once however often the task runs. These tests do not commit
(plain `db`), so `run_turn` is never sent on its own: each test runs it."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from billing.models import CreditHold, CreditTransaction
from chat.engine.metering import TurnOutcome, llm_call_build
from chat.leases import Lease
from chat.llm import LLMResult
from chat.models import LLMCall, Message, Turn
from chat.services.turns import turn_complete, turn_create, turn_fail, turn_run, turn_start
from chat.tasks import run_turn
from reporting.models import UsageDaily
from tests.chat.conftest import START_BALANCE, expected_cost, local_tokens, make_price, turn_status, wallet_of

pytestmark = pytest.mark.django_db

REPLY_COST = expected_cost(4 + local_tokens("Hello"), local_tokens("Echo: Hello"))


@pytest.fixture
def turn(session, funded_owner) -> Turn:  # noqa: ANN001
    created, _ = turn_create(user=funded_owner, session=session, content="Hello")
    assert created.status == "queued"
    return created


def debits() -> list[CreditTransaction]:
    return list(CreditTransaction.objects.filter(kind="debit"))


def test_run_turn_twice_completes_and_charges_once(turn, funded_owner):
    run_turn.apply(args=[str(turn.pk)])
    run_turn.apply(args=[str(turn.pk)])
    turn.refresh_from_db()
    assert (turn.status, turn.attempts, turn.credits_charged) == ("completed", 1, REPLY_COST)
    [debit] = debits()
    assert (debit.reference, debit.amount) == (str(turn.pk), -REPLY_COST)
    assert Message.objects.filter(turn=turn, role="assistant").count() == 1
    assert LLMCall.objects.filter(turn=turn).count() == 1
    assert UsageDaily.objects.get(user=funded_owner).calls == 1
    assert wallet_of(funded_owner).balance == START_BALANCE - REPLY_COST


def test_the_same_completion_written_twice_charges_once(turn, funded_owner, price):
    started = turn_start(turn_id=turn.pk)

    def outcome() -> TurnOutcome:
        result = LLMResult(text="Answer", input_tokens=1000, output_tokens=500)
        return TurnOutcome(
            messages=[Message(role="assistant", content="Answer")],
            llm_calls=[llm_call_build(price=price, purpose="reply", latency_ms=5, result=result)],
        )

    first = turn_complete(turn=started, outcome=outcome())
    second = turn_complete(turn=started, outcome=outcome())
    assert first.status == second.status == "completed"
    assert second.credits_charged == expected_cost(1000, 500)
    assert len(debits()) == 1
    assert LLMCall.objects.count() == 1 and Message.objects.filter(role="assistant").count() == 1
    rollup = UsageDaily.objects.get(user=funded_owner)
    assert (rollup.calls, rollup.input_tokens, rollup.output_tokens) == (1, 1000, 500)
    assert wallet_of(funded_owner).balance == START_BALANCE - expected_cost(1000, 500)


def test_a_turn_left_running_by_a_dead_worker_is_taken_over_and_charged_once(turn, funded_owner):
    # Worker A moved it to running, then died before its completion committed.
    assert turn_start(turn_id=turn.pk).status == "running"
    assert wallet_of(funded_owner).held > 0
    run_turn.apply(args=[str(turn.pk)])  # a duplicate message while A's lease is live: nothing
    assert turn_status(turn.pk) == "running"
    # A's lease runs out; the sweep hands the turn to worker B.
    Turn.objects.filter(pk=turn.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    run_turn.apply(args=[str(turn.pk)])
    turn.refresh_from_db()
    assert (turn.status, turn.attempts) == ("completed", 2)
    assert len(debits()) == 1 and LLMCall.objects.count() == 1
    assert wallet_of(funded_owner).held == 0
    assert wallet_of(funded_owner).balance == START_BALANCE - REPLY_COST


def test_a_slow_run_whose_lease_ran_out_writes_nothing(turn, funded_owner, price):
    lease = Lease(turn_id=str(turn.pk))
    slow = turn_start(turn_id=turn.pk, lease=lease)  # a run stalls past its lease...
    Turn.objects.filter(pk=turn.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    turn_run(turn_id=turn.pk)  # ...another worker takes the turn over and finishes first
    late = TurnOutcome(
        messages=[Message(role="assistant", content="late")],
        llm_calls=[llm_call_build(price=price, purpose="reply", latency_ms=1,
                                  result=LLMResult(text="late", input_tokens=9, output_tokens=9))],
    )  # fmt: skip
    assert turn_complete(turn=slow, outcome=late, lease_token=lease.token).credits_charged == REPLY_COST
    assert not Message.objects.filter(content="late").exists()
    assert LLMCall.objects.count() == 1 and len(debits()) == 1
    assert wallet_of(funded_owner).balance == START_BALANCE - REPLY_COST


def test_a_failed_turn_is_charged_for_the_calls_that_returned_usage(turn, funded_owner, price):
    started = turn_start(turn_id=turn.pk)
    used = llm_call_build(
        price=price, purpose="reply", latency_ms=7, result=LLMResult(text="", input_tokens=2000, output_tokens=100)
    )
    failed = llm_call_build(
        price=price, purpose="tool_followup", latency_ms=9, error="The openai provider answered HTTP 500"
    )
    done = turn_complete(
        turn=started, outcome=TurnOutcome(llm_calls=[used, failed], error="The openai provider answered HTTP 500")
    )
    charged = expected_cost(2000, 100)
    assert (done.status, done.error, done.credits_charged) == (
        "failed",
        "The openai provider answered HTTP 500",
        charged,
    )
    assert done.balance_after == START_BALANCE - charged
    assert [(c.status, c.cost) for c in LLMCall.objects.order_by("id")] == [
        ("ok", charged),
        ("failed", Decimal("0E-8")),
    ]
    [debit] = debits()
    assert debit.amount == -charged
    assert CreditHold.objects.get(reference=str(turn.pk)).status == "settled"
    assert wallet_of(funded_owner).held == 0


def test_turn_fail_releases_the_hold_and_charges_nothing(turn, funded_owner):
    failed = turn_fail(turn_id=turn.pk, error="Gave up.")
    assert (failed.status, failed.error, failed.credits_charged) == ("failed", "Gave up.", Decimal("0"))
    assert failed.balance_after == START_BALANCE and failed.finished_at is not None
    assert CreditHold.objects.get(reference=str(turn.pk)).status == "released"
    assert wallet_of(funded_owner).held == 0 and debits() == []
    # Running it afterwards (a late delivery) does nothing.
    assert turn_run(turn_id=turn.pk) is None
    turn.refresh_from_db()
    assert turn.status == "failed" and LLMCall.objects.count() == 0


def test_a_price_with_an_unknown_provider_fails_the_turn_readably(session, funded_owner):
    broken = make_price("broken", provider="nope")
    created, _ = turn_create(user=funded_owner, session=session, content="hi", model_alias=broken.alias)
    done = turn_run(turn_id=created.pk)
    assert (done.status, done.error) == ("failed", "Unknown provider 'nope'.")
    assert debits() == [] and wallet_of(funded_owner).held == 0


def test_the_turn_is_charged_at_the_price_it_was_accepted_at(turn, funded_owner, price):
    # A price change after acceptance (a new row) does not reprice the turn.
    price.active = False
    price.save()
    make_price("fast", input_credits_per_mtok=Decimal("999"), output_credits_per_mtok=Decimal("999"))
    done = turn_run(turn_id=turn.pk)
    assert done.credits_charged == REPLY_COST
    assert LLMCall.objects.get().price_id == price.pk


def test_the_hold_estimate_counts_history_up_to_the_budget(session, funded_owner, price):
    first, _ = turn_create(user=funded_owner, session=session, content="a" * 400)
    turn_run(turn_id=first.pk)
    second, _ = turn_create(user=funded_owner, session=session, content="b" * 40)
    # Counted by the price's rule (bytes): the history by its bytes, each message framed
    # (8), the new message (8 + 40) and the reply's framing (8).
    history = (8 + 400) + (8 + len("Echo: " + "a" * 400))
    hold = CreditHold.objects.get(reference=str(second.pk))
    assert hold.amount == expected_cost(history + 8 + 40 + 8, price.max_output_tokens)

    tight = make_price("tight", context_tokens=300, max_output_tokens=200)
    third, _ = turn_create(user=funded_owner, session=session, content="c" * 40, model_alias=tight.alias)
    # Over the budget: the reply's full window plus a summary call's full window.
    assert CreditHold.objects.get(reference=str(third.pk)).amount == 2 * expected_cost(100, 200)


def test_run_turn_declares_its_retries_and_early_acks():
    assert set(run_turn.autoretry_for) >= {OperationalError, InterfaceError}
    assert run_turn.max_retries == 5 and run_turn.retry_backoff and run_turn.retry_jitter
    # Acknowledged on receipt: a long turn is never redelivered while it runs; a dead
    # worker's turn is found by its lapsed lease (tests/chat/test_outbox.py).
    assert not run_turn.acks_late


def test_a_tool_loop_outcome_is_written_in_one_completion(turn, funded_owner, price, owner_client):
    """The plumbing the tool loop builds on: an assistant message asking for a tool,
    the tool's result, the follow-up reply, both calls and the tool call row."""
    from chat.models import ToolCall

    started = turn_start(turn_id=turn.pk)
    asked = llm_call_build(
        price=price, purpose="reply", latency_ms=3, result=LLMResult(text="", input_tokens=300, output_tokens=20)
    )
    followed = llm_call_build(
        price=price, purpose="tool_followup", latency_ms=4,
        result=LLMResult(text="It is a chat service.", input_tokens=400, output_tokens=30),
    )  # fmt: skip
    calls = [{"id": "call_1", "name": "web_search", "arguments": {"query": "parley"}}]
    outcome = TurnOutcome(
        messages=[
            Message(role="assistant", content="", tool_calls=calls),
            Message(role="tool", content="Parley is a chat service.", tool_call_id="call_1"),
            Message(role="assistant", content="It is a chat service."),
        ],
        llm_calls=[asked, followed],
        tool_calls=[ToolCall(llm_call=asked, tool="web_search", arguments={"query": "parley"},
                             result_excerpt="Parley is a chat service.", status="ok", latency_ms=12)],
    )  # fmt: skip
    done = turn_complete(turn=started, outcome=outcome)
    charged = expected_cost(300, 20) + expected_cost(400, 30)
    assert (done.status, done.credits_charged) == ("completed", charged)
    body = owner_client.get(f"/api/v1/turns/{turn.pk}").data
    assert [(m["role"], m["tool_call_id"]) for m in body["messages"]] == [
        ("user", ""), ("assistant", ""), ("tool", "call_1"), ("assistant", ""),
    ]  # fmt: skip
    assert body["messages"][1]["tool_calls"] == calls
    assert [c["purpose"] for c in body["llm_calls"]] == ["reply", "tool_followup"]
    [tool_call] = body["tool_calls"]
    assert (tool_call["tool"], tool_call["llm_call"], tool_call["status"]) == ("web_search", asked.pk, "ok")
    assert len(debits()) == 1 and wallet_of(funded_owner).balance == START_BALANCE - charged
