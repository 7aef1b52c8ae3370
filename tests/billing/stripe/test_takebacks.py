"""Refunds and disputes of one charge, reconciled against each other, with the
shapes Stripe sends at the pinned API version (tests/fakes/stripe_server.py):
inquiries move no money, a chargeback's funds move with its balance transactions,
a refund can fail, an event may name only the charge or arrive before its top-up
is known. The take-backs of one charge never exceed its credits; every scenario
ends with wallets equal to their ledger (the conftest's check)."""

from decimal import Decimal
from importlib import import_module

import pytest
from django.apps import apps
from djstripe.models import WebhookEventTrigger

from billing.models import CreditTransaction, TopUp
from billing.services import wallet_reverse
from billing.stripe.tasks import apply_pending_stripe_events
from tests.billing.factories import TopUpFactory
from tests.billing.stripe.conftest import balance_of
from tests.billing.stripe.test_webhooks import deliver, start_topup

pytestmark = pytest.mark.django_db


def paid_topup(stripe_on, webhooks, client, amount: str = "10.00") -> TopUp:  # noqa: ANN001
    topup = start_topup(client, amount)
    deliver(webhooks, stripe_on.pay(topup.payment_intent_id))
    topup.refresh_from_db()
    return topup


def taken_back(user) -> Decimal:  # noqa: ANN001
    """Credits taken back (reversals) minus given back (adjustments), in the ledger."""
    rows = CreditTransaction.objects.filter(wallet__user=user, kind__in=["reversal", "adjustment"])
    return -sum((row.amount for row in rows), Decimal("0"))


# --- disputes and refunds of one charge ---------------------------------------------------


def test_an_inquiry_resolved_by_refunding_is_taken_back_once(stripe_on, webhooks, owner, buyer_client):
    topup = paid_topup(stripe_on, webhooks, buyer_client)
    inquiry = stripe_on.dispute(topup.payment_intent_id, status="warning_needs_response")
    deliver(webhooks, inquiry)
    deliver(webhooks, stripe_on.refund(topup.payment_intent_id))  # Stripe's advice for an inquiry
    assert balance_of(owner) == Decimal("0E-8")  # while the inquiry is still open
    deliver(webhooks, stripe_on.close_dispute(inquiry["data"]["object"]["id"], "warning_closed"))

    assert balance_of(owner) == Decimal("0E-8")
    assert taken_back(owner) == Decimal("1000")
    topup.refresh_from_db()
    assert (topup.status, topup.refunded_credits, topup.disputed_credits) == (
        TopUp.Status.REFUNDED,
        Decimal("1000"),
        Decimal("0"),
    )


def test_a_prevented_dispute_and_its_refund_are_taken_back_once(stripe_on, webhooks, owner, buyer_client):
    """Visa RDR: the dispute is `prevented`, the payment refunded instead."""
    topup = paid_topup(stripe_on, webhooks, buyer_client)
    prevented = stripe_on.dispute(topup.payment_intent_id, status="prevented")
    refunded = stripe_on.refund(topup.payment_intent_id)

    for event in (prevented, refunded, prevented):
        deliver(webhooks, event)

    assert balance_of(owner) == Decimal("0E-8")
    assert taken_back(owner) == Decimal("1000")


def test_a_chargeback_and_a_refund_of_one_charge_never_take_back_more_than_its_credits(
    stripe_on, webhooks, owner, buyer_client
):
    topup = paid_topup(stripe_on, webhooks, buyer_client)
    deliver(webhooks, stripe_on.refund(topup.payment_intent_id, amount=600))
    assert balance_of(owner) == Decimal("400.00000000")

    deliver(webhooks, stripe_on.dispute(topup.payment_intent_id))  # the whole 1000 withdrawn too

    assert balance_of(owner) == Decimal("0E-8")
    assert taken_back(owner) == Decimal("1000")
    topup.refresh_from_db()
    assert (topup.refunded_credits, topup.disputed_credits) == (Decimal("600"), Decimal("400"))


def test_an_inquiry_claws_nothing_back(stripe_on, webhooks, owner, buyer_client):
    topup = paid_topup(stripe_on, webhooks, buyer_client)

    deliver(webhooks, stripe_on.dispute(topup.payment_intent_id, status="warning_needs_response"))

    assert balance_of(owner) == Decimal("1000.00000000")
    topup.refresh_from_db()
    assert (topup.status, topup.dispute_status, topup.disputed_credits) == ("disputed", "open", Decimal("0"))


def test_an_escalated_inquiry_takes_back_when_funds_are_withdrawn_and_gives_back_when_reinstated(
    stripe_on, webhooks, owner, buyer_client
):
    topup = paid_topup(stripe_on, webhooks, buyer_client)
    inquiry = stripe_on.dispute(topup.payment_intent_id, status="warning_needs_response")
    dispute_id = inquiry["data"]["object"]["id"]
    deliver(webhooks, inquiry)
    assert balance_of(owner) == Decimal("1000.00000000")

    deliver(webhooks, stripe_on.escalate_dispute(dispute_id))  # charge.dispute.funds_withdrawn
    assert balance_of(owner) == Decimal("0E-8")

    closed = stripe_on.close_dispute(dispute_id, "won")
    reinstated = stripe_on.dispute_event(dispute_id, "charge.dispute.funds_reinstated")
    for event in (reinstated, closed, inquiry, reinstated):
        deliver(webhooks, event)

    assert balance_of(owner) == Decimal("1000.00000000")
    topup.refresh_from_db()
    assert (topup.status, topup.dispute_status, topup.disputed_credits) == ("succeeded", "won", Decimal("0"))


def test_an_older_dispute_event_delivered_late_changes_nothing(stripe_on, webhooks, owner, buyer_client):
    topup = paid_topup(stripe_on, webhooks, buyer_client)
    opened = stripe_on.dispute(topup.payment_intent_id)
    dispute_id = opened["data"]["object"]["id"]
    won = stripe_on.close_dispute(dispute_id, "won")

    deliver(webhooks, won)
    deliver(webhooks, opened)  # the withdrawal is older than the reinstatement it already saw

    assert balance_of(owner) == Decimal("1000.00000000")


# --- failed refunds ------------------------------------------------------------------------


def test_a_failed_refund_gives_the_credits_back(stripe_on, webhooks, owner, buyer_client):
    topup = paid_topup(stripe_on, webhooks, buyer_client)
    deliver(webhooks, stripe_on.refund(topup.payment_intent_id, amount=400))
    assert balance_of(owner) == Decimal("600.00000000")
    refund_id = stripe_on.refunds_of(topup.payment_intent_id)[0]["id"]

    failed = stripe_on.fail_refund(refund_id)
    deliver(webhooks, failed)
    deliver(webhooks, failed)

    assert balance_of(owner) == Decimal("1000.00000000")
    topup.refresh_from_db()
    assert (topup.status, topup.refunded_cents, topup.refunded_credits) == ("succeeded", 0, Decimal("0"))

    # A later refund of the same charge is taken back as usual.
    deliver(webhooks, stripe_on.refund(topup.payment_intent_id, amount=300))
    assert balance_of(owner) == Decimal("700.00000000")


def test_a_refund_failure_delivered_before_its_refund_ends_in_the_right_balance(
    stripe_on, webhooks, owner, buyer_client
):
    topup = paid_topup(stripe_on, webhooks, buyer_client)
    refunded = stripe_on.refund(topup.payment_intent_id, amount=400)
    failed = stripe_on.fail_refund(stripe_on.refunds_of(topup.payment_intent_id)[0]["id"])

    deliver(webhooks, failed)
    deliver(webhooks, refunded)  # older than the failure: already counted out

    assert balance_of(owner) == Decimal("1000.00000000")


# --- events that cannot be matched yet ----------------------------------------------------


def test_a_dispute_naming_only_its_charge_before_the_payment_is_applied_when_the_payment_arrives(
    stripe_on, webhooks, owner, buyer_client
):
    topup = start_topup(buyer_client)
    paid = stripe_on.pay(topup.payment_intent_id)
    opened = stripe_on.dispute(topup.payment_intent_id, payment_intent=False)  # as in Stripe's fixture
    assert opened["data"]["object"]["payment_intent"] is None

    deliver(webhooks, opened)  # no top-up knows this charge yet: kept pending
    assert balance_of(owner) == Decimal("0")
    assert WebhookEventTrigger.objects.get().processed is True

    deliver(webhooks, paid)  # names the charge (latest_charge): the dispute applies now

    assert balance_of(owner) == Decimal("0E-8")
    topup.refresh_from_db()
    assert (topup.dispute_status, topup.disputed_credits) == ("open", Decimal("1000"))


def test_a_refund_before_the_top_up_has_its_payment_intent_id_is_applied_when_it_gets_it(stripe_on, webhooks, owner):
    # The process died between Stripe's answer and storing the PaymentIntent id: the
    # row has none, the PaymentIntent names the row in its metadata.
    topup = TopUpFactory(user=owner, payment_intent_id=None, status=TopUp.Status.CREATED)
    intent = stripe_on.create_payment_intent(
        amount=1000, metadata={"parley_topup_id": str(topup.pk), "parley_user_id": str(owner.pk)}
    )
    paid = stripe_on.pay(intent["id"])
    refunded = stripe_on.refund(intent["id"], amount=400)

    deliver(webhooks, refunded)  # kept pending
    assert balance_of(owner) == Decimal("0")
    deliver(webhooks, paid)  # adopts the row by its metadata, then applies the refund

    assert balance_of(owner) == Decimal("600.00000000")
    topup.refresh_from_db()
    assert (topup.payment_intent_id, topup.status) == (intent["id"], "partially_refunded")


def test_the_sweeper_applies_a_pending_event_once_its_top_up_is_known(stripe_on, webhooks, owner):
    intent = stripe_on.create_payment_intent(amount=1000)
    stripe_on.pay(intent["id"])
    refunded = stripe_on.refund(intent["id"], amount=250)
    topup = TopUpFactory(user=owner, payment_intent_id=None, status=TopUp.Status.CREATED)

    deliver(webhooks, refunded)
    assert apply_pending_stripe_events() == 0  # still no top-up for it
    # What topup_create does once Stripe answers (here the grant came from staff).
    TopUp.objects.filter(pk=topup.pk).update(payment_intent_id=intent["id"], status=TopUp.Status.PENDING)

    assert apply_pending_stripe_events() == 1
    assert apply_pending_stripe_events() == 0
    assert balance_of(owner) == Decimal("-250.00000000")
    topup.refresh_from_db()
    assert topup.refunded_cents == 250


def test_a_dispute_taken_back_before_the_upgrade_is_not_given_back_by_a_later_refund(
    stripe_on, webhooks, owner, buyer_client
):
    """Migration billing 0002 rebuilds each dispute's state from the old ledger rows."""
    backfill = import_module("billing.migrations.0002_topup_stripe_reconciliation").backfill_disputes
    topup = paid_topup(stripe_on, webhooks, buyer_client)
    opened = stripe_on.dispute(topup.payment_intent_id, amount=600)
    dispute_id = opened["data"]["object"]["id"]
    # What the old handler left: a reversal referenced by the dispute id, and only
    # disputed_credits on the row.
    wallet_reverse(user=owner, amount="600", reference=dispute_id, reason=f"Stripe dispute on top-up {topup.pk}")
    TopUp.objects.filter(pk=topup.pk).update(dispute_status="open", disputed_credits=Decimal("600"))

    backfill(apps, None)
    deliver(webhooks, stripe_on.refund(topup.payment_intent_id, amount=200))

    # 600 withdrawn + 200 refunded: 800 taken back in all, not 200.
    assert balance_of(owner) == Decimal("200.00000000")
    deliver(webhooks, stripe_on.close_dispute(dispute_id, "won"))  # the real dispute replaces the rebuilt entry
    assert balance_of(owner) == Decimal("800.00000000")
