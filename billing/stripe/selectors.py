"""Reads of top-ups and of dj-stripe's webhook triggers. Nothing here writes."""

from datetime import timedelta

from django.db.models import QuerySet
from django.utils import timezone
from djstripe.models import WebhookEventTrigger

from accounts.models import User
from billing.models import TopUp


def topups_for_user(*, user: User) -> QuerySet[TopUp]:
    return TopUp.objects.filter(user=user).order_by("-created_at", "-id")


def webhook_triggers_lost(*, older_than: timedelta, limit: int = 500) -> list[int]:
    """Ids of valid triggers that were never processed nor failed: their task was lost
    (broker down at intake, or purged). Failed ones stay for staff to re-run from the
    admin."""
    cutoff = timezone.now() - older_than
    return list(
        WebhookEventTrigger.objects.filter(valid=True, processed=False, exception="", created__lt=cutoff)
        .order_by("pk")
        .values_list("pk", flat=True)[:limit]
    )
