"""Reads of top-ups and of dj-stripe's webhook triggers. Nothing here writes."""

from datetime import timedelta

from django.db.models import Q, QuerySet
from django.utils import timezone
from djstripe.models import WebhookEventTrigger

from accounts.models import User
from billing.models import TopUp


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
