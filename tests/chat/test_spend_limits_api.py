"""Spend and rate limits on the chat API (POST sessions/{id}/turns): a key's budget
and the account's cap are 402 naming the limit, a key's rpm / tpm 429 with
Retry-After; a refusal writes nothing. Eager tasks: a turn runs when it commits."""

import time
from decimal import Decimal

import pytest
from rest_framework.test import APIClient

from accounts.models import all_scopes
from accounts.services import api_key_create, user_spend_cap_set
from billing.models import CreditHold, CreditTransaction, SpendCounter
from chat.engine.hold import turn_token_estimate
from chat.models import ChatSession, Message, Turn
from chat.services.turns import turn_worst_case_cost
from tests.chat.conftest import post_turn, wallet_of

pytestmark = pytest.mark.django_db(transaction=True)


def key_client(user, **limits) -> tuple[APIClient, object]:  # noqa: ANN001
    api_key, raw = api_key_create(user=user, name="ci", **limits)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client, api_key


def fresh_minute() -> None:
    """rpm/tpm count per UTC calendar minute: start a test well inside one."""
    if time.time() % 60 > 50:
        time.sleep(61 - time.time() % 60)


def assert_nothing_written(*, turns: int, holds: int, debits: int) -> None:
    assert Turn.objects.count() == turns
    assert CreditHold.objects.count() == holds
    assert CreditTransaction.objects.filter(kind="debit").count() == debits


def test_a_key_budget_holds_the_worst_case_and_past_it_the_turn_is_402_naming_it(session, price, funded_owner):
    worst = turn_worst_case_cost(session=session, price=price, content="Hello")
    client, api_key = key_client(funded_owner, budget_credits=worst, budget_window="day")

    first = post_turn(client, session, "Hello")
    assert first.status_code == 201, first.content
    charged = Decimal(first.data["credits_charged"])
    counter = SpendCounter.objects.get(api_key=api_key)
    assert (counter.spent, counter.held) == (charged, Decimal("0"))
    listed = client.get(f"/api/v1/users/me/keys/{api_key.pk}").json()
    assert (listed["spent"], listed["held"]) == (f"{charged:.8f}", "0.00000000")

    refused = post_turn(client, session, "Hello")
    assert refused.status_code == 402
    error = refused.json()["error"]
    assert error["code"] == "spend_limit_exceeded"
    assert error["message"].startswith(f"API key 'ci' budget of {worst.normalize():f} credits per day: ")
    assert f"{charged.normalize():f} spent or held" in error["message"] and "resets at" in error["message"]
    assert_nothing_written(turns=1, holds=1, debits=1)
    assert Message.objects.count() == 2  # the first turn's question and answer
    assert wallet_of(funded_owner).held == 0
    counter.refresh_from_db()
    assert (counter.spent, counter.held) == (charged, Decimal("0"))


def test_the_account_cap_counts_every_key_and_refuses_naming_itself(session, price, funded_owner):
    worst = turn_worst_case_cost(session=session, price=price, content="Hello")
    user_spend_cap_set(user=funded_owner, spend_cap_credits=worst, spend_cap_window="week")
    first_client, _ = key_client(funded_owner)
    assert post_turn(first_client, session, "Hello").status_code == 201

    second_client, _ = key_client(funded_owner)
    refused = post_turn(second_client, session, "Hello")
    assert refused.status_code == 402
    assert refused.json()["error"]["message"].startswith("Account spending cap of ")
    assert "credits per week" in refused.json()["error"]["message"]
    assert_nothing_written(turns=1, holds=1, debits=1)
    limits = second_client.get("/api/v1/users/me/limits").json()
    assert limits["spent"] == f"{CreditTransaction.objects.get(kind='debit').amount.copy_abs():.8f}"


def test_past_the_keys_rpm_a_turn_is_429_with_retry_after_naming_it(session, funded_owner):
    fresh_minute()
    client, _ = key_client(funded_owner, rpm=2)
    assert [post_turn(client, session, f"q{n}").status_code for n in range(2)] == [201, 201]

    refused = post_turn(client, session, "q3")
    assert refused.status_code == 429
    assert 1 <= int(refused["Retry-After"]) <= 60
    message = refused.json()["error"]["message"]
    assert message.startswith("API key 'ci' allows 2 requests per minute (rpm)")
    assert f"Try again in {refused['Retry-After']} s." in message
    assert_nothing_written(turns=2, holds=2, debits=2)


def test_past_the_keys_tpm_a_turn_is_429_naming_it(funded_owner, price):
    fresh_minute()
    sessions = [ChatSession.objects.create(user=funded_owner, model_alias="fast") for _ in range(3)]
    estimate = turn_token_estimate(session=sessions[0], price=price, content="Hello")
    client, _ = key_client(funded_owner, tpm=2 * estimate)
    assert [post_turn(client, s, "Hello").status_code for s in sessions[:2]] == [201, 201]

    refused = post_turn(client, sessions[2], "Hello")
    assert refused.status_code == 429 and refused["Retry-After"].isdigit()
    assert refused.json()["error"]["message"].startswith(
        f"API key 'ci' allows {2 * estimate} tokens per minute (tpm): {2 * estimate} used this minute and this "
        f"request is estimated at {estimate}"
    )
    assert_nothing_written(turns=2, holds=2, debits=2)


def test_a_refused_turn_does_not_use_up_the_rpm(session, funded_owner):
    fresh_minute()
    # `keys` too: the key lifts its own budget below.
    client, api_key = key_client(funded_owner, rpm=1, budget_credits=Decimal("0"), scopes=all_scopes())
    assert post_turn(client, session, "over budget").status_code == 402
    assert post_turn(client, session, "").status_code == 400  # refused before any limit
    lifted = client.patch(f"/api/v1/users/me/keys/{api_key.pk}", {"budget_credits": None}, format="json")
    assert lifted.status_code == 200, lifted.content
    assert post_turn(client, session, "now allowed").status_code == 201
    assert post_turn(client, session, "one too many").status_code == 429


def test_a_turn_replayed_by_its_idempotency_key_is_not_counted_again(session, funded_owner):
    fresh_minute()
    client, api_key = key_client(funded_owner, rpm=1, budget_credits=Decimal("1"))
    first = post_turn(client, session, "Hello", idempotency_key="k1")
    again = post_turn(client, session, "Hello", idempotency_key="k1")
    assert (first.status_code, again.status_code, again["Idempotent-Replayed"]) == (201, 201, "true")
    counter = SpendCounter.objects.get(api_key=api_key)
    assert counter.spent == Decimal(first.data["credits_charged"]) and counter.held == 0
