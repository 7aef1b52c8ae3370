"""Stripe's services: top-ups (creating one, applying Stripe's events to it) and
webhooks (intake in the web request, processing in Celery, endpoints).

Creating a top-up: the TopUp row is committed first; then, outside any transaction, the
user's Stripe customer and a PaymentIntent keyed by the row's idempotency key. A
retried create can therefore never make a second PaymentIntent; a client that sends
an `Idempotency-Key` gets the same top-up (and PaymentIntent) for the same key.

Applying Stripe's events (`topup_event_receive`, called by `webhook_trigger_process`
in the Celery task, never in a web request). It depends only on the signed event
body: no Stripe call, nothing of dj-stripe's. Stripe delivers each event at least
once, in any order, sometimes concurrently, so:
- each event is recorded once (TopUpEvent, unique by event id) and applied once;
- the handlers lock the TopUp row (select_for_update) and re-read its state;
- credits move only through billing.services (the reference: the event id, which
  the ledger's unique (kind, reference) also refuses to apply twice);
- an event no top-up matches yet (a refund or dispute before its top-up has the
  PaymentIntent or charge id, a dispute that names only its charge) stays pending and
  is applied when its top-up learns the id, or by the sweeper;
- refunds and disputes of one charge are reconciled against each other: the TopUp
  keeps what Stripe last said of each (the charge's amount_refunded, each dispute's
  funds withdrawn or reinstated, ordered by the events' `created`), and the credits
  taken back are always share(min(amount, refunded + withdrawn)): never more than the
  charge bought, an inquiry takes nothing, a refunded dispute is taken back once. A
  take-back may come before the grant (the balance goes negative); the later grant
  leaves the right balance.
The credits granted always come from our TopUp row, never from event metadata.

Webhook intake (`webhook_trigger_record`, called by the view) verifies the
signature locally against the dj-stripe WebhookEndpoint's secret (HMAC of
"t.payload", within the endpoint's tolerance) and stores a dj-stripe
WebhookEventTrigger (valid, not yet processed); the view then sends the processing
task on commit (billing/stripe/tasks.py). No Stripe API call happens in
the request, so Stripe gets its 2xx at once. A request with a bad signature stores
nothing.

Processing (`webhook_trigger_process`, the task): Parley's own handlers first, in
their own transaction; then dj-stripe's processing (its Event row and its sync of
the objects named, which calls Stripe); then the trigger is marked processed. If
dj-stripe's part fails (Stripe refuses or is down), the credits have moved already;
the trigger keeps the error, the task retries what is worth retrying and the
sweeper re-sends failed triggers within Stripe's own retry window.

Nothing here sends a task (tasks import services, never the reverse): the view, the
admin's re-run action and the sweeper task enqueue.
"""

import json
import logging
from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal
from traceback import format_exc
from typing import Any
from urllib.parse import urljoin, urlsplit
from uuid import uuid4

import stripe
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q, Subquery
from django.urls import reverse
from django.utils import timezone
from djstripe.models import Event, WebhookEndpoint, WebhookEventTrigger
from djstripe.settings import djstripe_settings

from accounts.models import User
from billing.dispatch import auto_top_up_settings_changed
from billing.metrics import STRIPE_EVENTS
from billing.models import AutoTopUp, TopUp, TopUpEvent, Wallet
from billing.money import LEDGER_PLACES, USD_PLACES
from billing.services import wallet_adjust, wallet_reverse, wallet_topup
from billing.stripe import client
from core.exceptions import ApplicationError, ServiceUnavailable, StateConflict, field_error

logger = logging.getLogger(__name__)

Status = TopUp.Status
Mode = TopUp.Mode
DisputeStatus = TopUp.DisputeStatus
EventState = TopUpEvent.State


class TopUpMismatch(Exception):
    """A signed event contradicts our TopUp (another amount or currency). Nothing is
    granted; the webhook trigger keeps the error for staff to look at."""


# --- creating -------------------------------------------------------------------


def topup_credits(amount_usd: Decimal) -> Decimal:
    """Credits bought: round(amount_usd * CREDITS_PER_USD, 2), half up."""
    return (amount_usd * settings.CREDITS_PER_USD).quantize(USD_PLACES, rounding=ROUND_HALF_UP)


def topup_validate_amount(amount_usd: Decimal) -> Decimal:
    low, high = settings.TOP_UP_MIN_USD, settings.TOP_UP_MAX_USD
    if not low <= amount_usd <= high:
        raise field_error("amount_usd", f"Must be between {low:.2f} and {high:.2f} USD.")
    return amount_usd


REQUEST_KEY_MAX = TopUp._meta.get_field("request_key").max_length


def topup_create(
    *,
    user: User,
    amount_usd: Decimal,
    request_key: str | None = None,
    mode: str = Mode.PAYMENT_INTENT,
    success_url: str = "",
    cancel_url: str = "",
) -> tuple[TopUp, str]:
    """Starts a top-up: returns the pending TopUp and what the client pays with, never
    stored: the PaymentIntent's client secret (mode `payment_intent`, for Stripe.js) or
    the Checkout Session's `url` (mode `checkout`, opened in a browser). With
    `request_key` (the client's Idempotency-Key), the same key from the same user
    answers the same top-up and PaymentIntent or session; the same key for another
    amount or mode is refused."""
    client.stripe_require()
    topup_validate_amount(amount_usd)
    if mode not in (Mode.PAYMENT_INTENT, Mode.CHECKOUT):
        raise field_error("mode", "One of: payment_intent, checkout.")
    if mode == Mode.CHECKOUT:
        success_url = checkout_url_validate(success_url, "success_url")
        cancel_url = checkout_url_validate(cancel_url, "cancel_url")
    urls = {"success_url": success_url, "cancel_url": cancel_url}
    values = {"amount_usd": amount_usd, "credits": topup_credits(amount_usd), "mode": mode}
    if request_key is None:
        # Autocommit: the row (and its idempotency key) is durable before Stripe sees it.
        topup = TopUp.objects.create(user=user, **values)
        return topup, _topup_start(topup, replay=False, **urls)
    if not request_key.strip() or len(request_key) > REQUEST_KEY_MAX:
        raise ApplicationError(f"The Idempotency-Key header must be 1 to {REQUEST_KEY_MAX} characters.")
    # The unique (user, request_key) decides a race between two requests with one key.
    topup, created = TopUp.objects.get_or_create(user=user, request_key=request_key, defaults=values)
    if created:
        return topup, _topup_start(topup, replay=False, **urls)
    if topup.amount_usd != amount_usd or topup.mode != mode:
        raise StateConflict(
            f"This Idempotency-Key was already used for a top-up of {topup.amount_usd:.2f} USD ({topup.mode})."
        )
    if topup.payment_intent_id and topup.mode == Mode.PAYMENT_INTENT:
        try:
            intent = client.payment_intent_retrieve(payment_intent_id=topup.payment_intent_id)
        except stripe.StripeError as exc:
            logger.warning("Stripe refused reading top-up %s: %s", topup.pk, exc.__class__.__name__)
            raise ServiceUnavailable("The payment provider could not be reached; please try again.") from exc
        return topup, intent.client_secret
    # The first request got no PaymentIntent or session (Stripe failed, or it is still
    # under way), or a session whose url must be read again: ask again under the row's
    # key, which Stripe answers with the same object.
    return topup, _topup_start(topup, replay=True, **urls)


def checkout_url_validate(value: str, field: str) -> str:
    """Where Checkout sends the customer back: an absolute http(s) URL (Stripe's
    `{CHECKOUT_SESSION_ID}` placeholder allowed), at most 2048 characters."""
    value = (value or "").strip()
    if not value:
        raise field_error(field, "This field is required in checkout mode.")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or len(value) > CHECKOUT_URL_MAX:
        raise field_error(field, f"An absolute http or https URL of at most {CHECKOUT_URL_MAX} characters.")
    return value


CHECKOUT_URL_MAX = 2048


def _topup_start(topup: TopUp, *, replay: bool, success_url: str, cancel_url: str) -> str:
    if topup.mode == Mode.CHECKOUT:
        return _checkout_session_start(topup, replay=replay, success_url=success_url, cancel_url=cancel_url)
    return _payment_intent_start(topup, replay=replay)


def _credits_text(topup: TopUp) -> str:
    # Credits are rounded to 2 places (topup_credits): the same text fresh or read back.
    return f"{topup.credits:.2f}"


def _topup_metadata(topup: TopUp) -> dict[str, str]:
    return {
        "parley_topup_id": str(topup.pk),
        "parley_user_id": str(topup.user_id),
        "credits": _credits_text(topup),
    }


def _stripe_refused(topup: TopUp, exc: stripe.StripeError, *, replay: bool) -> ServiceUnavailable:
    # Logged by class only: Stripe's messages may echo request details.
    logger.warning("Stripe refused top-up %s: %s", topup.pk, exc.__class__.__name__)
    if not replay:  # a replay may race the first request, which decides
        TopUp.objects.filter(pk=topup.pk, status=Status.CREATED).update(
            status=Status.FAILED, error=f"Stripe error: {exc.__class__.__name__}", updated_at=timezone.now()
        )
    return ServiceUnavailable("The payment provider could not be reached; please try again.")


def _checkout_session_start(topup: TopUp, *, replay: bool, success_url: str, cancel_url: str) -> str:
    """Creates (or, under the row's idempotency key, gets again) the top-up's Checkout
    Session in payment mode, records its id and answers its url. Its PaymentIntent is
    made when the customer pays, with our metadata (payment_intent_data), so
    payment_intent.succeeded finds this top-up even before checkout.session.completed."""
    try:
        customer = client.customer_for_user(user=topup.user)
        session = client.checkout_session_create(
            mode="payment",
            customer=customer.id,
            success_url=success_url,
            cancel_url=cancel_url,
            client_reference_id=str(topup.pk),
            line_items=[
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": "usd",
                        "unit_amount": topup.amount_cents,
                        "product_data": {"name": f"Parley credits: {_credits_text(topup)}"},
                    },
                }
            ],
            metadata=_topup_metadata(topup),
            payment_intent_data={
                "metadata": _topup_metadata(topup),
                "description": f"Parley credits: {_credits_text(topup)}",
            },
            idempotency_key=f"parley-topup-{topup.idempotency_key}",
        )
    except stripe.StripeError as exc:
        raise _stripe_refused(topup, exc, replay=replay) from exc
    TopUp.objects.filter(
        pk=topup.pk, status__in=[Status.CREATED, Status.FAILED], checkout_session_id__isnull=True
    ).update(checkout_session_id=session.id, status=Status.PENDING, error="", updated_at=timezone.now())
    topup.refresh_from_db()
    if session.url is None:  # a replay of a session already paid or expired: nothing left to open
        raise StateConflict(f"This top-up's Checkout Session is {session.status}; start a new top-up.")
    return session.url


def _payment_intent_start(topup: TopUp, *, replay: bool) -> str:
    """Creates (or, under the row's idempotency key, gets again) the top-up's
    PaymentIntent, records its id, and applies events that were waiting for it."""
    try:
        customer = client.customer_for_user(user=topup.user)
        intent = client.payment_intent_create(
            customer_id=customer.id,
            amount_cents=topup.amount_cents,
            metadata=_topup_metadata(topup),
            idempotency_key=f"parley-topup-{topup.idempotency_key}",
            description=f"Parley credits: {_credits_text(topup)}",
        )
    except stripe.StripeError as exc:
        raise _stripe_refused(topup, exc, replay=replay) from exc
    _payment_intent_record(topup, intent.id)
    return intent.client_secret


def _payment_intent_record(topup: TopUp, payment_intent_id: str) -> None:
    """Stores the PaymentIntent id Stripe answered and applies the events that were
    waiting for it."""
    # Compare-and-set: only a top-up that has no PaymentIntent yet becomes pending (an
    # early webhook may already have adopted it and moved it further).
    TopUp.objects.filter(
        pk=topup.pk, status__in=[Status.CREATED, Status.FAILED], payment_intent_id__isnull=True
    ).update(payment_intent_id=payment_intent_id, status=Status.PENDING, error="", updated_at=timezone.now())
    TopUp.objects.filter(pk=topup.pk, payment_intent_id__isnull=True).update(payment_intent_id=payment_intent_id)
    if TopUpEvent.objects.filter(state=EventState.PENDING, payment_intent_id=payment_intent_id).exists():
        with transaction.atomic():
            locked = TopUp.objects.select_for_update().select_related("user").get(pk=topup.pk)
            _pending_apply(locked)
    topup.refresh_from_db()


# --- applying Stripe events -------------------------------------------------------


def _id(value: Any) -> str | None:
    """An id from a Stripe field that may be an id string or an expanded object."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def _share(topup: TopUp, cents: int) -> Decimal:
    """The credits bought with `cents` of this top-up's payment, never more than all of them."""
    if cents >= topup.amount_cents:
        return topup.credits
    return (topup.credits * cents / topup.amount_cents).quantize(LEDGER_PLACES, rounding=ROUND_HALF_UP)


def _refresh_status(topup: TopUp) -> None:
    if topup.dispute_status in (DisputeStatus.OPEN, DisputeStatus.LOST):
        topup.status = Status.DISPUTED
    elif topup.refunded_credits >= topup.credits:
        topup.status = Status.REFUNDED
    elif topup.refunded_credits > 0:
        topup.status = Status.PARTIALLY_REFUNDED
    elif topup.granted_at is not None:
        topup.status = Status.SUCCEEDED


def _locked_topup(*, payment_intent_id: str | None, charge_id: str | None = None) -> TopUp | None:
    locked = TopUp.objects.select_for_update().select_related("user")
    if payment_intent_id and (topup := locked.filter(payment_intent_id=payment_intent_id).first()):
        return topup
    if charge_id:
        return locked.filter(charge_id=charge_id).first()
    return None


def _check_usd(topup: TopUp, obj: dict, amount_field: str) -> None:
    if str(obj.get("currency", "")).lower() != "usd":
        raise TopUpMismatch(f"{obj.get('id')}: currency {obj.get('currency')!r}, top-up {topup.pk} is in USD.")
    if amount_field and obj.get(amount_field) != topup.amount_cents:
        raise TopUpMismatch(
            f"{obj.get('id')}: {amount_field}={obj.get(amount_field)!r}, top-up {topup.pk} is {topup.amount_cents} cents."
        )


def _learn_charge(topup: TopUp, charge_id: str | None) -> None:
    if charge_id and not topup.charge_id:
        topup.charge_id = charge_id


def _takebacks_settle(topup: TopUp, *, reference: str, why: str) -> Decimal:
    """Brings the credits taken back for this top-up's charge to what Stripe now says:
    share(min(amount, refunded + disputed funds withdrawn)). Refunds and disputes of
    one charge are one sum, capped at the charge (an inquiry resolved by refunding, a
    dispute prevented by a refund, a chargeback on a refunded charge are taken back
    once). Posts the difference as one ledger row (a reversal, or an adjustment that
    gives back) and returns it."""
    refunded = min(topup.refunded_cents, topup.amount_cents)
    withdrawn = sum(int(dispute["withdrawn"]) for dispute in topup.disputes.values())
    refunded_credits = _share(topup, refunded)
    total = _share(topup, min(topup.amount_cents, refunded + withdrawn))
    delta = total - (topup.refunded_credits + topup.disputed_credits)
    reason = f"Stripe: {why} (top-up {topup.pk})"
    if delta > 0:
        wallet_reverse(user=topup.user, amount=delta, reference=reference, reason=reason)
    elif delta < 0:
        wallet_adjust(user=topup.user, amount=-delta, reference=reference, reason=reason)
    topup.refunded_credits = refunded_credits
    topup.disputed_credits = total - refunded_credits
    return delta


def _topup_grant(topup: TopUp, *, reason: str) -> None:
    """The top-up's credits, once: the ledger row's reference is its PaymentIntent, so
    whichever event says "paid" first grants and any later one changes nothing. The
    caller saves the top-up."""
    wallet_topup(user=topup.user, amount=topup.credits, reference=topup.payment_intent_id, reason=reason)
    if topup.granted_at is None:
        topup.granted_at = timezone.now()
    topup.error = ""


def _on_payment_intent_succeeded(topup: TopUp, intent: dict, event: TopUpEvent) -> str:
    _check_usd(topup, intent, "amount")
    _topup_grant(topup, reason=f"Stripe top-up of {topup.amount_usd} USD")
    _learn_charge(topup, _id(intent.get("latest_charge")))
    _refresh_status(topup)
    topup.save()
    _auto_top_up_settled(topup)
    return f"granted {topup.credits} to top-up {topup.pk}"


def _adopt_by_metadata(intent: dict) -> TopUp | None:
    """The PaymentIntent id is stored right after Stripe answers; should the webhook
    win that race (or the process die in between), find the row by the id we put in
    the metadata, and accept it only when user and amount agree with our row."""
    topup_id, user_id = _metadata_ids(intent)
    if topup_id is None:
        return None
    topup = (
        TopUp.objects.select_for_update()
        .select_related("user")
        .filter(pk=topup_id, user_id=user_id, payment_intent_id__isnull=True)
        .first()
    )
    if topup is None or intent.get("amount") != topup.amount_cents:
        return None
    topup.payment_intent_id = _id(intent.get("id"))
    return topup


def _metadata_ids(intent: dict) -> tuple[int | None, int | None]:
    metadata = intent.get("metadata") or {}
    topup_id, user_id = metadata.get("parley_topup_id"), metadata.get("parley_user_id")
    if not (str(topup_id).isdigit() and str(user_id).isdigit()):
        return None, None
    return int(topup_id), int(user_id)


def _on_payment_intent_failed(topup: TopUp, intent: dict, event: TopUpEvent) -> str:
    if topup.mode == Mode.CHECKOUT:
        # The hosted page lets the customer try another card; the session's
        # completion or expiry settles the top-up.
        return "ignored: Checkout lets the customer try again"
    if topup.status not in (Status.CREATED, Status.PENDING):
        return "ignored: top-up already settled"
    error = (intent.get("last_payment_error") or {}).get("message") or intent.get("cancellation_reason") or "failed"
    topup.status = Status.FAILED
    topup.error = str(error)[:255]
    topup.save(update_fields=["status", "error", "updated_at"])
    if topup.mode == Mode.AUTO:
        _auto_top_up_settled(topup, disabled_reason=f"The saved card was declined: {error}")
    return f"top-up {topup.pk} failed"


# --- Checkout Sessions -------------------------------------------------------------


def _checkout_grant(topup: TopUp, session: dict) -> str:
    """A paid session grants the top-up's credits with its PaymentIntent as reference,
    the reference payment_intent.succeeded grants with: whichever comes first grants,
    the other changes nothing. Refunds and disputes then find the top-up by that
    PaymentIntent (and the charge payment_intent.succeeded names) as in the other mode."""
    _check_usd(topup, session, "amount_total")
    payment_intent_id = _id(session.get("payment_intent"))
    if payment_intent_id is None:
        raise TopUpMismatch(f"{session.get('id')}: paid, but names no PaymentIntent.")
    if topup.payment_intent_id not in (None, payment_intent_id):
        raise TopUpMismatch(f"{session.get('id')}: PaymentIntent {payment_intent_id}, top-up {topup.pk} has another.")
    topup.payment_intent_id = payment_intent_id
    _topup_grant(topup, reason=f"Stripe top-up of {topup.amount_usd} USD (Checkout)")
    _refresh_status(topup)
    topup.save()
    return f"granted {topup.credits} to top-up {topup.pk}"


def _on_checkout_completed(topup: TopUp, session: dict, event: TopUpEvent) -> str:
    if session.get("payment_status") == "paid":
        return _checkout_grant(topup, session)
    # A delayed payment method (a bank debit): the money comes with
    # checkout.session.async_payment_succeeded, or never (async_payment_failed).
    payment_intent_id = _id(session.get("payment_intent"))
    if payment_intent_id and topup.payment_intent_id is None:
        topup.payment_intent_id = payment_intent_id
        topup.save(update_fields=["payment_intent_id", "updated_at"])
    return f"top-up {topup.pk}: session completed, payment {session.get('payment_status')}"


def _on_checkout_async_succeeded(topup: TopUp, session: dict, event: TopUpEvent) -> str:
    return _checkout_grant(topup, session)


def _checkout_failed(topup: TopUp, error: str) -> str:
    if topup.granted_at is not None or topup.status not in (Status.CREATED, Status.PENDING):
        return "ignored: top-up already settled"
    topup.status = Status.FAILED
    topup.error = error
    topup.save(update_fields=["status", "error", "updated_at"])
    return f"top-up {topup.pk} failed: {error}"


def _on_checkout_expired(topup: TopUp, session: dict, event: TopUpEvent) -> str:
    return _checkout_failed(topup, "The Checkout Session expired unpaid.")


def _on_checkout_async_failed(topup: TopUp, session: dict, event: TopUpEvent) -> str:
    return _checkout_failed(topup, "The delayed payment of the Checkout Session failed.")


def _locked_checkout_topup(session: dict) -> TopUp | None:
    """The top-up of a payment-mode session: by the session id we stored, else (Stripe
    answered, but the process stopped before the id was stored) by the metadata we
    put on the session, accepted only when user, amount and mode agree with our row."""
    session_id = _id(session.get("id"))
    locked = TopUp.objects.select_for_update().select_related("user")
    if session_id and (topup := locked.filter(checkout_session_id=session_id).first()):
        return topup
    topup_id, user_id = _metadata_ids(session)
    if topup_id is None:
        return None
    topup = locked.filter(pk=topup_id, user_id=user_id, mode=Mode.CHECKOUT, checkout_session_id__isnull=True).first()
    if topup is None or session.get("amount_total") != topup.amount_cents:
        return None
    topup.checkout_session_id = session_id
    return topup


def _checkout_event_apply(record: TopUpEvent) -> str:
    session = record.data
    if session.get("mode") == "setup":
        # A card saved for auto top-up: card_setup_finish reads its SetupIntent after
        # this transaction (a Stripe call never runs under our locks).
        return _event_close(
            record, EventState.APPLIED, "setup mode: no top-up (card_setup_finish saves a completed one's card)"
        )
    if session.get("mode") != "payment":
        return _event_close(record, EventState.IGNORED, f"ignored: {session.get('mode')} mode")
    topup = _locked_checkout_topup(session)
    if topup is None:
        return _event_close(record, EventState.IGNORED, "not a top-up's Checkout Session")
    outcome = _event_close(record, EventState.APPLIED, EVENT_HANDLERS[record.type](topup, session, record), topup)
    _pending_apply(topup)  # refunds or disputes may have waited for its PaymentIntent
    return outcome


def _on_charge_refunded(topup: TopUp, charge: dict, event: TopUpEvent) -> str:
    """charge.amount_refunded is Stripe's running total of the charge's refunds (at
    this API version the charge lists no refunds). The newest event says it; of two
    in one second the larger counts (refunds only add up within a second: a refund
    fails days later)."""
    _check_usd(topup, charge, "")
    _learn_charge(topup, _id(charge.get("id")))
    refunded = int(charge.get("amount_refunded") or 0)
    if event.stripe_created > topup.refunds_as_of:
        topup.refunded_cents = refunded
    elif event.stripe_created == topup.refunds_as_of:
        topup.refunded_cents = max(topup.refunded_cents, refunded)
    else:
        return "older than what is known of the charge's refunds"
    topup.refunds_as_of = event.stripe_created
    delta = _takebacks_settle(topup, reference=event.event_id, why=f"refunds now {topup.refunded_cents} cents")
    _refresh_status(topup)
    topup.save()
    return f"took back {delta} for refunds of top-up {topup.pk}"


# A refund that ends in one of these gave the customer nothing back: Stripe returns the
# money to the balance and the charge's amount_refunded no longer counts it.
REFUND_UNDONE = ("failed", "canceled")


def _on_refund_updated(topup: TopUp, refund: dict, event: TopUpEvent) -> str:
    refund_id = _id(refund.get("id"))
    status = refund.get("status")
    if status not in REFUND_UNDONE or refund_id is None:
        return f"refund {refund_id} {status}: nothing to change"
    if refund_id in topup.failed_refunds:
        return f"refund {refund_id} already counted out"
    _check_usd(topup, refund, "")
    _learn_charge(topup, _id(refund.get("charge")))
    topup.failed_refunds = [*topup.failed_refunds, refund_id]
    # A charge event newer than the failure already counts it out.
    if event.stripe_created >= topup.refunds_as_of:
        topup.refunded_cents = max(0, topup.refunded_cents - int(refund.get("amount") or 0))
        topup.refunds_as_of = event.stripe_created
    delta = _takebacks_settle(topup, reference=event.event_id, why=f"refund {refund_id} {status}")
    _refresh_status(topup)
    topup.save()
    return f"gave back {-delta} for refund {refund_id} {status}"


# Dispute statuses at the pinned API version. Inquiries (warning_*) never withdraw
# funds; a chargeback withdraws the disputed amount (charge.dispute.funds_withdrawn)
# and a won one reinstates it (charge.dispute.funds_reinstated); `prevented` (Visa
# RDR) withdraws nothing, the payment is refunded instead.
DISPUTE_OPEN = ("warning_needs_response", "warning_under_review", "needs_response", "under_review")
# Only when a dispute carries no balance transactions to tell (another API version).
DISPUTE_FUNDS_WITHDRAWN = ("needs_response", "under_review", "lost")


def _dispute_withdrawn(dispute: dict) -> tuple[int, int]:
    """(cents Stripe holds back now for this dispute, how many balance transactions
    say so). The dispute embeds its balance transactions: a withdrawal (negative) and,
    once won, a reinstatement; their count only grows, so it orders snapshots."""
    amount = int(dispute.get("amount") or 0)
    transactions = dispute.get("balance_transactions")
    if isinstance(transactions, list) and all(isinstance(txn, dict) for txn in transactions):
        withdrawals = sum(1 for txn in transactions if int(txn.get("amount") or 0) < 0)
        reinstatements = sum(1 for txn in transactions if int(txn.get("amount") or 0) > 0)
        return (amount if withdrawals > reinstatements else 0), len(transactions)
    return (amount if dispute.get("status") in DISPUTE_FUNDS_WITHDRAWN else 0), 0


def _dispute_summary(disputes: dict[str, dict]) -> str:
    statuses = [dispute["status"] for dispute in disputes.values()]
    if any(status in DISPUTE_OPEN for status in statuses):
        return DisputeStatus.OPEN
    if "lost" in statuses:
        return DisputeStatus.LOST
    if "won" in statuses:
        return DisputeStatus.WON
    return DisputeStatus.CLOSED if statuses else DisputeStatus.NONE


def _on_dispute(topup: TopUp, dispute: dict, event: TopUpEvent) -> str:
    """Every charge.dispute.* event carries the whole dispute: what it says replaces
    what was known of that dispute unless an earlier snapshot arrives late."""
    dispute_id = _id(dispute.get("id"))
    if dispute_id is None:
        return "ignored: no dispute id"
    _check_usd(topup, dispute, "")
    _learn_charge(topup, _id(dispute.get("charge")))
    withdrawn, transactions = _dispute_withdrawn(dispute)
    known = topup.disputes.get(dispute_id)
    if known is not None and (known["transactions"], known["as_of"]) > (transactions, event.stripe_created):
        return f"older than what is known of dispute {dispute_id}"
    status = str(dispute.get("status") or "")
    topup.disputes = {
        **topup.disputes,
        dispute_id: {
            "status": status,
            "amount": int(dispute.get("amount") or 0),
            "withdrawn": withdrawn,
            "transactions": transactions,
            "as_of": event.stripe_created,
        },
    }
    topup.dispute_status = _dispute_summary(topup.disputes)
    delta = _takebacks_settle(topup, reference=event.event_id, why=f"dispute {dispute_id} {status}")
    _refresh_status(topup)
    topup.save()
    return f"dispute {dispute_id} {status}: took back {delta}"


EVENT_HANDLERS = {
    "payment_intent.succeeded": _on_payment_intent_succeeded,
    "payment_intent.payment_failed": _on_payment_intent_failed,
    "payment_intent.canceled": _on_payment_intent_failed,
    "charge.refunded": _on_charge_refunded,
    "charge.refund.updated": _on_refund_updated,
    "charge.dispute.created": _on_dispute,
    "charge.dispute.updated": _on_dispute,
    "charge.dispute.funds_withdrawn": _on_dispute,
    "charge.dispute.funds_reinstated": _on_dispute,
    "charge.dispute.closed": _on_dispute,
    "checkout.session.completed": _on_checkout_completed,
    "checkout.session.async_payment_succeeded": _on_checkout_async_succeeded,
    "checkout.session.async_payment_failed": _on_checkout_async_failed,
    "checkout.session.expired": _on_checkout_expired,
}


def _event_ids(event_type: str, obj: dict) -> tuple[str, str]:
    """(PaymentIntent id, charge id) the event's object names; either may be empty (a
    dispute's payment_intent is null when the charge was not made by one)."""
    if event_type.startswith("payment_intent."):
        return _id(obj.get("id")) or "", _id(obj.get("latest_charge")) or ""
    if event_type.startswith("checkout.session."):
        return _id(obj.get("payment_intent")) or "", ""
    if obj.get("object") == "charge":
        return _id(obj.get("payment_intent")) or "", _id(obj.get("id")) or ""
    return _id(obj.get("payment_intent")) or "", _id(obj.get("charge")) or ""


def topup_event_receive(*, event: dict) -> str:
    """Records one verified Stripe event and applies it to its top-up, once, in one
    transaction; returns what it did. Other event types change nothing."""
    event_type = event["type"]
    if event_type not in EVENT_HANDLERS:
        return "ignored: event type"
    obj = event["data"]["object"]
    payment_intent_id, charge_id = _event_ids(event_type, obj)
    with transaction.atomic():
        record, _ = TopUpEvent.objects.select_for_update().get_or_create(
            event_id=event["id"],
            defaults={
                "type": event_type,
                "stripe_created": int(event.get("created") or 0),
                "api_version": str(event.get("api_version") or "")[:64],
                "payment_intent_id": payment_intent_id,
                "charge_id": charge_id,
                "data": obj,
            },
        )
        if record.state != EventState.PENDING:
            return f"already {record.state}: {record.outcome}"
        return _event_apply(record)


def _event_apply(record: TopUpEvent) -> str:
    """Applies a pending event (locked by the caller) if its top-up is known."""
    if record.type.startswith("checkout.session."):
        return _checkout_event_apply(record)
    topup = _locked_topup(payment_intent_id=record.payment_intent_id, charge_id=record.charge_id)
    if topup is None and record.type == "payment_intent.succeeded":
        topup = _adopt_by_metadata(record.data)
    if topup is None:
        if record.type.startswith("payment_intent.") and _metadata_ids(record.data)[0] is None:
            return _event_close(record, EventState.IGNORED, "not a top-up's PaymentIntent")
        record.outcome = "pending: no top-up has this PaymentIntent or charge yet"
        record.save(update_fields=["outcome"])
        return record.outcome
    outcome = _event_close(record, EventState.APPLIED, EVENT_HANDLERS[record.type](topup, record.data, record), topup)
    _pending_apply(topup)  # the top-up may just have learned its PaymentIntent or charge id
    return outcome


def _event_close(record: TopUpEvent, state: str, outcome: str, topup: TopUp | None = None) -> str:
    record.state, record.outcome, record.topup = state, outcome[:255], topup
    record.applied_at = timezone.now()
    record.save(update_fields=["state", "outcome", "topup", "applied_at"])
    return outcome


def _pending_apply(topup: TopUp) -> int:
    """Applies the pending events that name this (locked) top-up's PaymentIntent or
    charge, oldest first; returns how many. One being applied elsewhere right now is
    skipped, not waited for (that worker locks the event, then this top-up: waiting
    here could deadlock); the sweeper picks up whatever is left."""
    applied, seen = 0, set()
    while True:
        names = Q()
        if topup.payment_intent_id:
            names |= Q(payment_intent_id=topup.payment_intent_id)
        if topup.charge_id:
            names |= Q(charge_id=topup.charge_id)
        if not names:
            return applied
        batch = list(
            TopUpEvent.objects.select_for_update(skip_locked=True)
            .filter(names, state=EventState.PENDING)
            .exclude(pk__in=seen)
            .order_by("stripe_created", "id")
        )
        if not batch:
            return applied
        for record in batch:
            seen.add(record.pk)
            try:
                with transaction.atomic():  # a refused one must not undo the event that found it
                    outcome = EVENT_HANDLERS[record.type](topup, record.data, record)
            except TopUpMismatch as exc:
                logger.error("Stripe event %s refused for top-up %s: %s", record.event_id, topup.pk, exc)
                _event_close(record, EventState.IGNORED, f"refused: {exc}", topup)
                continue
            _event_close(record, EventState.APPLIED, outcome, topup)
            applied += 1


def topup_events_pending_apply(*, limit: int = 500) -> int:
    """The sweeper's part: applies pending events whose top-up is known by now (the
    race where a worker kept an event pending while the top-up was learning its id);
    returns how many were applied."""
    known = Q(payment_intent_id__in=TopUp.objects.filter(payment_intent_id__isnull=False).values("payment_intent_id"))
    known |= Q(charge_id__in=TopUp.objects.exclude(charge_id="").values("charge_id"))
    ids = list(
        TopUpEvent.objects.filter(known, state=EventState.PENDING)
        .order_by("stripe_created", "id")
        .values_list("pk", flat=True)[:limit]
    )
    applied = 0
    for pk in ids:
        with transaction.atomic():
            record = TopUpEvent.objects.select_for_update(skip_locked=True).filter(pk=pk).first()
            if record is None or record.state != EventState.PENDING:
                continue
            _event_apply(record)
            applied += record.state == EventState.APPLIED
    return applied


# --- auto top-up ---------------------------------------------------------------
#
# A user saves a card through a Checkout Session in setup mode (card_setup_session_start;
# checkout.session.completed then card_setup_finish), and turns auto top-up on
# (auto_top_up_set). Every debit's commit asks billing.dispatch.auto_top_up_send,
# which sends the auto top-up task only when the balance it left is under the
# threshold; the task claims (auto_top_up_claim) and charges (auto_top_up_charge)
# after commit, outside any transaction, with the claimed TopUp's idempotency key.
# The claim is one conditional UPDATE of the user's AutoTopUp row (`in_flight` set
# only while null, with the balance re-read in the same statement), backed by the
# unique index of one auto top-up in flight per user: concurrent debits make one
# PaymentIntent. The webhook credits it like any top-up and clears the claim in the
# same transaction; a decline (402 at creation, or payment_intent.payment_failed)
# turns auto top-up off and says why. Lock order: TopUp, then AutoTopUp (the claim
# inserts a new TopUp, locking none, before it updates AutoTopUp).


def card_setup_session_start(*, user: User, success_url: str, cancel_url: str) -> str:
    """A Checkout Session in setup mode that saves a card for off-session charges;
    answers its url. Only the latest one started can save the card."""
    client.stripe_require()
    success_url = checkout_url_validate(success_url, "success_url")
    cancel_url = checkout_url_validate(cancel_url, "cancel_url")
    try:
        customer = client.customer_for_user(user=user)
        metadata = {"parley_user_id": str(user.pk), "parley_purpose": "auto_top_up_card"}
        session = client.checkout_session_create(
            mode="setup",
            currency="usd",
            customer=customer.id,
            success_url=success_url,
            cancel_url=cancel_url,
            client_reference_id=f"auto-top-up-{user.pk}",
            metadata=metadata,
            setup_intent_data={"metadata": metadata, "description": "Parley auto top-up"},
            # Nothing is charged here, so a retried request may make another session:
            # each has its own key, and only the latest one saves the card.
            idempotency_key=f"parley-card-setup-{uuid4()}",
        )
    except stripe.StripeError as exc:
        logger.warning("Stripe refused a card setup for user %s: %s", user.pk, exc.__class__.__name__)
        raise ServiceUnavailable("The payment provider could not be reached; please try again.") from exc
    AutoTopUp.objects.get_or_create(user=user)
    AutoTopUp.objects.filter(user=user).update(
        setup_session_id=session.id, customer_id=customer.id, updated_at=timezone.now()
    )
    return session.url


def card_setup_finish(*, session: dict) -> str:
    """After checkout.session.completed in setup mode (outside any transaction): reads
    the session's SetupIntent from Stripe and saves its card as the user's auto
    top-up card. Safe to run again; a session other than the user's latest card setup,
    or another customer's, changes nothing."""
    session_id, setup_intent_id = _id(session.get("id")), _id(session.get("setup_intent"))
    row = AutoTopUp.objects.filter(setup_session_id=session_id).first() if session_id else None
    if row is None or setup_intent_id is None:
        return "ignored: not the latest card setup of a user"
    intent = client.setup_intent_retrieve(setup_intent_id=setup_intent_id)
    method = intent.payment_method
    if intent.status != "succeeded" or intent.customer != row.customer_id or method is None:
        return f"ignored: SetupIntent {setup_intent_id} is {intent.status}, or not this user's"
    card = getattr(method, "card", None)
    saved = AutoTopUp.objects.filter(pk=row.pk, setup_session_id=session_id).update(
        payment_method_id=method.id,
        card_brand=str(getattr(card, "brand", "") or "")[:32],
        card_last4=str(getattr(card, "last4", "") or "")[:4],
        card_saved_at=timezone.now(),
        updated_at=timezone.now(),
    )
    return f"saved card {method.id} for auto top-up of user {row.user_id}" if saved else "ignored: superseded"


def auto_top_up_validate(*, threshold: Decimal, amount_usd: Decimal) -> None:
    topup_validate_amount(amount_usd)
    if threshold <= 0:
        raise field_error("threshold", "Must be more than 0 credits.")


def auto_top_up_set(*, user: User, threshold: Decimal, amount_usd: Decimal) -> AutoTopUp:
    """Turns auto top-up on (or changes it): under `threshold` credits, a settled debit
    charges the saved card `amount_usd`. Needs a saved card."""
    auto_top_up_validate(threshold=threshold, amount_usd=amount_usd)
    with transaction.atomic():
        AutoTopUp.objects.get_or_create(user=user)
        row = AutoTopUp.objects.select_for_update().get(user=user)
        if not row.payment_method_id:
            raise field_error(
                "card", "No saved card: save one first (POST /api/v1/users/me/auto-top-up/card, then pay nothing)."
            )
        row.enabled, row.threshold, row.amount_usd = True, threshold, amount_usd
        row.disabled_reason, row.disabled_at, row.last_error = "", None, ""
        row.save()
    auto_top_up_settings_changed()
    return row


def auto_top_up_disable(*, user: User, reason: str = "") -> None:
    """Turns auto top-up off (the card stays saved); a top-up in flight still completes."""
    AutoTopUp.objects.filter(user=user).update(
        enabled=False, disabled_reason=reason[:255], disabled_at=timezone.now(), updated_at=timezone.now()
    )


def _auto_top_up_settled(topup: TopUp, *, disabled_reason: str = "") -> None:
    """In the transaction that settles an auto top-up (its TopUp row locked): frees the
    claim, and for a declined card turns auto top-up off, saying why."""
    if topup.mode != Mode.AUTO:
        return
    now = timezone.now()
    AutoTopUp.objects.filter(in_flight=topup).update(in_flight=None, claimed_at=None, updated_at=now)
    if disabled_reason:
        AutoTopUp.objects.filter(user_id=topup.user_id).update(
            enabled=False, disabled_reason=disabled_reason[:255], disabled_at=now, updated_at=now
        )


def auto_top_up_claim(*, user_id: int) -> TopUp | None:
    """Claims the wallet's one auto top-up in flight when auto top-up is on and the
    balance is under its threshold: commits a new TopUp (mode auto) and points the
    claim at it, in one transaction. None when there is nothing to do or another
    claim holds it; two concurrent callers never both get a TopUp."""
    row = AutoTopUp.objects.filter(user_id=user_id, enabled=True, in_flight__isnull=True).first()
    if row is None or not client.stripe_enabled():
        return None
    balance_now = Wallet.objects.filter(user_id=user_id).values("balance")[:1]
    with transaction.atomic():
        try:
            with transaction.atomic():
                topup = TopUp.objects.create(
                    user_id=user_id, amount_usd=row.amount_usd, credits=topup_credits(row.amount_usd), mode=Mode.AUTO
                )
        except IntegrityError:
            return None  # billing_topup_one_auto_in_flight: another claim's top-up is in flight
        # The claim: one row, re-checked by the database after any concurrent claim or
        # settlement commits (PostgreSQL re-evaluates the WHERE on the row it waited for).
        claimed = AutoTopUp.objects.filter(
            pk=row.pk, enabled=True, in_flight__isnull=True, threshold__gt=Subquery(balance_now)
        ).update(in_flight=topup, claimed_at=timezone.now(), updated_at=timezone.now())
        if not claimed:
            transaction.set_rollback(True)  # the TopUp row goes with it
            return None
    return topup


# Stripe unreachable, rate limited or failing on its side, or the same key still in
# use: worth retrying under the same idempotency key (the task does).
AUTO_TOP_UP_TRANSIENT = (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError, stripe.IdempotencyError)


# Stripe keeps an idempotency key's first answer for at least 24 hours. A charge sent
# later than this after its claim (the sweep re-sends a claim still waiting for its
# charge) looks its PaymentIntent up first: past the window the key alone no longer
# proves that Stripe made none. (An hour's margin for clocks and a late first attempt;
# the claim's time is before any attempt's, so the margin only grows.)
IDEMPOTENCY_KEY_TRUSTED = timedelta(hours=23)
# How much earlier than our claim Stripe's clock may stamp its PaymentIntent.
STRIPE_CLOCK_SKEW = timedelta(minutes=10)


def auto_top_up_charge(*, topup_id: int) -> str:
    """Charges the saved card off-session for a claimed auto top-up (status created),
    under the TopUp's idempotency key: a retried task makes no second PaymentIntent.
    A claim older than IDEMPOTENCY_KEY_TRUSTED first looks its PaymentIntent up at
    Stripe and adopts it if there is one: one claim never makes two PaymentIntents.
    Must run outside any transaction. A decline fails the top-up and turns auto
    top-up off; other Stripe errors propagate for the task to retry."""
    topup = TopUp.objects.select_related("user").filter(pk=topup_id, mode=Mode.AUTO).first()
    if topup is None or topup.status != Status.CREATED:
        return "skipped: not a claimed auto top-up waiting for its charge"
    row = AutoTopUp.objects.get(user_id=topup.user_id)
    try:
        key_may_have_expired = timezone.now() - topup.created_at >= IDEMPOTENCY_KEY_TRUSTED
        if key_may_have_expired and (found := _auto_top_up_intent_find(topup, row)) is not None:
            return _auto_top_up_adopt(topup, found)
        intent = client.payment_intent_create_off_session(
            customer_id=row.customer_id,
            payment_method_id=row.payment_method_id,
            amount_cents=topup.amount_cents,
            metadata={**_topup_metadata(topup), "parley_mode": "auto"},
            idempotency_key=f"parley-topup-{topup.idempotency_key}",
            description=f"Parley auto top-up: {_credits_text(topup)} credits",
        )
    except stripe.CardError as exc:
        return _auto_top_up_declined(topup, exc)
    except AUTO_TOP_UP_TRANSIENT:
        raise  # the task retries under the same key
    except stripe.StripeError as exc:
        # Refused for good (the saved card detached, the key revoked): retrying cannot
        # help, so auto top-up is turned off, saying why.
        reason = f"Stripe refused the charge ({exc.__class__.__name__}); save a card again."
        _auto_top_up_failed(topup, reason=reason, disable=True)
        return f"auto top-up {topup.pk} refused: auto top-up turned off"
    _payment_intent_record(topup, intent.id)
    return f"auto top-up {topup.pk}: PaymentIntent {intent.id} {intent.status}"


def _auto_top_up_intent_find(topup: TopUp, row: AutoTopUp) -> stripe.PaymentIntent | None:
    """The PaymentIntent this claim made at Stripe, if any: among the customer's made
    since the claim, the one whose metadata names this top-up and its user (what the
    charge puts on it), for this top-up's amount in USD. Raises stripe.StripeError when
    Stripe cannot be asked."""
    intent = client.payment_intent_find(
        customer_id=row.customer_id,
        metadata={"parley_topup_id": str(topup.pk), "parley_user_id": str(topup.user_id)},
        created_gte=int((topup.created_at - STRIPE_CLOCK_SKEW).timestamp()),
    )
    if intent is not None and (intent.amount != topup.amount_cents or str(intent.currency).lower() != "usd"):
        # Nothing of ours makes this; never adopted, and no second one is made either.
        raise TopUpMismatch(f"PaymentIntent {intent.id} names auto top-up {topup.pk} but not its amount.")
    return intent


def _auto_top_up_adopt(topup: TopUp, intent: stripe.PaymentIntent) -> str:
    """Records a PaymentIntent the claim made whose answer was lost, as if Stripe had
    answered: the top-up is pending and keeps its claim, and Stripe's events settle it
    like any other (payment_intent.succeeded credits it once, by its id)."""
    _payment_intent_record(topup, intent.id)
    logger.warning("Auto top-up %s: adopted PaymentIntent %s (%s) found at Stripe", topup.pk, intent.id, intent.status)
    return f"auto top-up {topup.pk}: adopted PaymentIntent {intent.id} {intent.status}"


def _auto_top_up_declined(topup: TopUp, exc: stripe.CardError) -> str:
    error = exc.error
    decline = getattr(error, "decline_code", None) or getattr(error, "code", None) or "declined"
    message = getattr(error, "message", None) or "The card was declined."
    intent = getattr(error, "payment_intent", None)
    reason = f"The saved card was declined ({decline}): {message}"
    payment_intent_id = _id(intent.get("id")) if intent is not None else None
    _auto_top_up_failed(topup, reason=reason, disable=True, payment_intent_id=payment_intent_id)
    logger.info("Auto top-up %s declined (%s); auto top-up turned off for user %s", topup.pk, decline, topup.user_id)
    return f"auto top-up {topup.pk} declined: auto top-up turned off"


def _auto_top_up_failed(topup: TopUp, *, reason: str, disable: bool, payment_intent_id: str | None = None) -> None:
    """Fails a claimed auto top-up and frees the claim, in one transaction; with
    `disable`, auto top-up is turned off with `reason`, else `reason` is its last_error."""
    with transaction.atomic():
        locked = TopUp.objects.select_for_update().get(pk=topup.pk)
        if locked.payment_intent_id is None and payment_intent_id:
            locked.payment_intent_id = payment_intent_id
        if locked.status in (Status.CREATED, Status.PENDING):
            locked.status, locked.error = Status.FAILED, reason[:255]
        locked.save()
        _auto_top_up_settled(locked, disabled_reason=reason if disable else "")
        if not disable:
            AutoTopUp.objects.filter(user_id=locked.user_id).update(last_error=reason[:255], updated_at=timezone.now())


def auto_top_up_give_up(*, topup_id: int, error: str) -> str:
    """The charge task's retries ran out without an answer from Stripe. The answer may
    be what was lost, not the request: the PaymentIntent is looked up at Stripe first
    (by customer and the claim's metadata) and adopted if found (pending, the claim
    kept, credited by payment_intent.succeeded). Stripe has none: the top-up is failed
    and the claim freed, so a later debit can try again; auto top-up stays on. Stripe
    cannot even be asked: nothing is decided; the claim stays, `last_error` says why,
    and the sweep sends the charge again (it looks up first once the key may have
    expired), so one claim never makes two PaymentIntents."""
    topup = TopUp.objects.filter(pk=topup_id, mode=Mode.AUTO, status=Status.CREATED).first()
    if topup is None:
        return "skipped: not a claimed auto top-up waiting for its charge"
    try:
        found = _auto_top_up_intent_find(topup, AutoTopUp.objects.get(user_id=topup.user_id))
    except stripe.StripeError as exc:
        logger.warning("Auto top-up %s: Stripe cannot be asked (%s); the claim stays", topup.pk, exc.__class__.__name__)
        AutoTopUp.objects.filter(user_id=topup.user_id, in_flight=topup).update(
            last_error=error[:255], updated_at=timezone.now()
        )
        return f"auto top-up {topup.pk}: kept (Stripe cannot be asked whether it made the PaymentIntent)"
    if found is not None:
        return _auto_top_up_adopt(topup, found)
    _auto_top_up_failed(topup, reason=error, disable=False)
    return f"auto top-up {topup.pk}: failed (Stripe made no PaymentIntent)"


# --- webhooks ------------------------------------------------------------------


class WebhookRejected(Exception):
    """The request is not a verifiable Stripe event; answered 400, nothing stored."""


def _parse_event(payload: str) -> dict:
    try:
        data = json.loads(payload)
    except ValueError:
        raise WebhookRejected("The body is not JSON.")
    if not (
        isinstance(data, dict)
        and data.get("object") == "event"
        and isinstance(data.get("id"), str)
        and isinstance(data.get("type"), str)
        and isinstance(data.get("livemode"), bool)
        and isinstance((data.get("data") or {}).get("object"), dict)
    ):
        raise WebhookRejected("The body is not a Stripe event.")
    return data


def webhook_trigger_record(
    *, endpoint: WebhookEndpoint, body: bytes, signature: str, headers: dict[str, str], remote_ip: str
) -> WebhookEventTrigger:
    try:
        payload = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookRejected("The body is not UTF-8.")
    if not endpoint.secret:
        logger.error("Webhook endpoint %s has no signing secret; rejecting.", endpoint.djstripe_uuid)
        raise WebhookRejected("This endpoint has no signing secret.")
    try:
        stripe.WebhookSignature.verify_header(payload, signature, endpoint.secret, endpoint.djstripe_tolerance)
    except stripe.SignatureVerificationError:
        raise WebhookRejected("The Stripe-Signature header does not verify (wrong secret, or too old).")
    _parse_event(payload)
    # One INSERT, committed on its own (no transaction round trips): the caller's task
    # is sent once it is durable.
    trigger = WebhookEventTrigger.objects.create(
        remote_ip=remote_ip,
        headers=headers,
        body=payload,
        valid=True,
        processed=False,
        webhook_endpoint=endpoint,
        stripe_trigger_account_id=endpoint.djstripe_owner_account_id,
    )
    return trigger


def _api_key(trigger: WebhookEventTrigger) -> str:
    account = trigger.stripe_trigger_account
    livemode = trigger.json_body.get("livemode")
    return (account.default_api_key if account else None) or djstripe_settings.get_default_api_key(livemode)


def _check_api_version(body: dict) -> None:
    """An event rendered at another API version than the pinned one (an endpoint made
    elsewhere, or Stripe's account default) is logged and still applied: the fields
    the handlers read (ids, amounts, amount_refunded, a dispute's status and balance
    transactions) have kept their shape across versions, and dropping a payment's
    event would lose money. Staff fix the endpoint's version (register_stripe_webhook)."""
    version = body.get("api_version")
    if version != settings.STRIPE_API_VERSION:
        logger.warning(
            "Stripe event %s (%s) is at API version %s, not the pinned %s; applied anyway. "
            "Set the webhook endpoint's API version to the pinned one.",
            body.get("id"),
            body.get("type"),
            version,
            settings.STRIPE_API_VERSION,
        )


def webhook_trigger_process(*, trigger_id: int) -> str:
    """Processes one stored trigger. Safe to run twice and concurrently with another
    trigger of the same event."""
    trigger = WebhookEventTrigger.objects.select_related("stripe_trigger_account").filter(pk=trigger_id).first()
    if trigger is None or not trigger.valid:
        return "skipped: no such valid trigger"
    if trigger.processed:
        return "skipped: already processed"
    body = trigger.json_body
    try:
        _check_api_version(body)
        # Parley's part first, from the signed body alone, in its own transaction: the
        # credits never wait on dj-stripe or on Stripe.
        outcome = topup_event_receive(event=body)
        if body["type"] == "checkout.session.completed" and body["data"]["object"].get("mode") == "setup":
            outcome = card_setup_finish(session=body["data"]["object"])
        # dj-stripe's part: it creates the Event once per Stripe event id and syncs
        # what the event names, calling Stripe (in its own transaction; for a repeated
        # event it returns the stored Event). A slow Stripe never holds our locks.
        event = Event.process(body, api_key=_api_key(trigger))
        with transaction.atomic():
            locked = WebhookEventTrigger.objects.select_for_update().get(pk=trigger_id)
            if locked.processed:
                return "skipped: already processed"
            locked.event = event
            locked.processed = True
            locked.exception = ""
            locked.traceback = ""
            locked.save(update_fields=["event", "processed", "exception", "traceback", "updated"])
    except Exception as exc:
        # Kept on the trigger so staff can see it in the admin and re-run it; the task
        # decides whether to retry, the sweeper re-sends it later either way.
        WebhookEventTrigger.objects.filter(pk=trigger_id).update(
            exception=f"{exc.__class__.__name__}: {exc}"[:128], traceback=format_exc(), updated=timezone.now()
        )
        _event_count(body, "failed")
        raise
    logger.info("Stripe event %s (%s), trigger %s: %s", body["id"], body["type"], trigger_id, outcome)
    _event_count(body, webhook_outcome_kind(outcome))
    return outcome


def webhook_outcome_kind(outcome: str) -> str:
    """What processing returned, as the metric's outcome: `duplicate` (the event was
    applied or ignored by an earlier delivery), `ignored` (nothing to change: not a
    top-up's, settled already, older than what is known), `pending` (no top-up has
    its ids yet) or `applied`, by how this module's outcomes begin."""
    if outcome.startswith("already "):
        return "duplicate"
    if outcome.startswith(("ignored", "not a ", "older than")):
        return "ignored"
    return "pending" if outcome.startswith("pending") else "applied"


def _event_count(body: dict, outcome: str) -> None:
    """parley_stripe_events_total: a type Parley does not handle is `other` (bounded labels)."""
    event_type = body.get("type")
    STRIPE_EVENTS.labels(type=event_type if event_type in EVENT_HANDLERS else "other", outcome=outcome).inc()


# --- endpoints (manage.py register_stripe_webhook) ---------------------------------

# The events Parley acts on; an endpoint created at Stripe subscribes to these only.
WEBHOOK_EVENTS = list(EVENT_HANDLERS)


def webhook_path(endpoint: WebhookEndpoint) -> str:
    return reverse("djstripe:djstripe_webhook_by_uuid", kwargs={"uuid": endpoint.djstripe_uuid})


def webhook_endpoint_register_local(*, secret: str, endpoint_id: str | None = None, url: str = "") -> WebhookEndpoint:
    """Stores (or, for a known endpoint id, updates the secret of) an endpoint whose
    signing secret comes from elsewhere: the Stripe dashboard or `stripe listen`."""
    if not secret.startswith("whsec_"):
        raise ValueError("A webhook signing secret starts with whsec_.")
    endpoint_id = endpoint_id or f"we_local_{uuid4().hex[:24]}"
    endpoint, created = WebhookEndpoint.objects.get_or_create(
        id=endpoint_id,
        defaults={
            "secret": secret,
            "url": url,
            "enabled_events": WEBHOOK_EVENTS,
            "status": "enabled",
            "api_version": settings.STRIPE_API_VERSION,
            "livemode": settings.STRIPE_LIVE_MODE,
            "metadata": {},
        },
    )
    if not created:
        endpoint.secret = secret
        endpoint.url = url or endpoint.url
        endpoint.save(update_fields=["secret", "url", "djstripe_updated"])
    return endpoint


def webhook_endpoint_create_at_stripe(*, base_url: str) -> WebhookEndpoint:
    """Creates the endpoint at Stripe (which generates its secret) pointing at this
    service's webhook URL under `base_url`, and stores it through dj-stripe's sync."""
    djstripe_uuid = uuid4()
    path = reverse("djstripe:djstripe_webhook_by_uuid", kwargs={"uuid": djstripe_uuid})
    created = client.webhook_endpoint_create(
        url=urljoin(base_url, path), enabled_events=WEBHOOK_EVENTS, metadata={"djstripe_uuid": str(djstripe_uuid)}
    )
    endpoint = WebhookEndpoint.sync_from_stripe_data(created, api_key=settings.STRIPE_SECRET_KEY)
    if not endpoint.secret:  # Stripe returns the secret only from this create call
        endpoint.secret = created["secret"]
        endpoint.save(update_fields=["secret"])
    return endpoint
