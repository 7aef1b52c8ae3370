"""Stripe top-ups: creating one, and applying Stripe's events to it.

Creating: the TopUp row is committed first; then, outside any transaction, the
user's Stripe customer and a PaymentIntent keyed by the row's idempotency key. A
retried create can therefore never make a second PaymentIntent.

Applying events (called by the Celery task in billing/stripe_webhooks.py, never in
a web request). Stripe delivers each event at least once, in any order, sometimes
concurrently, so every handler:
- locks the TopUp row (select_for_update) and re-reads its state before acting;
- moves credits only through billing.services with a reference derived from Stripe
  ids, so the ledger's unique (kind, reference) refuses a second application;
- is commutative: a refund or dispute that arrives before payment_intent.succeeded
  is taken back at once (the balance may go negative) and the later grant leaves
  the right balance.
The credits granted always come from our TopUp row, never from event metadata.
"""

import logging
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import stripe
from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import User
from billing import stripe_api
from billing.models import CreditTransaction, TopUp
from billing.money import LEDGER_PLACES, USD_PLACES
from billing.services import wallet_adjust, wallet_reverse, wallet_topup
from core.exceptions import ServiceUnavailable, field_error

logger = logging.getLogger(__name__)

Kind = CreditTransaction.Kind
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
    stripe_api.stripe_require()
    topup_validate_amount(amount_usd)
    # Autocommit: the row (and its idempotency key) is durable before Stripe sees it.
    topup = TopUp.objects.create(user=user, amount_usd=amount_usd, credits=topup_credits(amount_usd))
    try:
        customer = stripe_api.customer_for_user(user=user)
        intent = stripe_api.payment_intent_create(
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


def topups_for_user(*, user: User) -> QuerySet[TopUp]:
    return TopUp.objects.filter(user=user).order_by("-created_at", "-id")


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
    if share > 0 and not _ledger_has(Kind.REVERSAL, dispute_id):
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
    if share > 0 and not _ledger_has(Kind.ADJUSTMENT, reference):
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
