"""Auto top-up when Stripe's answer is lost (issue 29): Stripe made the PaymentIntent,
Parley never heard. Before giving up, Parley looks it up at Stripe (the customer's
PaymentIntents, matched by the claim's metadata) and adopts it; a charge re-sent
after Stripe's 24-hour idempotency window looks up first too. One claim never makes
two PaymentIntents, and what was paid is credited once."""

from datetime import timedelta
from decimal import Decimal

import pytest
import stripe
from django.utils import timezone

from billing.models import AutoTopUp, CreditTransaction, TopUp
from billing.stripe import client
from billing.stripe.services import IDEMPOTENCY_KEY_TRUSTED, auto_top_up_charge
from billing.stripe.tasks import sweep_auto_top_ups
from tests.billing.stripe.conftest import balance_of
from tests.billing.stripe.test_auto_top_up import debit, funded, off_session_intents, save_card, turn_on  # noqa: F401
from tests.billing.stripe.test_webhooks import deliver

pytestmark = pytest.mark.django_db

INTENTS = "/v1/payment_intents"


def lose_answers_for_good(stripe_on) -> None:  # noqa: ANN001
    """The next create is carried out at Stripe and its answer lost, also on the
    stripe client's own retries (under the same key)."""
    stripe_on.lose_next(1 + stripe.max_network_retries, path_prefix=INTENTS)


def intents_at_stripe(stripe_on) -> list[dict]:  # noqa: ANN001
    return list(stripe_on.objects.get("payment_intents", {}).values())


def topup_rows(user) -> list[tuple[str, Decimal, str]]:  # noqa: ANN001
    return list(CreditTransaction.objects.filter(wallet__user=user, kind="topup").values_list("amount", "reference"))


def test_a_lost_answer_is_looked_up_adopted_and_credited_once(stripe_on, webhooks, funded, buyer_client):  # noqa: F811
    owner = funded
    save_card(buyer_client, stripe_on, webhooks)
    turn_on(buyer_client, threshold="500", amount_usd="20.00")
    lose_answers_for_good(stripe_on)

    debit(owner, "200", "turn-1")  # 600 -> 400: the claim, the charge, its answer lost, the task gives up

    [intent] = intents_at_stripe(stripe_on)  # Stripe made it, and charged the card
    assert intent["status"] == "succeeded"
    topup = TopUp.objects.get(mode="auto")
    assert (topup.status, topup.payment_intent_id, topup.error) == (TopUp.Status.PENDING, intent["id"], "")
    # The look-up: the customer's PaymentIntents since the claim (a read; no second create).
    [lookup] = stripe_on.calls("GET", INTENTS)
    assert lookup.params["customer"] == AutoTopUp.objects.get(user=owner).customer_id
    assert len(off_session_intents(stripe_on)) == 1 + stripe.max_network_retries  # one key, all of them
    # The claim is kept until Stripe's event settles it: no further claim, no sweep charge.
    assert AutoTopUp.objects.get(user=owner).in_flight_id == topup.pk
    debit(owner, "10", "turn-2")
    assert sweep_auto_top_ups() == 0
    assert len(intents_at_stripe(stripe_on)) == 1
    assert balance_of(owner) == Decimal("390")

    event = stripe_on.intent_event(intent["id"], "payment_intent.succeeded")
    deliver(webhooks, event)
    deliver(webhooks, event)  # redelivered

    assert balance_of(owner) == Decimal("2390")
    assert topup_rows(owner) == [(Decimal("2000"), intent["id"])]
    topup.refresh_from_db()
    assert topup.status == TopUp.Status.SUCCEEDED
    assert AutoTopUp.objects.get(user=owner).in_flight is None
    assert len(intents_at_stripe(stripe_on)) == 1


def test_a_create_stripe_never_carried_out_fails_the_top_up_and_frees_the_claim(
    stripe_on,
    webhooks,
    funded,  # noqa: F811
    buyer_client,
):
    save_card(buyer_client, stripe_on, webhooks)
    turn_on(buyer_client)
    stripe_on.fail_next(10, status=500, path_prefix=INTENTS, method="POST")  # the look-up still answers

    debit(funded, "200", "turn-1")

    assert intents_at_stripe(stripe_on) == []
    topup = TopUp.objects.get(mode="auto")
    assert (topup.status, topup.error) == (TopUp.Status.FAILED, "Stripe unreachable: APIError")
    assert len(stripe_on.calls("GET", INTENTS)) == 1
    row = AutoTopUp.objects.get(user=funded)
    assert (row.enabled, row.in_flight, row.last_error) == (True, None, "Stripe unreachable: APIError")


def test_when_stripe_cannot_be_asked_the_claim_stays_and_the_sweep_charges_it_once(
    stripe_on,
    webhooks,
    funded,  # noqa: F811
    buyer_client,
):
    owner = funded
    save_card(buyer_client, stripe_on, webhooks)
    turn_on(buyer_client)
    lose_answers_for_good(stripe_on)
    stripe_on.fail_next(1, status=500, path_prefix=INTENTS, method="GET")  # the look-up fails too

    debit(owner, "200", "turn-1")

    topup = TopUp.objects.get(mode="auto")
    assert (topup.status, topup.payment_intent_id) == (TopUp.Status.CREATED, None)  # nothing decided
    row = AutoTopUp.objects.get(user=owner)
    assert (row.in_flight_id, row.last_error) == (topup.pk, "Stripe unreachable: APIConnectionError")
    debit(owner, "10", "turn-2")  # still claimed: no second top-up
    assert TopUp.objects.filter(mode="auto").count() == 1

    # Minutes later the sweep sends the charge again, under the claim's key: Stripe
    # answers the PaymentIntent it made.
    TopUp.objects.filter(pk=topup.pk).update(created_at=timezone.now() - timedelta(minutes=6))
    assert sweep_auto_top_ups() == 1
    [intent] = intents_at_stripe(stripe_on)
    topup.refresh_from_db()
    assert (topup.status, topup.payment_intent_id) == (TopUp.Status.PENDING, intent["id"])
    deliver(webhooks, stripe_on.intent_event(intent["id"], "payment_intent.succeeded"))
    assert balance_of(owner) == Decimal("2390")
    assert topup_rows(owner) == [(Decimal("2000"), intent["id"])]


def test_a_charge_re_sent_after_the_idempotency_window_adopts_what_stripe_made(
    stripe_on,
    webhooks,
    funded,  # noqa: F811
    buyer_client,
):
    """Without the look-up, the key Stripe no longer remembers would make a second
    PaymentIntent (and a second charge) for the same claim."""
    owner = funded
    save_card(buyer_client, stripe_on, webhooks)
    turn_on(buyer_client)
    lose_answers_for_good(stripe_on)
    stripe_on.fail_next(1, status=500, path_prefix=INTENTS, method="GET")
    debit(owner, "200", "turn-1")  # made at Stripe, answer lost, nothing decided
    topup = TopUp.objects.get(mode="auto")
    assert topup.status == TopUp.Status.CREATED

    # A day later (workers down meanwhile): Stripe has forgotten the key.
    stripe_on.forget_idempotency_keys()
    TopUp.objects.filter(pk=topup.pk).update(created_at=timezone.now() - timedelta(hours=25))
    creates_before = len(off_session_intents(stripe_on))

    assert sweep_auto_top_ups() == 1

    [intent] = intents_at_stripe(stripe_on)
    assert len(off_session_intents(stripe_on)) == creates_before  # looked up, not created
    topup.refresh_from_db()
    assert (topup.status, topup.payment_intent_id) == (TopUp.Status.PENDING, intent["id"])
    deliver(webhooks, stripe_on.intent_event(intent["id"], "payment_intent.succeeded"))
    assert topup_rows(owner) == [(Decimal("2000"), intent["id"])]
    assert balance_of(owner) == Decimal("2400")


def test_a_charge_re_sent_after_the_window_with_nothing_at_stripe_creates_one(
    stripe_on,
    webhooks,
    funded,  # noqa: F811
    buyer_client,
):
    save_card(buyer_client, stripe_on, webhooks)
    turn_on(buyer_client)
    stripe_on.fail_next(10, status=500, path_prefix=INTENTS)  # Stripe down: no create, no look-up
    debit(funded, "200", "turn-1")
    topup = TopUp.objects.get(mode="auto")
    assert topup.status == TopUp.Status.CREATED
    stripe_on.faults.clear()
    TopUp.objects.filter(pk=topup.pk).update(created_at=timezone.now() - IDEMPOTENCY_KEY_TRUSTED)
    gets_before = len(stripe_on.calls("GET", INTENTS))

    auto_top_up_charge(topup_id=topup.pk)

    assert len(stripe_on.calls("GET", INTENTS)) == gets_before + 1  # looked up first
    [intent] = intents_at_stripe(stripe_on)
    topup.refresh_from_db()
    assert (topup.status, topup.payment_intent_id) == (TopUp.Status.PENDING, intent["id"])
    # Sent again (a duplicated message): the key, and else the look-up, answer the same one.
    TopUp.objects.filter(pk=topup.pk).update(status=TopUp.Status.CREATED, payment_intent_id=None)
    stripe_on.forget_idempotency_keys()
    auto_top_up_charge(topup_id=topup.pk)
    assert len(intents_at_stripe(stripe_on)) == 1
    # (the test's own rewind of the row, undone by the adoption)
    assert TopUp.objects.get(pk=topup.pk).payment_intent_id == intent["id"]


def test_a_charge_within_the_window_trusts_the_key_and_asks_nothing_more(
    stripe_on,
    webhooks,
    funded,  # noqa: F811
    buyer_client,
):
    save_card(buyer_client, stripe_on, webhooks)
    turn_on(buyer_client)
    debit(funded, "200", "turn-1")
    assert len(intents_at_stripe(stripe_on)) == 1
    assert stripe_on.calls("GET", INTENTS) == []


def test_the_look_up_pages_through_the_customers_payment_intents_and_matches_the_metadata(stripe_on):
    customer = "cus_lookup"
    ours = stripe_on.create_payment_intent(
        amount=2000, customer=customer, metadata={"parley_topup_id": "7", "parley_user_id": "3"}
    )
    stripe_on.create_payment_intent(amount=2000, customer="cus_other", metadata={"parley_topup_id": "8"})
    for number in range(120):  # newer ones first in the list: ours is on the second page
        stripe_on.create_payment_intent(amount=100, customer=customer, metadata={"parley_topup_id": str(1000 + number)})

    found = client.payment_intent_find(
        customer_id=customer, metadata={"parley_topup_id": "7", "parley_user_id": "3"}, created_gte=0
    )
    assert found.id == ours["id"]
    pages = stripe_on.calls("GET", INTENTS)
    assert [call.params.get("starting_after") is not None for call in pages] == [False, True]
    assert pages[0].params == {"customer": customer, "created": {"gte": "0"}, "limit": "100"}
    assert (
        client.payment_intent_find(customer_id=customer, metadata={"parley_topup_id": "8"}, created_gte=0) is None
    )  # another customer's
    later = int(timezone.now().timestamp()) + 3600
    assert (
        client.payment_intent_find(customer_id=customer, metadata={"parley_topup_id": "7"}, created_gte=later) is None
    )
