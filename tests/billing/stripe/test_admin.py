"""Failed webhook processing is retried by the task, stays visible in the admin, and
is re-run from there; top-ups are visible read-only."""

from decimal import Decimal

import pytest
from django.test import Client
from djstripe.models import WebhookEventTrigger

from billing.models import TopUp
from tests.billing.stripe.conftest import balance_of
from tests.conftest import make_user

TOP_UP = "/api/v1/users/me/wallet/top-up"
TRIGGERS = "/admin/djstripe/webhookeventtrigger/"

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def admin_browser(grant_staff) -> Client:  # noqa: ANN001
    grant_staff.is_superuser = True
    grant_staff.save(update_fields=["is_superuser"])
    browser = Client()
    browser.force_login(grant_staff)
    return browser


def test_failed_processing_is_retried_then_kept_visible_and_rerun_from_the_admin(
    stripe_on, webhooks, owner, buyer_client, admin_browser
):
    topup = TopUp.objects.get(pk=buyer_client.post(TOP_UP, {"amount_usd": "10.00"}, format="json").json()["id"])
    event = stripe_on.pay(topup.payment_intent_id)
    stripe_on.fail_next(1000, status=500, path_prefix="/v1/payment_intents/")  # Stripe down while processing

    assert webhooks.post(event).status_code == 200  # still acknowledged: the event is stored

    # Eager tasks try once (Celery does not run an eager task's retries; the worker
    # retries with backoff, see test_worker.py). The failure is kept on the trigger.
    assert len(stripe_on.calls("GET", "/v1/payment_intents/")) == 1
    trigger = WebhookEventTrigger.objects.get()
    assert (trigger.valid, trigger.processed) == (True, False)
    assert trigger.exception.startswith("APIError")
    assert "Traceback" in trigger.traceback
    assert balance_of(owner) == Decimal("1000.00000000")  # the credits never wait on dj-stripe's sync

    failed = admin_browser.get(TRIGGERS, {"processing": "failed"})
    assert failed.status_code == 200
    assert f"id={trigger.pk}," in failed.content.decode()

    stripe_on.faults.clear()  # Stripe is back
    response = admin_browser.post(
        TRIGGERS, {"action": "rerun_processing", "_selected_action": [trigger.pk]}, follow=True
    )

    assert response.status_code == 200
    assert "Sent 1 webhook event(s) for processing" in response.content.decode()
    trigger.refresh_from_db()
    assert (trigger.processed, trigger.exception, trigger.traceback) == (True, "", "")
    assert trigger.event.type == "payment_intent.succeeded"  # dj-stripe's part caught up
    assert balance_of(owner) == Decimal("1000.00000000")

    # Re-running a processed trigger changes nothing.
    admin_browser.post(TRIGGERS, {"action": "rerun_processing", "_selected_action": [trigger.pk]})
    assert balance_of(owner) == Decimal("1000.00000000")


def test_staff_without_the_permission_cannot_rerun(stripe_on, webhooks, client):
    plain_staff = make_user("plain-staff@example.com", staff=True)
    client.force_login(plain_staff)
    response = client.post(TRIGGERS, {"action": "rerun_processing", "_selected_action": [1]})
    assert response.status_code == 403


def test_top_ups_are_listed_read_only_in_the_admin(stripe_on, owner, buyer_client, admin_browser):
    topup_id = buyer_client.post(TOP_UP, {"amount_usd": "10.00"}, format="json").json()["id"]

    listing = admin_browser.get("/admin/billing/topup/")
    assert listing.status_code == 200
    assert TopUp.objects.get(pk=topup_id).payment_intent_id in listing.content.decode()

    detail = admin_browser.get(f"/admin/billing/topup/{topup_id}/change/")
    assert detail.status_code == 200
    assert 'name="credits"' not in detail.content.decode()  # nothing editable
    assert admin_browser.post(f"/admin/billing/topup/{topup_id}/change/", {"credits": "1"}).status_code == 403
    assert 'href="/admin/billing/topup/" class="viewlink"' in admin_browser.get("/admin/").content.decode()
    assert admin_browser.get("/admin/billing/topup/add/").status_code == 403
    assert admin_browser.post(f"/admin/billing/topup/{topup_id}/delete/", {"post": "yes"}).status_code == 403
    assert TopUp.objects.filter(pk=topup_id).exists()


def test_stripe_events_are_listed_read_only_with_the_pending_ones(stripe_on, webhooks, owner, admin_browser):
    intent = stripe_on.create_payment_intent(amount=1000)
    stripe_on.pay(intent["id"])
    refunded = stripe_on.refund(intent["id"], amount=100)  # no top-up has this PaymentIntent
    assert webhooks.post(refunded).status_code == 200

    listing = admin_browser.get("/admin/billing/topupevent/", {"state__exact": "pending"})

    assert listing.status_code == 200
    assert refunded["id"] in listing.content.decode()
    assert admin_browser.get("/admin/billing/topupevent/add/").status_code == 403


def test_no_admin_page_stores_a_stripe_api_key(admin_browser):
    assert admin_browser.get("/admin/djstripe/apikey/add/").status_code == 404
