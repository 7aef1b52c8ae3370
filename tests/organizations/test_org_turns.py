"""An organization's key through the real `openai` SDK: the organization's wallet
pays, the turn is attributed to the member who made the key, their member budget
holds like a key budget, and removing them revokes the key. The person's own wallet
never moves."""

from decimal import Decimal

import openai
import pytest

from billing.models import CreditHold, CreditTransaction, SpendCounter
from billing.selectors import wallet_for_user
from chat.models import Turn
from organizations.services import member_budget_set, member_remove, organization_api_key_create
from reporting.models import UsageDaily
from tests.organizations.conftest import member_add

pytestmark = pytest.mark.django_db(transaction=True)
HELLO = [{"role": "user", "content": "Hello"}]


def sdk_for(base_url: str, raw: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=raw, max_retries=0, timeout=30)


def test_an_org_key_charges_the_org_wallet_and_names_its_member(org, owner, fast, base_url):
    ada = member_add(org, "ada@example.com")
    api_key, raw = organization_api_key_create(member=ada, name="ada's laptop")
    personal_before = wallet_for_user(user=ada.user).balance

    with sdk_for(base_url, raw) as sdk:
        reply = sdk.chat.completions.create(model="fast", messages=HELLO, user="visitor-1")

    assert reply.choices[0].message.content
    turn = Turn.objects.get()
    assert (turn.user_id, turn.membership_id) == (org.account_id, ada.pk)
    assert turn.end_user.external_id == "visitor-1" and turn.end_user.api_key_id == api_key.pk
    debit = CreditTransaction.objects.get(kind="debit")
    assert debit.wallet.user_id == org.account_id and -debit.amount == turn.credits_charged
    assert wallet_for_user(user=org.account).balance == Decimal("100") + debit.amount
    assert wallet_for_user(user=ada.user).balance == personal_before
    rollup = UsageDaily.objects.get()
    assert (rollup.user_id, rollup.membership_id, rollup.calls) == (org.account_id, ada.pk, 1)


def test_a_member_budget_refuses_past_it_and_names_the_member(org, fast, base_url):
    ada = member_add(org, "ada@example.com")
    member_budget_set(member=ada, budget_credits=Decimal("0.002"), budget_window="month")
    _, raw = organization_api_key_create(member=ada, name="ci")
    with sdk_for(base_url, raw) as sdk:
        sdk.chat.completions.create(model="fast", messages=HELLO, max_tokens=100)
        counter = SpendCounter.objects.get(membership=ada)
        charged = -CreditTransaction.objects.get(kind="debit").amount
        assert (counter.held, counter.spent) == (Decimal("0"), charged)
        with pytest.raises(openai.RateLimitError) as refused:
            sdk.chat.completions.create(model="fast", messages=HELLO)
    assert refused.value.code == "insufficient_quota"
    assert "Member ada@example.com's budget in organization 'Acme' of 0.002 credits per month" in (
        refused.value.message
    )
    assert Turn.objects.count() == 1 and CreditHold.objects.count() == 1


def test_removing_a_member_revokes_their_org_keys(org, owner, fast, base_url):
    ada = member_add(org, "ada@example.com")
    _, raw = organization_api_key_create(member=ada, name="ci")
    owner_membership = org.memberships.get(user=owner)
    member_remove(actor=owner_membership, member=ada)
    with sdk_for(base_url, raw) as sdk, pytest.raises(openai.AuthenticationError):
        sdk.chat.completions.create(model="fast", messages=HELLO)
    assert not Turn.objects.exists()


def test_fair_use_counts_each_member_apart(org, fast, settings):
    """An organization is one account but many people: each member has their own
    allowance of turns in flight, not a share of one."""
    from accounts.attribution import Attribution
    from chat.models import ChatSession
    from chat.services.turns import turn_create
    from core.exceptions import TooManyRequests

    settings.MAX_CONCURRENT_TURNS_PER_USER = 1
    session = ChatSession.objects.create(user=org.account, title="team", model_alias="fast")
    keys = {}
    for email in ("ada@example.com", "bob@example.com"):
        member = member_add(org, email)
        keys[email] = (organization_api_key_create(member=member, name=email)[0], Attribution(membership_id=member.pk))

    def ask(email: str) -> Turn:
        api_key, attribution = keys[email]
        return turn_create(user=org.account, session=session, content="Hi", api_key=api_key, attribution=attribution,
                           hand_over=False)[0]  # fmt: skip

    ask("ada@example.com")  # queued: never handed over here
    ask("bob@example.com")  # bob is not held back by ada's turn
    with pytest.raises(TooManyRequests):
        ask("ada@example.com")
    assert Turn.objects.filter(status="queued").count() == 2


def test_the_consoles_turn_list_names_the_organization_and_member(org, fast, base_url, console):
    ada = member_add(org, "ada@example.com")
    _, raw = organization_api_key_create(member=ada, name="ci")
    with sdk_for(base_url, raw) as sdk:
        sdk.chat.completions.create(model="fast", messages=HELLO)
    page = console.get("/admin/chat/turn/").content.decode()
    assert "Acme: ada@example.com" in page and "organizations.parley.invalid" not in page
    only_ada = console.get(f"/admin/chat/turn/?membership__id__exact={ada.pk}")
    assert only_ada.status_code == 200 and "Acme: ada@example.com" in only_ada.content.decode()
