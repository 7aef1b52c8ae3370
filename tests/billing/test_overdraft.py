"""`warn` enforcement never blocks a funded turn, but it is bounded: no hold may take
the available balance below -BILLING_OVERDRAFT_LIMIT, so an account can spend at
most what it was given plus that limit, however many turns it sends at once and
however many accounts someone registers."""

from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import Sum
from rest_framework.test import APIClient

from accounts.models import User
from billing.models import CreditHold, CreditTransaction, TransactionKind, Wallet
from billing.services import wallet_grant, wallet_hold_place
from chat.models import ChatSession, Message, Turn
from core.exceptions import InsufficientCredits
from tests.chat.conftest import make_price, post_turn, wait_for

ONE = Decimal("1")


@pytest.fixture
def warn_mode(settings):  # noqa: ANN001, ANN201
    settings.BILLING_ENFORCEMENT = "warn"
    settings.BILLING_OVERDRAFT_LIMIT = ONE
    return settings


def held_and_balance(user) -> tuple[Decimal, Decimal]:  # noqa: ANN001
    wallet = Wallet.objects.get(user=user)
    return wallet.balance, wallet.held


@pytest.mark.django_db
def test_warn_mode_places_holds_down_to_the_overdraft_limit_and_no_further(owner, warn_mode):
    wallet_hold_place(user=owner, amount=Decimal("0.6"), reference="turn-1")
    wallet_hold_place(user=owner, amount=Decimal("0.4"), reference="turn-2")  # available exactly -1: allowed

    with pytest.raises(InsufficientCredits) as refused:
        wallet_hold_place(user=owner, amount=Decimal("0.00000001"), reference="turn-3")

    assert "overdraft limit" in refused.value.message
    assert "-1.00000000" in refused.value.message or "available balance is -1" in refused.value.message
    assert held_and_balance(owner) == (Decimal("0"), ONE)
    assert not CreditHold.objects.filter(reference="turn-3").exists()


@pytest.mark.django_db
def test_the_overdraft_counts_below_the_credits_given(owner, warn_mode):
    warn_mode.BILLING_OVERDRAFT_LIMIT = Decimal("2")
    wallet_grant(user=owner, amount=Decimal("5"), reason="test credits")

    wallet_hold_place(user=owner, amount=Decimal("7"), reference="turn-1")
    with pytest.raises(InsufficientCredits):
        wallet_hold_place(user=owner, amount=Decimal("0.00000001"), reference="turn-2")
    assert held_and_balance(owner) == (Decimal("5"), Decimal("7"))


@pytest.mark.django_db
def test_a_replayed_hold_is_answered_even_at_the_limit(owner, warn_mode):
    first = wallet_hold_place(user=owner, amount=ONE, reference="turn-1")
    assert wallet_hold_place(user=owner, amount=ONE, reference="turn-1") == first
    assert held_and_balance(owner) == (Decimal("0"), ONE)


@pytest.mark.django_db
def test_block_mode_allows_no_overdraft_whatever_the_limit(owner, settings):
    settings.BILLING_ENFORCEMENT = "block"
    settings.BILLING_OVERDRAFT_LIMIT = Decimal("5")
    with pytest.raises(InsufficientCredits) as refused:
        wallet_hold_place(user=owner, amount=Decimal("0.01"), reference="turn-1")
    assert "does not cover" in refused.value.message


@pytest.mark.django_db
def test_a_turn_that_could_pass_the_limit_is_402_with_a_message_and_writes_nothing(owner, owner_client, warn_mode):
    # A fresh account with 0 credits; the turn's worst case is 256 tokens at 0.01 credits each.
    price = make_price(alias="dear", output_credits_per_mtok=Decimal("10000"), max_output_tokens=256)
    session = ChatSession.objects.create(user=owner, model_alias=price.alias)

    response = post_turn(owner_client, session, "Spend what I was never given")

    assert response.status_code == 402, response.content
    error = response.json()["error"]
    assert error["code"] == "insufficient_credits"
    assert "overdraft limit" in error["message"] and "Top up" in error["message"]
    assert not Turn.objects.exists() and not Message.objects.exists() and not CreditHold.objects.exists()
    assert held_and_balance(owner) == (Decimal("0"), Decimal("0"))
    assert not CreditTransaction.objects.exists()


@pytest.mark.django_db
def test_a_cheap_turn_on_an_empty_wallet_still_runs_in_warn_mode(owner, owner_client, warn_mode):
    session = ChatSession.objects.create(user=owner, model_alias=make_price().alias)
    response = post_turn(owner_client, session, "Hello")
    assert response.status_code == 202, response.content
    balance, held = held_and_balance(owner)
    assert balance == 0 and 0 < held <= ONE
    assert Turn.objects.count() == 1


# --- registration and signup credits -----------------------------------------------


def register(client: APIClient, email: str):  # noqa: ANN201
    return client.post("/api/v1/auth/register", {"email": email, "password": "a-long-passphrase-1"}, format="json")


@pytest.mark.django_db
def test_signup_credits_are_granted_through_the_ledger(anon_client, settings):
    settings.ALLOW_REGISTRATION = True
    settings.SIGNUP_CREDITS = Decimal("2.5")
    assert register(anon_client, "new@example.com").status_code == 201

    user = User.objects.get(email="new@example.com")
    row = CreditTransaction.objects.get(wallet__user=user)
    assert (row.kind, row.amount, row.balance_after, row.reference, row.reason, row.actor) == (
        TransactionKind.GRANT, Decimal("2.5"), Decimal("2.5"), f"signup:{user.pk}", "Signup credits", None,
    )  # fmt: skip
    assert held_and_balance(user) == (Decimal("2.5"), Decimal("0"))


@pytest.mark.django_db
def test_no_signup_credits_by_default(anon_client, settings):
    settings.ALLOW_REGISTRATION = True
    assert settings.SIGNUP_CREDITS == 0
    assert register(anon_client, "new@example.com").status_code == 201
    assert not CreditTransaction.objects.exists()


# --- twenty accounts at once, on PostgreSQL with the real worker ------------------------

ACCOUNTS, TURNS_EACH = 20, 4


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_twenty_registered_accounts_spend_at_most_their_signup_credits_plus_the_overdraft(
    celery_worker, warn_mode, anon_client
):
    warn_mode.ALLOW_REGISTRATION = True
    warn_mode.SIGNUP_CREDITS = ONE
    warn_mode.MAX_CONCURRENT_TURNS_PER_USER = TURNS_EACH
    # Each turn holds 8 output tokens at 0.1 credits (0.8) and, with a question longer
    # than that, costs exactly what it holds: 1 credit given + 1 of overdraft = 2 turns.
    price = make_price(
        alias="dear", input_credits_per_mtok=Decimal("0"), output_credits_per_mtok=Decimal("100000"),
        max_output_tokens=8,
    )  # fmt: skip
    clients = []
    for n in range(ACCOUNTS):
        response = register(anon_client, f"signup{n}@example.com")
        assert response.status_code == 201, response.content
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {response.json()['api_key']['key']}")
        user = User.objects.get(email=f"signup{n}@example.com")
        sessions = [ChatSession.objects.create(user=user, model_alias=price.alias) for _ in range(TURNS_EACH)]
        clients += [(client, session) for session in sessions]

    def send(job):  # noqa: ANN001, ANN202
        try:
            return post_turn(job[0], job[1], "a question well over thirty-two characters long").status_code
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=20) as pool:
        codes = list(pool.map(send, clients))

    # Accepted (202; 201 when the worker finished it before the answer was built) or refused.
    assert {202, 402} <= set(codes) <= {201, 202, 402}
    wait_for(lambda: not Turn.objects.exclude(status__in=["completed", "failed"]).exists(), timeout=60)
    assert set(Turn.objects.values_list("status", flat=True)) == {"completed"}
    given = ONE + ONE  # signup credits + overdraft limit
    for wallet in Wallet.objects.filter(user__email__startswith="signup"):
        spent = -(CreditTransaction.objects.filter(wallet=wallet, kind="debit").aggregate(s=Sum("amount"))["s"] or 0)
        assert spent == Decimal("1.6"), (wallet.user.email, spent)  # two turns, and no third
        assert wallet.balance == ONE - spent >= -ONE and wallet.held == 0
        assert Turn.objects.filter(user_id=wallet.user_id).count() == 2
    total = -CreditTransaction.objects.filter(kind="debit").aggregate(s=Sum("amount"))["s"]
    assert total == Decimal("32") <= ACCOUNTS * given
    assert codes.count(402) == ACCOUNTS * (TURNS_EACH - 2)
