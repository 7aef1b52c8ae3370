"""Auto top-up against the fake Stripe: a card saved through a Checkout Session in
setup mode, the settings, one off-session PaymentIntent when a settled debit takes
the balance under the threshold (also for concurrent debits, on PostgreSQL), the
webhook crediting it, and a declined card turning auto top-up off."""

import threading
import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import close_old_connections, connection
from django.test import Client, TestCase
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from djstripe.models import WebhookEventTrigger

from billing.models import AutoTopUp, CreditTransaction, TopUp
from billing.services import wallet_debit, wallet_grant
from billing.stripe.tasks import sweep_auto_top_ups
from tests.billing.stripe.conftest import balance_of
from tests.billing.stripe.test_webhooks import deliver
from tests.billing.stripe.test_worker import stripe_worker, wait_for  # noqa: F401  (stripe_worker: a fixture)

CARD = "/api/v1/users/me/auto-top-up/card"
AUTO = "/api/v1/users/me/auto-top-up"
WALLET = "/api/v1/users/me/wallet"
URLS = {"success_url": "https://app.example/card-saved", "cancel_url": "https://app.example/"}

pytestmark = pytest.mark.django_db


def save_card(client, stripe_on, webhooks) -> str:  # noqa: ANN001
    """The user saves a card on the hosted page; returns the PaymentMethod id."""
    response = client.post(CARD, URLS, format="json")
    assert response.status_code == 201, response.json()
    session_id = response.json()["url"].rsplit("/", 1)[1]
    completed, _ = stripe_on.complete_checkout(session_id, last4="1881")
    deliver(webhooks, completed)
    return stripe_on.get("setup_intents", completed["data"]["object"]["setup_intent"])["payment_method"]


def turn_on(client, threshold: str = "500", amount_usd: str = "20.00"):  # noqa: ANN001, ANN201
    return client.put(AUTO, {"threshold": threshold, "amount_usd": amount_usd}, format="json")


def debit(user, amount: str, reference: str) -> None:  # noqa: ANN001
    """A settled debit, with its after-commit hooks run (the test's transaction never commits)."""
    with TestCase.captureOnCommitCallbacks(execute=True):
        wallet_debit(user=user, amount=Decimal(amount), reference=reference)


@pytest.fixture
def funded(owner):  # noqa: ANN001, ANN201
    wallet_grant(user=owner, amount=Decimal("600"), reason="test credits")
    return owner


def off_session_intents(stripe_on) -> list:  # noqa: ANN001
    return [call for call in stripe_on.calls("POST", "/v1/payment_intents") if call.params.get("off_session")]


# --- saving a card ----------------------------------------------------------------------


def test_a_card_is_saved_through_a_checkout_session_in_setup_mode(stripe_on, webhooks, owner, buyer_client):
    method_id = save_card(buyer_client, stripe_on, webhooks)

    [call] = stripe_on.calls("POST", "/v1/checkout/sessions")
    assert (call.params["mode"], call.params["currency"]) == ("setup", "usd")
    assert "line_items" not in call.params
    row = AutoTopUp.objects.get(user=owner)
    assert row.payment_method_id == method_id
    assert row.customer_id == stripe_on.get("payment_methods", method_id)["customer"]
    assert (row.card_brand, row.card_last4, row.enabled) == ("visa", "1881", False)
    body = buyer_client.get(AUTO).json()
    assert body["card"]["last4"] == "1881"
    assert body["enabled"] is False
    assert stripe_on.calls("GET", "/v1/setup_intents/")  # the card is read from the SetupIntent
    assert not CreditTransaction.objects.exists()  # nothing charged


def test_only_the_latest_card_setup_saves_its_card(stripe_on, webhooks, owner, buyer_client):
    older = buyer_client.post(CARD, URLS, format="json").json()["url"].rsplit("/", 1)[1]
    newest_method = save_card(buyer_client, stripe_on, webhooks)
    late, _ = stripe_on.complete_checkout(older, last4="0005")

    deliver(webhooks, late)

    assert AutoTopUp.objects.get(user=owner).payment_method_id == newest_method


def test_card_setup_needs_both_urls(stripe_on, buyer_client):
    response = buyer_client.post(CARD, {"success_url": "https://app.example/"}, format="json")
    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == ["cancel_url"]
    assert stripe_on.requests == []


# --- settings ----------------------------------------------------------------------------


def test_turning_auto_top_up_on_needs_a_saved_card(stripe_on, owner, buyer_client):
    response = turn_on(buyer_client)

    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == ["card"]
    assert buyer_client.get(AUTO).json()["enabled"] is False


@pytest.mark.parametrize(
    ("threshold", "amount_usd", "field"),
    [
        ("500", "0.99", "amount_usd"),
        ("500", "500.01", "amount_usd"),
        ("500", "ten", "amount_usd"),
        ("0", "20.00", "threshold"),
        ("-5", "20.00", "threshold"),
        (None, "20.00", "threshold"),
    ],
)
def test_bad_auto_top_up_settings_are_a_400_naming_the_field(
    stripe_on, webhooks, owner, buyer_client, threshold, amount_usd, field
):
    save_card(buyer_client, stripe_on, webhooks)
    response = buyer_client.put(AUTO, {"threshold": threshold, "amount_usd": amount_usd}, format="json")

    assert response.status_code == 400, response.json()
    assert list(response.json()["error"]["fields"]) == [field]
    assert AutoTopUp.objects.get(user=owner).enabled is False


def test_auto_top_up_is_turned_on_shown_and_turned_off(stripe_on, webhooks, owner, buyer_client):
    save_card(buyer_client, stripe_on, webhooks)

    on = turn_on(buyer_client, threshold="250.5", amount_usd="15.00")
    assert on.status_code == 200, on.json()
    assert on.json()["enabled"] is True
    assert (on.json()["threshold"], on.json()["amount_usd"]) == ("250.50000000", "15.00")
    assert buyer_client.get(WALLET).json()["auto_top_up"] == buyer_client.get(AUTO).json() == on.json()

    off = buyer_client.delete(AUTO)
    assert off.status_code == 200
    assert (off.json()["enabled"], off.json()["disabled_reason"]) == (False, "Turned off by the user.")
    assert off.json()["card"]["last4"] == "1881"  # the card stays saved


# --- the charge ----------------------------------------------------------------------------


def test_a_debit_under_the_threshold_charges_the_card_once_and_the_webhook_credits_it(
    stripe_on, webhooks, funded, buyer_client
):
    owner = funded
    method_id = save_card(buyer_client, stripe_on, webhooks)
    assert turn_on(buyer_client, threshold="500", amount_usd="20.00").status_code == 200

    debit(owner, "150", "turn-1")  # 600 -> 450: under 500
    debit(owner, "50", "turn-2")  # still under, but one is in flight

    [call] = off_session_intents(stripe_on)
    topup = TopUp.objects.get(mode="auto")
    assert call.params == {
        "amount": "2000",
        "currency": "usd",
        "customer": AutoTopUp.objects.get(user=owner).customer_id,
        "payment_method": method_id,
        "off_session": "true",
        "confirm": "true",
        "metadata": {"parley_topup_id": str(topup.pk), "parley_user_id": str(owner.pk), "credits": "2000.00",
                     "parley_mode": "auto"},
        "description": "Parley auto top-up: 2000.00 credits",
    }  # fmt: skip
    assert call.idempotency_key == f"parley-topup-{topup.idempotency_key}"
    assert (topup.status, topup.credits) == (TopUp.Status.PENDING, Decimal("2000"))
    assert buyer_client.get(WALLET).json()["auto_top_up"]["in_flight_top_up"] == topup.pk
    assert balance_of(owner) == Decimal("400")  # nothing credited before Stripe's event

    deliver(webhooks, stripe_on.intent_event(topup.payment_intent_id, "payment_intent.succeeded"))

    assert balance_of(owner) == Decimal("2400")
    topup.refresh_from_db()
    assert topup.status == TopUp.Status.SUCCEEDED
    assert AutoTopUp.objects.get(user=owner).in_flight is None  # the claim is freed
    debit(owner, "100", "turn-3")  # 2300: above the threshold
    assert len(off_session_intents(stripe_on)) == 1


def test_a_debit_that_stays_above_the_threshold_charges_nothing(stripe_on, webhooks, funded, buyer_client):
    save_card(buyer_client, stripe_on, webhooks)
    turn_on(buyer_client, threshold="500")

    debit(funded, "100", "turn-1")  # 600 -> 500: not under 500

    assert off_session_intents(stripe_on) == []
    assert not TopUp.objects.exists()


def test_a_debit_under_the_threshold_with_auto_top_up_off_charges_nothing(stripe_on, webhooks, funded, buyer_client):
    save_card(buyer_client, stripe_on, webhooks)

    debit(funded, "550", "turn-1")

    assert off_session_intents(stripe_on) == []


def test_a_declined_card_turns_auto_top_up_off_and_the_wallet_says_so(stripe_on, webhooks, funded, buyer_client):
    method_id = save_card(buyer_client, stripe_on, webhooks)
    turn_on(buyer_client)
    stripe_on.decline(method_id)

    debit(funded, "200", "turn-1")

    topup = TopUp.objects.get(mode="auto")
    assert topup.status == TopUp.Status.FAILED
    assert topup.payment_intent_id == next(iter(stripe_on.objects["payment_intents"]))
    state = buyer_client.get(WALLET).json()["auto_top_up"]
    assert state["enabled"] is False
    assert state["in_flight_top_up"] is None
    assert state["disabled_reason"] == (
        "The saved card was declined (insufficient_funds): Your card has insufficient funds."
    )
    # Stripe's payment_intent.payment_failed for it changes nothing more.
    deliver(webhooks, stripe_on.intent_event(topup.payment_intent_id, "payment_intent.payment_failed"))
    debit(funded, "10", "turn-2")
    assert len(off_session_intents(stripe_on)) == 1
    assert balance_of(funded) == Decimal("390")


def test_a_payment_failed_event_for_an_auto_top_up_turns_it_off(stripe_on, webhooks, funded, buyer_client):
    save_card(buyer_client, stripe_on, webhooks)
    turn_on(buyer_client)
    debit(funded, "200", "turn-1")
    topup = TopUp.objects.get(mode="auto")

    deliver(webhooks, stripe_on.fail_payment(topup.payment_intent_id, "Your card was declined."))

    topup.refresh_from_db()
    assert topup.status == TopUp.Status.FAILED
    row = AutoTopUp.objects.get(user=funded)
    assert (row.enabled, row.in_flight) == (False, None)
    assert row.disabled_reason == "The saved card was declined: Your card was declined."
    assert balance_of(funded) == Decimal("400")


def test_stripe_unreachable_frees_the_claim_and_keeps_auto_top_up_on(stripe_on, webhooks, funded, buyer_client):
    save_card(buyer_client, stripe_on, webhooks)
    turn_on(buyer_client)
    # The creates fail; the look-up before giving up answers that Stripe made none.
    stripe_on.fail_next(10, status=500, path_prefix="/v1/payment_intents", method="POST")

    debit(funded, "200", "turn-1")

    topup = TopUp.objects.get(mode="auto")
    assert (topup.status, topup.error) == (TopUp.Status.FAILED, "Stripe unreachable: APIError")
    row = AutoTopUp.objects.get(user=funded)
    assert (row.enabled, row.in_flight, row.last_error) == (True, None, "Stripe unreachable: APIError")
    stripe_on.faults.clear()
    debit(funded, "10", "turn-2")  # the next debit tries again
    assert TopUp.objects.filter(mode="auto", status="pending").count() == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_debits_under_the_threshold_make_one_payment_intent(stripe_on, webhooks, funded, buyer_client):
    save_card(buyer_client, stripe_on, webhooks)
    turn_on(buyer_client, threshold="590", amount_usd="5.00")
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def spend(n: int) -> None:
        try:
            barrier.wait(timeout=10)
            # Committed on its own (no test transaction here): its on_commit hook runs
            # the auto top-up task (eager) right after, in this thread.
            wallet_debit(user=funded, amount=Decimal("20"), reference=f"turn-{n}")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=spend, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert errors == []
    assert balance_of(funded) == Decimal("440")
    assert len(off_session_intents(stripe_on)) == 1
    assert len(stripe_on.objects["payment_intents"]) == 1
    topup = TopUp.objects.get(mode="auto")
    assert AutoTopUp.objects.get(user=funded).in_flight_id == topup.pk
    deliver(webhooks, stripe_on.intent_event(topup.payment_intent_id, "payment_intent.succeeded"))
    assert balance_of(funded) == Decimal("940")


# --- the staff console ---------------------------------------------------------------------


def test_staff_see_auto_top_up_settings_and_each_top_ups_mode(stripe_on, webhooks, funded, buyer_client, grant_staff):
    save_card(buyer_client, stripe_on, webhooks)
    turn_on(buyer_client, threshold="500", amount_usd="20.00")
    debit(funded, "200", "turn-1")
    grant_staff.is_superuser = True
    grant_staff.save(update_fields=["is_superuser"])
    console = Client()
    console.force_login(grant_staff)

    settings_page = console.get("/admin/billing/autotopup/").content.decode()
    topups_page = console.get("/admin/billing/topup/", {"mode__exact": "auto"}).content.decode()
    row = AutoTopUp.objects.get(user=funded)
    detail = console.get(f"/admin/billing/autotopup/{row.pk}/change/")

    assert "visa ····1881" in settings_page
    assert "owner@example.com" in settings_page
    assert "Auto top-up" in topups_page and "20.00" in topups_page
    assert detail.status_code == 200
    assert console.post(f"/admin/billing/autotopup/{row.pk}/change/", {"enabled": ""}).status_code == 403


# --- the sweep ---------------------------------------------------------------------------


def test_the_sweep_resends_a_lost_trigger_and_a_lost_charge(stripe_on, webhooks, funded, buyer_client):
    save_card(buyer_client, stripe_on, webhooks)
    turn_on(buyer_client, threshold="500")
    # The debit's message was lost (broker down): no after-commit hook ran.
    wallet_debit(user=funded, amount=Decimal("200"), reference="turn-1")
    assert off_session_intents(stripe_on) == []

    assert sweep_auto_top_ups() == 1
    assert len(off_session_intents(stripe_on)) == 1
    assert sweep_auto_top_ups() == 0  # one in flight: nothing more

    # A claim whose charge message was lost is charged again, under its own key.
    topup = TopUp.objects.get(mode="auto")
    TopUp.objects.filter(pk=topup.pk).update(
        status=TopUp.Status.CREATED, payment_intent_id=None, created_at=timezone.now() - timedelta(minutes=6)
    )
    assert sweep_auto_top_ups() == 1
    calls = off_session_intents(stripe_on)
    assert len(calls) == 2
    assert calls[0].idempotency_key == calls[1].idempotency_key == f"parley-topup-{topup.idempotency_key}"
    assert len(stripe_on.objects["payment_intents"]) == 1  # Stripe answered the same PaymentIntent
    topup.refresh_from_db()
    assert topup.status == TopUp.Status.PENDING


# --- a real worker --------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.worker
def test_a_real_worker_makes_one_payment_intent_for_concurrent_debits_and_credits_it(
    stripe_worker,  # noqa: F811  (the fixture imported above)
    stripe_on,
    webhooks,
    funded,
    buyer_client,
):
    session_id = buyer_client.post(CARD, URLS, format="json").json()["url"].rsplit("/", 1)[1]
    completed, _ = stripe_on.complete_checkout(session_id)
    assert webhooks.post(completed, process=False).status_code == 200  # the worker processes it
    wait_for(lambda: AutoTopUp.objects.exclude(payment_method_id="").filter(user=funded).exists(), 60, "the card")
    assert turn_on(buyer_client, threshold="590", amount_usd="5.00").status_code == 200
    barrier = threading.Barrier(6)

    def spend(n: int) -> None:
        try:
            barrier.wait(timeout=10)
            wallet_debit(user=funded, amount=Decimal("20"), reference=f"turn-{n}")  # sends the task on commit
        finally:
            close_old_connections()

    threads = [threading.Thread(target=spend, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    wait_for(lambda: TopUp.objects.filter(mode="auto", status="pending").exists(), 60, "the auto top-up's charge")
    time.sleep(2)  # every task the debits sent has had time to run
    assert len(off_session_intents(stripe_on)) == 1
    topup = TopUp.objects.get(mode="auto")
    assert webhooks.post(stripe_on.intent_event(topup.payment_intent_id, "payment_intent.succeeded"), process=False)
    wait_for(lambda: balance_of(funded) == Decimal("980"), 60, "the credits")  # 600 - 6 * 20 + 500
    assert AutoTopUp.objects.get(user=funded).in_flight is None
    # The worker is done with both webhooks (dj-stripe's sync too) before the test's
    # tables are flushed.
    wait_for(lambda: WebhookEventTrigger.objects.filter(processed=True).count() == 2, 60, "both webhooks processed")


def test_a_debit_above_every_threshold_reads_nothing_of_auto_top_up(stripe_on, webhooks, funded, buyer_client):
    save_card(buyer_client, stripe_on, webhooks)
    turn_on(buyer_client, threshold="500")
    debit(funded, "10", "turn-warm")  # 590: reads the highest threshold once (kept for a few seconds)

    with CaptureQueriesContext(connection) as captured:
        debit(funded, "10", "turn-1")  # 580: above every threshold
    assert [query for query in captured.captured_queries if "billing_autotopup" in query["sql"]] == []

    with CaptureQueriesContext(connection) as captured:
        debit(funded, "100", "turn-2")  # 480: under this user's threshold, so it asks
    assert [query for query in captured.captured_queries if "billing_autotopup" in query["sql"]]
    assert len(off_session_intents(stripe_on)) == 1


def test_a_charge_stripe_refuses_for_good_turns_auto_top_up_off(stripe_on, webhooks, funded, buyer_client):
    method_id = save_card(buyer_client, stripe_on, webhooks)
    turn_on(buyer_client)
    with stripe_on.lock:
        del stripe_on.objects["payment_methods"][method_id]  # detached at Stripe since

    debit(funded, "200", "turn-1")

    assert TopUp.objects.get(mode="auto").status == TopUp.Status.FAILED
    state = buyer_client.get(WALLET).json()["auto_top_up"]
    assert (state["enabled"], state["in_flight_top_up"]) == (False, None)
    assert state["disabled_reason"] == "Stripe refused the charge (InvalidRequestError); save a card again."
    assert len(off_session_intents(stripe_on)) == 1  # not retried
