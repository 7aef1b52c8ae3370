"""Many turns at once on one wallet (PostgreSQL, real row locks): exact balances, no
overspending in block mode, one turn per Idempotency-Key, one charge per turn."""

import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from django.db import connection
from rest_framework.test import APIClient

from accounts.services import api_key_create
from billing.models import CreditHold, CreditTransaction
from billing.services import wallet_grant
from chat.models import ChatSession, LLMCall, Turn
from chat.services import turn_run
from tests.chat.conftest import START_BALANCE, expected_cost, local_tokens, post_turn, wallet_of

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

N = 50


def clients(user, count: int) -> list[APIClient]:  # noqa: ANN001
    _, raw = api_key_create(user=user, name="load")
    made = []
    for _ in range(count):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        made.append(client)
    return made


def in_threads(jobs: list, work) -> list:  # noqa: ANN001
    barrier = threading.Barrier(len(jobs))

    def run(job):  # noqa: ANN001, ANN202
        try:
            barrier.wait()
            return work(job)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return list(pool.map(run, jobs))


def test_fifty_concurrent_turns_on_one_wallet_leave_the_exact_balance(session, funded_owner, settings):
    settings.MAX_CONCURRENT_TURNS_PER_USER = N  # the ledger under load here; fair use is tests/chat/test_fair_use.py
    jobs = list(zip(clients(funded_owner, N), [f"question {n} " + "q" * n for n in range(N)], strict=True))
    answers = in_threads(jobs, lambda job: post_turn(job[0], session, job[1]))
    assert [a.status_code for a in answers] == [201] * N
    assert {a.data["status"] for a in answers} == {"completed"}

    costs = [expected_cost(c.input_tokens, c.output_tokens) for c in LLMCall.objects.all()]
    assert len(costs) == N
    assert sum(Decimal(a.data["credits_charged"]) for a in answers) == sum(costs)
    wallet = wallet_of(funded_owner)
    assert (wallet.balance, wallet.held) == (START_BALANCE - sum(costs), Decimal("0"))
    ledger = CreditTransaction.objects.filter(wallet=wallet)
    assert ledger.filter(kind="debit").count() == N
    assert sum(row.amount for row in ledger) == wallet.balance
    # Each debit's balance_after is a distinct step: no two turns saw the same balance.
    assert len({row.balance_after for row in ledger.filter(kind="debit")}) == N


def test_block_mode_accepts_only_what_the_wallet_covers(owner, price, settings, parked_turns):
    settings.BILLING_ENFORCEMENT = "block"
    content = "Same question"
    # The hold counts by the price's rule (bytes): the reply's 8, the message's 8 and its bytes.
    hold = expected_cost(8 + 8 + len(content), price.max_output_tokens)
    wallet_grant(user=owner, amount=hold * 10, reason="covers ten turns")
    sessions = [ChatSession.objects.create(user=owner, model_alias="fast") for _ in range(N)]

    answers = in_threads(list(zip(clients(owner, N), sessions, strict=True)),
                         lambda job: post_turn(job[0], job[1], content))  # fmt: skip
    codes = sorted(a.status_code for a in answers)
    assert codes == [202] * 10 + [402] * 40
    assert all(a.data["error"]["code"] == "insufficient_credits" for a in answers if a.status_code == 402)
    assert Turn.objects.count() == 10 and CreditHold.objects.filter(status="active").count() == 10
    wallet = wallet_of(owner)
    assert (wallet.balance, wallet.held) == (hold * 10, hold * 10)

    # The worker's part: each accepted turn settles for its real cost, under the hold.
    for turn in Turn.objects.all():
        turn_run(turn_id=turn.pk)
    charged = expected_cost(4 + local_tokens(content), local_tokens("Echo: " + content))
    wallet = wallet_of(owner)
    assert (wallet.balance, wallet.held) == (hold * 10 - charged * 10, Decimal("0"))


def test_fifty_concurrent_turns_of_one_user_accept_exactly_the_fair_use_limit(owner, price, settings, parked_turns):
    settings.MAX_CONCURRENT_TURNS_PER_USER = 16
    wallet_grant(user=owner, amount=START_BALANCE, reason="plenty")
    sessions = [ChatSession.objects.create(user=owner, model_alias="fast") for _ in range(N)]

    answers = in_threads(list(zip(clients(owner, N), sessions, strict=True)),
                         lambda job: post_turn(job[0], job[1], "one of many"))  # fmt: skip

    assert sorted(a.status_code for a in answers) == [202] * 16 + [429] * 34
    assert all(a["Retry-After"].isdigit() for a in answers if a.status_code == 429)
    assert Turn.objects.count() == 16 and CreditHold.objects.filter(status="active").count() == 16


def test_concurrent_requests_with_one_idempotency_key_make_one_turn(session, funded_owner):
    answers = in_threads(
        clients(funded_owner, 10), lambda client: post_turn(client, session, "once", idempotency_key="k")
    )
    assert {a.status_code for a in answers} <= {201, 202}
    assert len({a.data["id"] for a in answers}) == 1
    assert Turn.objects.count() == 1
    assert CreditTransaction.objects.filter(kind="debit").count() == 1


def test_two_workers_given_the_same_turn_run_it_once(session, funded_owner, settings, parked_turns):
    settings.LOCAL_LLM_LATENCY_MS = 500  # the second delivery arrives while the first runs
    from chat.services import turn_create

    turn, _ = turn_create(user=funded_owner, session=session, content="Run me twice")
    in_threads([turn.pk, turn.pk], lambda pk: turn_run(turn_id=pk))
    turn.refresh_from_db()
    cost = expected_cost(4 + local_tokens("Run me twice"), local_tokens("Echo: Run me twice"))
    # One claim wins the lease; the other does nothing (no second provider call).
    assert (turn.status, turn.attempts, turn.credits_charged) == ("completed", 1, cost)
    assert LLMCall.objects.count() == 1 and CreditTransaction.objects.filter(kind="debit").count() == 1
    assert wallet_of(funded_owner).balance == START_BALANCE - cost
