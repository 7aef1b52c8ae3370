"""Reads of top-ups and of dj-stripe's webhook triggers. Nothing here writes."""

from datetime import timedelta
from typing import Any

from django.db.models import F, Q, QuerySet
from django.utils import timezone
from djstripe.models import WebhookEventTrigger

from accounts.models import User
from billing.models import AutoTopUp, TopUp


def topups_for_user(*, user: User) -> QuerySet[TopUp]:
    return TopUp.objects.filter(user=user).order_by("-created_at", "-id")


def webhook_triggers_to_retry(*, older_than: timedelta, failed_within: timedelta, limit: int = 500) -> list[int]:
    """Ids of valid, unprocessed triggers older than `older_than` whose task was lost
    (broker down at intake, or purged: no error), or that failed (an error, last tried
    more than `older_than` ago) and are younger than `failed_within`. Older failures
    stay for staff to re-run from the admin."""
    now = timezone.now()
    cutoff = now - older_than
    lost = Q(exception="")
    failed = ~Q(exception="") & Q(updated__lt=cutoff, created__gte=now - failed_within)
    return list(
        WebhookEventTrigger.objects.filter(lost | failed, valid=True, processed=False, created__lt=cutoff)
        .order_by("pk")
        .values_list("pk", flat=True)[:limit]
    )


def auto_top_ups_stalled(*, older_than: timedelta, limit: int = 500) -> list[int]:
    """Ids of claimed auto top-ups still waiting for their charge (status created)
    after `older_than`: the charge task's message was lost."""
    cutoff = timezone.now() - older_than
    return list(
        TopUp.objects.filter(mode=TopUp.Mode.AUTO, status=TopUp.Status.CREATED, created_at__lt=cutoff)
        .order_by("pk")
        .values_list("pk", flat=True)[:limit]
    )


def auto_top_ups_under_threshold(*, limit: int = 500) -> list[int]:
    """User ids whose auto top-up is on, has nothing in flight, and whose balance is
    under its threshold: a debit's trigger that never arrived."""
    return list(
        AutoTopUp.objects.filter(enabled=True, in_flight__isnull=True, user__wallet__balance__lt=F("threshold"))
        .order_by("user_id")
        .values_list("user_id", flat=True)[:limit]
    )


def auto_top_up_status(*, user: User) -> dict[str, Any]:
    """What GET users/me/wallet shows of auto top-up (also when none was set up)."""
    row = AutoTopUp.objects.filter(user=user).first()
    if row is None:
        row = AutoTopUp(user=user)
    card = None
    if row.payment_method_id:
        card = {"brand": row.card_brand, "last4": row.card_last4, "saved_at": row.card_saved_at}
    return {
        "enabled": row.enabled,
        "threshold": row.threshold if row.enabled else None,
        "amount_usd": row.amount_usd if row.enabled else None,
        "card": card,
        "in_flight_top_up": row.in_flight_id,
        "disabled_reason": row.disabled_reason,
        "disabled_at": row.disabled_at,
        "last_error": row.last_error,
    }
