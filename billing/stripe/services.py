"""Stripe's services: top-ups (creating one, applying Stripe's events to it) and
webhooks (intake in the web request, processing in Celery, endpoints).

Creating a top-up: the TopUp row is committed first; then, outside any transaction, the
user's Stripe customer and a PaymentIntent keyed by the row's idempotency key. A
retried create can therefore never make a second PaymentIntent.

Applying Stripe's events (`topup_event_apply`, called by `webhook_trigger_process`
in the Celery task, never in a web request). Stripe delivers each event at least
once, in any order, sometimes concurrently, so every handler:
- locks the TopUp row (select_for_update) and re-reads its state before acting;
- moves credits only through billing.services with a reference derived from Stripe
  ids, so the ledger's unique (kind, reference) refuses a second application;
- is commutative: a refund or dispute that arrives before payment_intent.succeeded
  is taken back at once (the balance may go negative) and the later grant leaves
  the right balance.
The credits granted always come from our TopUp row, never from event metadata.

Webhook intake (`webhook_trigger_record`, called by the view) verifies the
signature locally against the dj-stripe WebhookEndpoint's secret (HMAC of
"t.payload", within the endpoint's tolerance) and stores a dj-stripe
WebhookEventTrigger (valid, not yet processed); the view then sends the processing
task on commit (billing/stripe/tasks.py). No Stripe API call happens in
the request, so Stripe gets its 2xx at once. A request with a bad signature stores
nothing.

Processing (`webhook_trigger_process`, the task) first runs dj-stripe's own
processing (the Event row and dj-stripe's sync of the objects it names, which may
call Stripe, in dj-stripe's own transaction), then the project's handlers
(`topup_event_apply`) in one transaction of ours that also marks the trigger
processed; no Stripe call happens inside it. If anything fails, our transaction
rolls back, the trigger keeps the error for the admin, and the task retries with
backoff. Stripe may deliver one event several times (several triggers): each is
processed, and the handlers' ledger references make the second application a no-op.

Nothing here sends a task (tasks import services, never the reverse): the view, the
admin's re-run action and the sweeper task enqueue.
"""

import json
import logging
from decimal import ROUND_HALF_UP, Decimal
from traceback import format_exc
from typing import Any
from urllib.parse import urljoin
from uuid import uuid4

import stripe
from django.conf import settings
from django.db import transaction
from django.urls import reverse
from django.utils import timezone
from djstripe.models import Event, WebhookEndpoint, WebhookEventTrigger
from djstripe.settings import djstripe_settings

from accounts.models import User
from billing.models import CreditTransaction, TopUp, TransactionKind
from billing.money import LEDGER_PLACES, USD_PLACES
from billing.services import wallet_adjust, wallet_reverse, wallet_topup
from billing.stripe import client
from core.exceptions import ServiceUnavailable, field_error

logger = logging.getLogger(__name__)

Status = TopUp.Status
DisputeStatus = TopUp.DisputeStatus


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


def topup_create(*, user: User, amount_usd: Decimal) -> tuple[TopUp, str]:
    """Starts a top-up: returns the pending TopUp and the PaymentIntent's client secret
    (handed to the client once, never stored)."""
    client.stripe_require()
    topup_validate_amount(amount_usd)
    # Autocommit: the row (and its idempotency key) is durable before Stripe sees it.
    topup = TopUp.objects.create(user=user, amount_usd=amount_usd, credits=topup_credits(amount_usd))
    try:
        customer = client.customer_for_user(user=user)
        intent = client.payment_intent_create(
            customer_id=customer.id,
            amount_cents=topup.amount_cents,
            metadata={
                "parley_topup_id": str(topup.pk),
                "parley_user_id": str(user.pk),
                "credits": str(topup.credits),
            },
            idempotency_key=f"parley-topup-{topup.idempotency_key}",
            description=f"Parley credits: {topup.credits}",
        )
    except stripe.StripeError as exc:
        # Logged by class only: Stripe's messages may echo request details.
        logger.warning("Stripe refused top-up %s: %s", topup.pk, exc.__class__.__name__)
        TopUp.objects.filter(pk=topup.pk, status=Status.CREATED).update(
            status=Status.FAILED, error=f"Stripe error: {exc.__class__.__name__}", updated_at=timezone.now()
        )
        raise ServiceUnavailable("The payment provider could not be reached; please try again.") from exc
    # Compare-and-set: only a still-new top-up becomes pending (an early webhook may
    # already have moved it further).
    TopUp.objects.filter(pk=topup.pk, status=Status.CREATED).update(
        payment_intent_id=intent.id, status=Status.PENDING, updated_at=timezone.now()
    )
    TopUp.objects.filter(pk=topup.pk, payment_intent_id__isnull=True).update(payment_intent_id=intent.id)
    topup.refresh_from_db()
    return topup, intent.client_secret


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


def _ledger_has(kind: str, reference: str) -> bool:
    # Every posting for a top-up happens under its row lock, so this check is exact.
    return CreditTransaction.objects.filter(kind=kind, reference=reference).exists()


def _check_usd(topup: TopUp, obj: dict, amount_field: str) -> None:
    if str(obj.get("currency", "")).lower() != "usd":
        raise TopUpMismatch(f"{obj.get('id')}: currency {obj.get('currency')!r}, top-up {topup.pk} is in USD.")
    if amount_field and obj.get(amount_field) != topup.amount_cents:
        raise TopUpMismatch(
            f"{obj.get('id')}: {amount_field}={obj.get(amount_field)!r}, top-up {topup.pk} is {topup.amount_cents} cents."
        )


def _on_payment_intent_succeeded(intent: dict) -> str:
    pi_id = _id(intent.get("id"))
    topup = _locked_topup(payment_intent_id=pi_id)
    if topup is None:
        topup = _adopt_by_metadata(intent)
    if topup is None:
        return "ignored: unknown PaymentIntent"
    _check_usd(topup, intent, "amount")
    wallet_topup(
        user=topup.user, amount=topup.credits, reference=pi_id, reason=f"Stripe top-up of {topup.amount_usd} USD"
    )
    if topup.granted_at is None:
        topup.granted_at = timezone.now()
    topup.charge_id = topup.charge_id or _id(intent.get("latest_charge")) or ""
    topup.error = ""
    _refresh_status(topup)
    topup.save()
    return f"granted {topup.credits} to top-up {topup.pk}"


def _adopt_by_metadata(intent: dict) -> TopUp | None:
    """The PaymentIntent id is stored right after Stripe answers; should the webhook
    win that race (or the process die in between), find the row by the id we put in
    the metadata, and accept it only when user and amount agree with our row."""
    metadata = intent.get("metadata") or {}
    topup_id, user_id = metadata.get("parley_topup_id"), metadata.get("parley_user_id")
    if not (str(topup_id).isdigit() and str(user_id).isdigit()):
        return None
    topup = (
        TopUp.objects.select_for_update()
        .select_related("user")
        .filter(pk=int(topup_id), user_id=int(user_id), payment_intent_id__isnull=True)
        .first()
    )
    if topup is None or intent.get("amount") != topup.amount_cents:
        return None
    topup.payment_intent_id = _id(intent.get("id"))
    return topup


def _on_payment_intent_failed(intent: dict) -> str:
    topup = _locked_topup(payment_intent_id=_id(intent.get("id")))
    if topup is None:
        return "ignored: unknown PaymentIntent"
    if topup.status not in (Status.CREATED, Status.PENDING):
        return "ignored: top-up already settled"
    error = (intent.get("last_payment_error") or {}).get("message") or intent.get("cancellation_reason") or "failed"
    topup.status = Status.FAILED
    topup.error = str(error)[:255]
    topup.save(update_fields=["status", "error", "updated_at"])
    return f"top-up {topup.pk} failed"


def _on_charge_refunded(charge: dict) -> str:
    """charge.amount_refunded is Stripe's running total, so the credits to take back
    are (share of that total) - (what was already taken back): partial refunds add
    up, a replayed or older event finds nothing new."""
    charge_id = _id(charge.get("id"))
    topup = _locked_topup(payment_intent_id=_id(charge.get("payment_intent")), charge_id=charge_id)
    if topup is None:
        return "ignored: unknown charge"
    _check_usd(topup, charge, "")
    refunded_cents = int(charge.get("amount_refunded") or 0)
    if refunded_cents <= topup.refunded_cents:
        return "nothing new refunded"
    target = _share(topup, refunded_cents)
    delta = target - topup.refunded_credits
    if delta > 0:
        wallet_reverse(
            user=topup.user,
            amount=delta,
            reference=f"{charge_id}:refunded:{refunded_cents}",
            reason=f"Stripe refund of top-up {topup.pk} ({refunded_cents} of {topup.amount_cents} cents)",
        )
    topup.refunded_cents = refunded_cents
    topup.refunded_credits = target
    topup.charge_id = topup.charge_id or charge_id or ""
    _refresh_status(topup)
    topup.save()
    return f"took back {delta} for refunds of top-up {topup.pk}"


def _dispute_topup(dispute: dict) -> TopUp | None:
    return _locked_topup(payment_intent_id=_id(dispute.get("payment_intent")), charge_id=_id(dispute.get("charge")))


def _on_dispute_created(dispute: dict) -> str:
    dispute_id = _id(dispute.get("id"))
    topup = _dispute_topup(dispute)
    if topup is None or dispute_id is None:
        return "ignored: unknown charge"
    _check_usd(topup, dispute, "")
    share = _share(topup, int(dispute.get("amount") or 0))
    if share > 0 and not _ledger_has(TransactionKind.REVERSAL, dispute_id):
        wallet_reverse(
            user=topup.user, amount=share, reference=dispute_id, reason=f"Stripe dispute on top-up {topup.pk}"
        )
        topup.disputed_credits += share
    if topup.dispute_status == DisputeStatus.NONE:  # a close that came first stays final
        topup.dispute_status = DisputeStatus.OPEN
    _refresh_status(topup)
    topup.save()
    return f"took back {share} for dispute {dispute_id}"


# An inquiry closed without a chargeback never withdrew funds: the credits come back too.
DISPUTE_GIVEN_BACK = ("won", "warning_closed")


def _on_dispute_closed(dispute: dict) -> str:
    dispute_id = _id(dispute.get("id"))
    topup = _dispute_topup(dispute)
    if topup is None or dispute_id is None:
        return "ignored: unknown charge"
    _check_usd(topup, dispute, "")
    if dispute.get("status") not in DISPUTE_GIVEN_BACK:
        topup.dispute_status = DisputeStatus.LOST
        _refresh_status(topup)
        topup.save()
        return f"dispute {dispute_id} lost"
    share = _share(topup, int(dispute.get("amount") or 0))
    reference = f"{dispute_id}:won"
    if share > 0 and not _ledger_has(TransactionKind.ADJUSTMENT, reference):
        wallet_adjust(user=topup.user, amount=share, reference=reference, reason=f"Stripe dispute {dispute_id} won")
        topup.disputed_credits -= share
    topup.dispute_status = DisputeStatus.WON
    _refresh_status(topup)
    topup.save()
    return f"gave back {share} for dispute {dispute_id}"


EVENT_HANDLERS = {
    "payment_intent.succeeded": _on_payment_intent_succeeded,
    "payment_intent.payment_failed": _on_payment_intent_failed,
    "payment_intent.canceled": _on_payment_intent_failed,
    "charge.refunded": _on_charge_refunded,
    "charge.dispute.created": _on_dispute_created,
    "charge.dispute.closed": _on_dispute_closed,
}


def topup_event_apply(*, event_type: str, obj: dict) -> str:
    """Applies one verified Stripe event to its top-up; returns what it did. Other
    event types, and events for PaymentIntents that are not top-ups, change nothing."""
    handler = EVENT_HANDLERS.get(event_type)
    if handler is None:
        return "ignored: event type"
    with transaction.atomic():
        return handler(obj)


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
        # dj-stripe first, outside our transaction: it creates the Event once per Stripe
        # event id and runs its sync, which may call Stripe (in its own transaction);
        # for a repeated event it returns the stored Event. A slow Stripe therefore
        # never holds the lock below, and the credits depend only on the signed body.
        event = Event.process(body, api_key=_api_key(trigger))
        with transaction.atomic():
            locked = WebhookEventTrigger.objects.select_for_update().get(pk=trigger_id)
            if locked.processed:
                return "skipped: already processed"
            outcome = topup_event_apply(event_type=body["type"], obj=body["data"]["object"])
            locked.event = event
            locked.processed = True
            locked.exception = ""
            locked.traceback = ""
            locked.save(update_fields=["event", "processed", "exception", "traceback", "updated"])
    except Exception as exc:
        # Kept on the trigger (outside the rolled-back transaction) so staff can see
        # it in the admin and re-run it; the task decides whether to retry.
        WebhookEventTrigger.objects.filter(pk=trigger_id).update(
            exception=f"{exc.__class__.__name__}: {exc}"[:128], traceback=format_exc(), updated=timezone.now()
        )
        raise
    logger.info("Stripe event %s (%s), trigger %s: %s", body["id"], body["type"], trigger_id, outcome)
    return outcome


# --- endpoints (manage.py register_stripe_webhook) ---------------------------------

# The events Parley acts on; an endpoint created at Stripe subscribes to these only.
WEBHOOK_EVENTS = [
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "payment_intent.canceled",
    "charge.refunded",
    "charge.dispute.created",
    "charge.dispute.closed",
]


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
