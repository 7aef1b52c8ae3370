"""LiteLLM's budget bypass (#40095, #34732): many first requests on a key at once
must not pass its budget together. On PostgreSQL (row locks are what is tested;
SQLite serialises whole transactions): 50 threads, each its own connection, POST a
turn through the API with one key whose budget is 10 turns' worst case."""

from decimal import Decimal

import pytest
from django.db.models import Sum
from rest_framework.test import APIClient

from accounts.services import api_key_create
from billing.models import CreditHold, CreditTransaction, SpendCounter, Wallet
from billing.services import wallet_grant
from chat.models import ChatSession, Message, Turn
from chat.services.turns import turn_run, turn_worst_case_cost
from config.celery import app as celery_app
from tests.billing.test_concurrency import run_together
from tests.chat.conftest import make_price, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

THREADS = 50
BUDGET_TURNS = 10
CONTENT = "What is the capital of France?"


def test_fifty_concurrent_first_requests_spend_at_most_the_key_budget(owner, settings):
    # Queued, not run, while the requests race: every accepted turn keeps its whole
    # worst case held, so exactly BUDGET_TURNS of them fit.
    settings.CELERY_TASK_ALWAYS_EAGER = False
    celery_app.conf.task_always_eager = False
    settings.MAX_CONCURRENT_TURNS_PER_USER = THREADS
    price = make_price("fast")
    wallet_grant(user=owner, amount=Decimal("1000"), reason="plenty: the budget is what refuses")
    # One session per request: each turn's worst case is the same (no shared history).
    sessions = [
        ChatSession.objects.create(user=owner, title=f"chat {n}", model_alias="fast") for n in range(THREADS)
    ]
    worst = turn_worst_case_cost(session=sessions[0], price=price, content=CONTENT)
    budget = worst * BUDGET_TURNS
    api_key, raw_key = api_key_create(user=owner, name="ci", budget_credits=budget, budget_window="day")

    def post(session: ChatSession):  # noqa: ANN202
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
        response = client.post(f"/api/v1/sessions/{session.pk}/turns", {"content": CONTENT}, format="json")
        return response.status_code, response.json()

    try:
        results = run_together([lambda s=session: post(s) for session in sessions])
    finally:
        # The accepted turns' run_turn messages: this test runs them itself, so
        # they must not wait on the broker for a later test's worker.
        celery_app.control.purge()

    assert [r for r in results if isinstance(r, Exception)] == []
    accepted = [body for status, body in results if status == 202]
    refused = [body for status, body in results if status == 402]
    assert len(accepted) + len(refused) == THREADS, [s for s, _ in results]
    assert all(body["error"]["code"] == "spend_limit_exceeded" for body in refused)
    assert all("API key 'ci' budget of" in body["error"]["message"] for body in refused)
    # The refused requests wrote nothing: no turn, no question, no hold.
    assert Turn.objects.count() == len(accepted)
    assert Message.objects.filter(role=Message.Role.USER).count() == len(accepted)
    assert CreditHold.objects.count() == len(accepted)
    if not Turn.objects.exclude(status=Turn.Status.QUEUED).exists():
        # No worker took any (a worker of an earlier test may be running on this
        # broker: a settled turn frees its hold, and more then fit): every accepted
        # turn still holds its whole worst case, so exactly BUDGET_TURNS fit.
        assert len(accepted) == BUDGET_TURNS
        counter = SpendCounter.objects.get(api_key=api_key)
        assert (counter.held, counter.spent) == (budget, Decimal("0"))
        assert Wallet.objects.get(user=owner).held == budget
    assert len(accepted) >= BUDGET_TURNS

    # The worker's job, for whatever is still queued: what the key spent is its
    # turns' debits, within the budget.
    for body in accepted:
        turn_run(turn_id=body["id"])
    wait_for(lambda: not Turn.objects.filter(status__in=["queued", "running"]).exists())
    assert set(Turn.objects.values_list("status", flat=True)) == {Turn.Status.COMPLETED}
    debits = CreditTransaction.objects.filter(kind="debit", reference__in=[body["id"] for body in accepted])
    spent = debits.aggregate(total=Sum("amount"))["total"]
    assert debits.count() == len(accepted)
    assert 0 < -spent <= budget
    counter = SpendCounter.objects.get(api_key=api_key)
    assert (counter.held, counter.spent) == (Decimal("0"), -spent)
    wallet = Wallet.objects.get(user=owner)
    assert (wallet.balance, wallet.held) == (Decimal("1000") + spent, Decimal("0"))
