"""Member budgets under load, on the Procfile's own web and worker with PostgreSQL
and Redis: 5 members each send 20 requests at once through their own organization
keys. However they interleave, no member spends past their budget, the organization
never spends past its balance (block mode), every accepted request is one turn
charged once to the organization's wallet, and the ledger adds up. The complaints
this answers: LiteLLM's member budgets not enforced (#11083) and limits that do not
hold under load (#34732, #40095)."""

import asyncio
from decimal import Decimal
from pathlib import Path

import httpx2
import pytest
from django.core.management import call_command
from django.db.models import Sum

from accounts.services import api_key_create, user_create
from bench.stack import Stack
from billing.models import CreditHold, CreditTransaction, SpendCounter
from billing.selectors import wallet_for_user
from billing.services import wallet_grant
from chat.models import Turn
from organizations.services import member_budget_set, organization_api_key_create, organization_create
from tests.conftest import _worker_env, spare_redis_url
from tests.organizations.conftest import member_add

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.worker, pytest.mark.xdist_group("stack")]

MEMBERS, EACH = 5, 20
ALLOWED = (2, 3, 6, 6, 6)  # requests each member's budget covers at the worst case
BODY = {"model": "fast", "max_tokens": 100, "messages": [{"role": "user", "content": "Hello there, team"}]}


async def _burst(port: int, keys: list[str]) -> list[tuple[int, dict, str]]:
    """Every member's EACH requests at once; (status, body, key) of each."""
    limits = httpx2.Limits(max_connections=MEMBERS * EACH)
    async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120, limits=limits) as client:

        async def one(key: str) -> tuple[int, dict, str]:
            answer = await client.post("/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {key}"})
            return answer.status_code, answer.json(), key

        return await asyncio.gather(*(one(keys[n % MEMBERS]) for n in range(MEMBERS * EACH)))


def _hold_of_one_request(port: int) -> Decimal:
    """What one such request holds (its worst case), found by sending one through a
    person's key on the same stack."""
    person = user_create(email="calibrate@example.com")
    wallet_grant(user=person, amount=Decimal("10"), reason="test credits")
    _, raw = api_key_create(user=person, name="calibrate")
    answer = httpx2.post(
        f"http://127.0.0.1:{port}/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {raw}"},
        timeout=60,
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    return CreditHold.objects.get(wallet__user=person).amount


@pytest.mark.django_db(transaction=True)
def test_five_members_twenty_concurrent_requests_each_spend_at_most_their_budgets_and_the_balance(
    owner, tmp_path: Path
) -> None:
    from tests.chat.conftest import make_price

    make_price("fast")
    env = {**_worker_env(), "REDIS_URL": spare_redis_url(), "LOCAL_LLM_LATENCY_MS": "3000",
           "BILLING_ENFORCEMENT": "block", "MAX_CONCURRENT_TURNS_PER_USER": str(EACH)}  # fmt: skip
    env.pop("DEBUG")
    stack = Stack(env, tmp_path / "procfile.log")
    stack.start(("web", "worker"))
    try:
        hold = _hold_of_one_request(stack.port)
        org = organization_create(creator=owner, name="Acme")
        # The budgets allow 2, 3, 6, 6 and 6 requests (23 in all); the balance 18.
        budgets = [hold * Decimal(allowed + 0.5) for allowed in ALLOWED]
        funded = hold * Decimal("18.5")
        wallet_grant(user=org.account, amount=funded, reason="test credits")
        members, keys = [], []
        for n, budget in enumerate(budgets):
            member = member_add(org, f"member-{n}@example.com")
            member_budget_set(member=member, budget_credits=budget, budget_window="day")
            members.append(member)
            keys.append(organization_api_key_create(member=member, name=f"key-{n}")[1])
        results = asyncio.run(_burst(stack.port, keys))
    finally:
        stack.stop()

    accepted = [(body, key) for status, body, key in results if status == 200]
    refused = [body for status, body, _ in results if status != 200]
    assert {status for status, _, _ in results} <= {200, 429}, [r[:2] for r in results if r[0] not in (200, 429)]
    assert all(body["error"]["code"] == "insufficient_quota" for body in refused)
    by_budget = [body for body in refused if "budget in organization 'Acme'" in body["error"]["message"]]
    by_balance = [body for body in refused if "does not cover" in body["error"]["message"]]
    # Both limits bind, and no other refusal appears (fair use counts each member
    # apart: 20 turns in flight each are within MAX_CONCURRENT_TURNS_PER_USER).
    assert by_budget and by_balance and len(by_budget) + len(by_balance) == len(refused)
    assert 10 <= len(accepted) <= 18, len(accepted)

    org_turns = Turn.objects.filter(user=org.account)
    assert org_turns.count() == len(accepted) and set(org_turns.values_list("status", flat=True)) == {"completed"}
    for member, budget in zip(members, budgets, strict=True):
        counter = SpendCounter.objects.get(membership=member)
        charged = org_turns.filter(membership=member).aggregate(total=Sum("credits_charged"))["total"] or 0
        assert counter.held == 0 and counter.spent == charged <= budget
    # While every hold overlapped (none settled before the last was placed), each
    # member got at most the requests their budget covers at the worst case.
    first_done = min(org_turns.values_list("finished_at", flat=True))
    if max(org_turns.values_list("created_at", flat=True)) < first_done:
        per_member = [org_turns.filter(membership=member).count() for member in members]
        assert all(got <= allowed for got, allowed in zip(per_member, ALLOWED, strict=True)), per_member
    # The organization's ledger: one debit per turn, the turn's id its reference, and
    # nothing spent past what it was given.
    wallet = wallet_for_user(user=org.account)
    debits = CreditTransaction.objects.filter(wallet=wallet, kind="debit")
    assert sorted(debits.values_list("reference", flat=True)) == sorted(str(pk) for pk in org_turns.values_list("pk", flat=True))
    charged = org_turns.aggregate(total=Sum("credits_charged"))["total"]
    assert -debits.aggregate(total=Sum("amount"))["total"] == charged
    assert wallet.balance == funded - charged >= 0 and wallet.held == 0
    assert not CreditHold.objects.filter(status=CreditHold.Status.ACTIVE).exists()
    assert wallet_for_user(user=owner).balance == 0  # the owner's own wallet never moved
    call_command("reconcile_wallets")  # exits non-zero (raises) on any drift
