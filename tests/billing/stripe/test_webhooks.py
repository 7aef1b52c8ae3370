"""Stripe's webhooks through the real endpoint (signed for real) and the processing
task (eager here; tests/billing/stripe/test_worker.py runs it in a real worker on
PostgreSQL). Balances are asserted to the last decimal."""

import json
import logging
import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.conf import settings
from djstripe.models import Event, WebhookEventTrigger

from billing.models import CreditTransaction, TopUp, TopUpEvent
from billing.stripe.tasks import requeue_stripe_webhooks
from tests.billing.factories import TopUpFactory
from tests.billing.stripe.conftest import WEBHOOK_SECRET, balance_of, ledger_of
from tests.fakes.stripe_server import sign_event, sign_payload

TOP_UP = "/api/v1/users/me/wallet/top-up"

pytestmark = pytest.mark.django_db


def start_topup(client, amount: str = "10.00") -> TopUp:  # noqa: ANN001
    response = client.post(TOP_UP, {"amount_usd": amount}, format="json")
    assert response.status_code == 201, response.json()
    return TopUp.objects.get(pk=response.json()["id"])


def deliver(webhooks, event: dict) -> None:  # noqa: ANN001
    response = webhooks.post(event)
    assert response.status_code == 200, response.content


# --- payment_intent.succeeded ---------------------------------------------------------


def test_a_paid_top_up_grants_its_credits(stripe_on, webhooks, owner, buyer_client):
    topup = start_topup(buyer_client, "12.34")

    deliver(webhooks, stripe_on.pay(topup.payment_intent_id))

    assert balance_of(owner) == Decimal("1234.00000000")
    assert ledger_of(owner) == [("topup", Decimal("1234.00000000"), topup.payment_intent_id)]
    topup.refresh_from_db()
    assert topup.status == TopUp.Status.SUCCEEDED
    assert topup.granted_at is not None
    assert topup.charge_id.startswith("ch_")
    trigger = WebhookEventTrigger.objects.get()
    assert (trigger.valid, trigger.processed, trigger.exception) == (True, True, "")
    assert trigger.event.type == "payment_intent.succeeded"
    # dj-stripe synced what the event names, through the fake Stripe.
    assert stripe_on.calls("GET", f"/v1/payment_intents/{topup.payment_intent_id}")
    assert stripe_on.calls("GET", "/v1/account")


def test_a_duplicated_event_grants_once(stripe_on, webhooks, owner, buyer_client):
    topup = start_topup(buyer_client)
    event = stripe_on.pay(topup.payment_intent_id)

    for _ in range(3):
        deliver(webhooks, event)

    assert balance_of(owner) == Decimal("1000.00000000")
    assert CreditTransaction.objects.filter(kind="topup").count() == 1
    assert WebhookEventTrigger.objects.filter(processed=True).count() == 3
    assert Event.objects.filter(id=event["id"]).count() == 1


def test_the_grant_comes_from_our_top_up_not_from_the_metadata(stripe_on, webhooks, owner, buyer_client):
    topup = start_topup(buyer_client, "10.00")
    event = stripe_on.pay(topup.payment_intent_id)
    event["data"]["object"]["metadata"]["credits"] = "999999.00"  # signed, but never trusted for the amount

    deliver(webhooks, event)

    assert balance_of(owner) == Decimal("1000.00000000")


def test_an_event_whose_amount_differs_from_the_top_up_grants_nothing_and_stays_visible(
    stripe_on, webhooks, owner, buyer_client
):
    topup = start_topup(buyer_client, "10.00")
    event = stripe_on.pay(topup.payment_intent_id)
    event["data"]["object"]["amount"] = 50_000

    deliver(webhooks, event)  # acknowledged: the event is stored, processing refuses it

    assert balance_of(owner) == Decimal("0")
    trigger = WebhookEventTrigger.objects.get()
    assert trigger.processed is False
    assert trigger.exception.startswith("TopUpMismatch")
    # Our transaction rolled back before dj-stripe's part: nothing is recorded or granted.
    assert trigger.event is None
    assert not Event.objects.exists()
    assert not TopUpEvent.objects.exists()
    assert not CreditTransaction.objects.exists()


def test_events_for_unknown_payment_intents_are_recorded_and_ignored(stripe_on, webhooks, owner):
    intent = stripe_on.create_payment_intent(amount=2000, metadata={"order": "elsewhere"})

    deliver(webhooks, stripe_on.pay(intent["id"]))

    assert not CreditTransaction.objects.exists()
    trigger = WebhookEventTrigger.objects.get()
    assert trigger.processed is True
    assert trigger.event.type == "payment_intent.succeeded"


def test_metadata_cannot_claim_another_users_top_up(stripe_on, webhooks, owner, buyer_client):
    topup = start_topup(buyer_client, "10.00")
    # A PaymentIntent made elsewhere whose metadata names our top-up: the top-up
    # already has its own PaymentIntent, so nothing is adopted or granted.
    intent = stripe_on.create_payment_intent(
        amount=1000, metadata={"parley_topup_id": str(topup.pk), "parley_user_id": str(owner.pk)}
    )

    deliver(webhooks, stripe_on.pay(intent["id"]))

    assert balance_of(owner) == Decimal("0")


def test_a_failed_payment_marks_the_top_up_failed_and_a_later_success_still_grants(
    stripe_on, webhooks, owner, buyer_client
):
    topup = start_topup(buyer_client)

    deliver(webhooks, stripe_on.fail_payment(topup.payment_intent_id))
    topup.refresh_from_db()
    assert (topup.status, topup.error) == (TopUp.Status.FAILED, "Your card was declined.")
    assert balance_of(owner) == Decimal("0")

    deliver(webhooks, stripe_on.pay(topup.payment_intent_id))
    topup.refresh_from_db()
    assert topup.status == TopUp.Status.SUCCEEDED
    assert balance_of(owner) == Decimal("1000.00000000")


# --- refunds ----------------------------------------------------------------------------


def test_a_partial_then_a_full_refund_takes_back_each_share_once(stripe_on, webhooks, owner, buyer_client):
    topup = start_topup(buyer_client, "10.00")
    deliver(webhooks, stripe_on.pay(topup.payment_intent_id))

    partial = stripe_on.refund(topup.payment_intent_id, amount=250)
    deliver(webhooks, partial)
    assert balance_of(owner) == Decimal("750.00000000")
    topup.refresh_from_db()
    assert (topup.status, topup.refunded_credits) == (TopUp.Status.PARTIALLY_REFUNDED, Decimal("250"))

    rest = stripe_on.refund(topup.payment_intent_id)  # cumulative amount_refunded = 1000
    deliver(webhooks, rest)
    deliver(webhooks, partial)  # an old refund event, redelivered late
    deliver(webhooks, rest)

    assert balance_of(owner) == Decimal("0E-8")
    topup.refresh_from_db()
    assert (topup.status, topup.refunded_credits, topup.refunded_cents) == (
        TopUp.Status.REFUNDED,
        Decimal("1000"),
        1000,
    )
    # One ledger row per event that moved credits, referenced by the event's id.
    assert ledger_of(owner) == [
        ("topup", Decimal("1000.00000000"), topup.payment_intent_id),
        ("reversal", Decimal("-250.00000000"), partial["id"]),
        ("reversal", Decimal("-750.00000000"), rest["id"]),
    ]


def test_a_refund_share_is_proportional_to_the_credits_bought(settings, stripe_on, webhooks, owner, buyer_client):
    settings.CREDITS_PER_USD = Decimal("7")
    topup = start_topup(buyer_client, "3.00")  # 21 credits for 300 cents
    deliver(webhooks, stripe_on.pay(topup.payment_intent_id))

    deliver(webhooks, stripe_on.refund(topup.payment_intent_id, amount=100))
    assert balance_of(owner) == Decimal("14.00000000")
    deliver(webhooks, stripe_on.refund(topup.payment_intent_id, amount=1))
    # 21 * 101 / 300 = 7.07 credits taken back in all
    assert balance_of(owner) == Decimal("13.93000000")
    deliver(webhooks, stripe_on.refund(topup.payment_intent_id))
    assert balance_of(owner) == Decimal("0E-8")


def test_a_refund_delivered_before_the_payment_ends_in_the_right_balance(stripe_on, webhooks, owner, buyer_client):
    topup = start_topup(buyer_client, "10.00")
    paid = stripe_on.pay(topup.payment_intent_id)
    refunded = stripe_on.refund(topup.payment_intent_id, amount=400)

    deliver(webhooks, refunded)
    assert balance_of(owner) == Decimal("-400.00000000")  # taken back at once, never skipped
    deliver(webhooks, paid)

    assert balance_of(owner) == Decimal("600.00000000")
    topup.refresh_from_db()
    assert topup.status == TopUp.Status.PARTIALLY_REFUNDED


# --- disputes ---------------------------------------------------------------------------


def test_a_dispute_takes_the_credits_back_and_winning_it_gives_them_back(stripe_on, webhooks, owner, buyer_client):
    topup = start_topup(buyer_client, "10.00")
    deliver(webhooks, stripe_on.pay(topup.payment_intent_id))

    opened = stripe_on.dispute(topup.payment_intent_id)
    deliver(webhooks, opened)
    deliver(webhooks, opened)
    assert balance_of(owner) == Decimal("0E-8")
    topup.refresh_from_db()
    assert (topup.status, topup.dispute_status, topup.disputed_credits) == ("disputed", "open", Decimal("1000"))

    dispute_id = opened["data"]["object"]["id"]
    won = stripe_on.close_dispute(dispute_id, "won")
    deliver(webhooks, won)
    deliver(webhooks, won)
    deliver(webhooks, opened)

    assert balance_of(owner) == Decimal("1000.00000000")
    topup.refresh_from_db()
    assert (topup.status, topup.dispute_status, topup.disputed_credits) == ("succeeded", "won", Decimal("0"))
    assert ledger_of(owner)[1:] == [
        ("reversal", Decimal("-1000.00000000"), opened["id"]),
        ("adjustment", Decimal("1000.00000000"), won["id"]),
    ]


def test_a_lost_dispute_keeps_the_credits_taken_back(stripe_on, webhooks, owner, buyer_client):
    topup = start_topup(buyer_client, "10.00")
    deliver(webhooks, stripe_on.pay(topup.payment_intent_id))
    opened = stripe_on.dispute(topup.payment_intent_id, amount=600)
    deliver(webhooks, opened)
    deliver(webhooks, stripe_on.close_dispute(opened["data"]["object"]["id"], "lost"))

    assert balance_of(owner) == Decimal("400.00000000")
    topup.refresh_from_db()
    assert (topup.status, topup.dispute_status) == ("disputed", "lost")


def test_a_won_dispute_delivered_before_it_was_opened_ends_in_the_right_balance(
    stripe_on, webhooks, owner, buyer_client
):
    topup = start_topup(buyer_client, "10.00")
    paid = stripe_on.pay(topup.payment_intent_id)
    opened = stripe_on.dispute(topup.payment_intent_id)
    won = stripe_on.close_dispute(opened["data"]["object"]["id"], "won")

    for event in (won, opened, paid, won, opened):
        deliver(webhooks, event)

    assert balance_of(owner) == Decimal("1000.00000000")
    topup.refresh_from_db()
    assert topup.dispute_status == "won"
    assert topup.status == TopUp.Status.SUCCEEDED


# --- the endpoint -------------------------------------------------------------------------


def _nothing_recorded(owner) -> None:  # noqa: ANN001
    assert not WebhookEventTrigger.objects.exists()
    assert not Event.objects.exists()
    assert balance_of(owner) == Decimal("0")


def test_a_bad_signature_is_refused_and_records_nothing(stripe_on, webhooks, owner, buyer_client):
    topup = start_topup(buyer_client)
    event = stripe_on.pay(topup.payment_intent_id)
    calls_before = len(stripe_on.requests)

    response = webhooks.post(event, secret="whsec_not_the_endpoints_secret")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_signature"
    _nothing_recorded(owner)
    assert len(stripe_on.requests) == calls_before


def test_a_body_changed_after_signing_is_refused(
    stripe_on, webhooks, owner, buyer_client, django_capture_on_commit_callbacks
):
    topup = start_topup(buyer_client)
    event = stripe_on.pay(topup.payment_intent_id)
    signed_body, header = sign_event(event, WEBHOOK_SECRET)
    tampered = signed_body.replace('"amount": 1000', '"amount": 1001')

    with django_capture_on_commit_callbacks(execute=True):
        response = webhooks.client.post(
            webhooks.path, data=tampered, content_type="application/json", HTTP_STRIPE_SIGNATURE=header
        )

    assert response.status_code == 400
    _nothing_recorded(owner)


def test_a_missing_signature_is_refused(stripe_on, webhooks, owner, buyer_client):
    topup = start_topup(buyer_client)
    response = webhooks.client.post(
        webhooks.path, data=stripe_on.pay(topup.payment_intent_id), content_type="application/json"
    )
    assert response.status_code == 400
    assert "missing" in response.json()["error"]["message"]
    _nothing_recorded(owner)


def test_an_expired_timestamp_is_refused(stripe_on, webhooks, owner, buyer_client):
    topup = start_topup(buyer_client)
    event = stripe_on.pay(topup.payment_intent_id)

    response = webhooks.post(event, timestamp=int(time.time()) - webhooks.endpoint.djstripe_tolerance - 60)

    assert response.status_code == 400
    _nothing_recorded(owner)


def test_a_signed_body_that_is_not_an_event_is_refused(stripe_on, webhooks, owner):
    for body in ("not json", '{"id": "evt_1", "type": "x"}', "[]"):
        response = webhooks.client.post(
            webhooks.path,
            data=body,
            content_type="application/json",
            HTTP_STRIPE_SIGNATURE=sign_payload(body, WEBHOOK_SECRET),
        )
        assert response.status_code == 400, body
    _nothing_recorded(owner)


def test_an_unknown_endpoint_is_404(stripe_on, webhooks, owner, buyer_client, client):
    topup = start_topup(buyer_client)
    body, header = sign_event(stripe_on.pay(topup.payment_intent_id), WEBHOOK_SECRET)
    response = client.post(
        "/stripe/webhook/00000000-0000-0000-0000-000000000000/",
        data=body,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=header,
    )
    assert response.status_code == 404
    _nothing_recorded(owner)


def test_only_post_is_allowed(webhooks):
    assert webhooks.client.get(webhooks.path).status_code == 405


# --- the request defers processing to the task ----------------------------------------------


def test_the_webhook_request_stores_the_event_and_makes_no_stripe_call(
    stripe_on, webhooks, owner, django_capture_on_commit_callbacks
):
    # A top-up row as topup_create leaves it (that service itself needs a
    # transaction-free test); its PaymentIntent lives in the fake Stripe.
    intent = stripe_on.create_payment_intent(amount=1000)
    topup = TopUpFactory(
        user=owner, amount_usd=Decimal("10.00"), credits=Decimal("1000"), payment_intent_id=intent["id"]
    )
    event = stripe_on.pay(intent["id"])
    stripe_on.requests.clear()

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = webhooks.post(event, process=False)

    assert response.status_code == 200
    assert stripe_on.requests == []  # no Stripe API call inside the request
    trigger = WebhookEventTrigger.objects.get()
    assert (trigger.valid, trigger.processed) == (True, False)
    assert trigger.body == json.dumps(event)
    assert len(callbacks) == 1  # the processing task, sent on commit
    assert balance_of(owner) == Decimal("0")

    callbacks[0]()  # the task runs (eagerly here)

    trigger.refresh_from_db()
    assert trigger.processed is True
    assert balance_of(owner) == Decimal("1000.00000000")
    topup.refresh_from_db()
    assert topup.status == TopUp.Status.SUCCEEDED


def test_the_sweeper_sends_triggers_whose_task_was_lost(stripe_on, webhooks, owner, django_capture_on_commit_callbacks):
    intent = stripe_on.create_payment_intent(amount=500)
    TopUpFactory(user=owner, amount_usd=Decimal("5.00"), credits=Decimal("500"), payment_intent_id=intent["id"])
    with django_capture_on_commit_callbacks(execute=False):
        assert webhooks.post(stripe_on.pay(intent["id"]), process=False).status_code == 200  # task never sent
    assert requeue_stripe_webhooks() == 0  # too recent: its task may still be on its way

    WebhookEventTrigger.objects.update(created=WebhookEventTrigger.objects.get().created.replace(year=2020))
    with django_capture_on_commit_callbacks(execute=True):
        assert requeue_stripe_webhooks() == 1

    assert WebhookEventTrigger.objects.get().processed is True
    assert balance_of(owner) == Decimal("500.00000000")
    assert requeue_stripe_webhooks() == 0


# --- the handler depends only on the signed event -------------------------------------------


def test_the_grant_happens_even_when_dj_stripes_sync_is_refused_by_stripe(stripe_on, webhooks, owner, buyer_client):
    topup = start_topup(buyer_client)
    event = stripe_on.pay(topup.payment_intent_id)
    # dj-stripe's sync of the PaymentIntent gets a 400 (InvalidRequestError, not retried).
    stripe_on.fail_next(5, status=400, path_prefix="/v1/payment_intents/")

    deliver(webhooks, event)

    assert balance_of(owner) == Decimal("1000.00000000")
    topup.refresh_from_db()
    assert topup.status == TopUp.Status.SUCCEEDED
    trigger = WebhookEventTrigger.objects.get()
    assert trigger.processed is False  # dj-stripe's part is still to do
    assert trigger.exception.startswith("InvalidRequestError")


def test_the_sweeper_retries_a_failed_trigger_and_the_credits_move_once(
    stripe_on, webhooks, owner, buyer_client, django_capture_on_commit_callbacks
):
    topup = start_topup(buyer_client)
    stripe_on.fail_next(1, status=400, path_prefix="/v1/payment_intents/")
    deliver(webhooks, stripe_on.pay(topup.payment_intent_id))
    trigger = WebhookEventTrigger.objects.get()
    assert trigger.exception
    assert requeue_stripe_webhooks() == 0  # failed moments ago: its own retries come first

    long_ago = trigger.created - timedelta(minutes=10)
    WebhookEventTrigger.objects.update(created=long_ago, updated=long_ago)
    with django_capture_on_commit_callbacks(execute=True):
        assert requeue_stripe_webhooks() == 1

    trigger.refresh_from_db()
    assert (trigger.processed, trigger.exception) == (True, "")
    assert trigger.event.type == "payment_intent.succeeded"
    assert balance_of(owner) == Decimal("1000.00000000")
    assert CreditTransaction.objects.count() == 1


def test_a_failed_trigger_older_than_stripes_retry_window_is_left_to_staff(stripe_on, webhooks, owner, buyer_client):
    topup = start_topup(buyer_client)
    stripe_on.fail_next(1, status=400, path_prefix="/v1/payment_intents/")
    deliver(webhooks, stripe_on.pay(topup.payment_intent_id))
    long_ago = WebhookEventTrigger.objects.get().created - timedelta(days=4)
    WebhookEventTrigger.objects.update(created=long_ago, updated=long_ago)

    assert requeue_stripe_webhooks() == 0


def test_an_event_of_another_api_version_is_logged_and_applied(stripe_on, webhooks, owner, buyer_client, caplog):
    topup = start_topup(buyer_client)
    event = stripe_on.pay(topup.payment_intent_id)
    event["api_version"] = "2024-06-20"

    with caplog.at_level(logging.WARNING, logger="billing.stripe.services"):
        deliver(webhooks, event)

    assert balance_of(owner) == Decimal("1000.00000000")
    assert any(
        "2024-06-20" in record.getMessage() and settings.STRIPE_API_VERSION in record.getMessage()
        for record in caplog.records
    )
