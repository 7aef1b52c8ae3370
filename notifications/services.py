"""Telling users things. A notice is written in the transaction of what caused it
(so it exists exactly when that commits) and emailed after commit by a worker: no
request, and no wallet lock, ever waits on a mail server."""

import logging
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone

from accounts.models import User
from billing.money import format_ledger
from notifications.models import Notification
from organizations.selectors import managers_emails

logger = logging.getLogger(__name__)

# The sweep re-sends an email whose after-commit send was lost (broker down, worker
# killed) once it is this old, and gives up on it after a day (stale news).
EMAIL_SWEEP_AFTER = timedelta(minutes=2)
EMAIL_GIVE_UP_AFTER = timedelta(days=1)
EMAIL_SUBJECTS = {Notification.Kind.LOW_BALANCE: "Parley: your balance is low"}


def low_balance_notify(*, user_id: int, balance: Decimal) -> Notification:
    """The wallet just fell below LOW_BALANCE_THRESHOLD. Called by billing inside the
    transaction of the ledger row that crossed it, so once per crossing, not per turn."""
    threshold = settings.LOW_BALANCE_THRESHOLD
    notice = Notification.objects.create(
        user_id=user_id,
        kind=Notification.Kind.LOW_BALANCE,
        message=(
            f"Your balance is {format_ledger(balance)} credits, below {format_ledger(threshold)}. "
            "Top up to keep chatting."
        ),
        data={"balance": format_ledger(balance), "threshold": format_ledger(threshold)},
    )
    # (A lambda, not a partial: Django's robust on_commit logs the callback's __qualname__.)
    transaction.on_commit(lambda: _email_send_later(notice.pk), robust=True)
    return notice


def _email_send_later(notification_id: int) -> None:
    from notifications.tasks import email_notification  # the task module imports this one

    email_notification.delay(notification_id)


def notification_email(*, notification_id: int) -> bool:
    """Emails one notice, once: taken with a conditional UPDATE, released again when the
    mail server fails (the task retries, the sweep later). False when already taken."""
    taken = Notification.objects.filter(pk=notification_id, emailed_at__isnull=True).update(emailed_at=timezone.now())
    if not taken:
        return False
    notice = Notification.objects.select_related("user").get(pk=notification_id)
    try:
        send_mail(
            subject=EMAIL_SUBJECTS[notice.kind],
            message=notice.message,
            from_email=None,  # DEFAULT_FROM_EMAIL
            recipient_list=notice_recipients(notice.user),
        )
    except Exception:
        Notification.objects.filter(pk=notification_id).update(emailed_at=None)
        raise
    return True


def notice_recipients(user: User) -> list[str]:
    """A person's notices go to them; an organization's (its account has no mailbox)
    to its owners and admins."""
    if user.is_organization:
        return managers_emails(account_id=user.pk)
    return [user.email]


def notification_emails_sweep() -> int:
    """Beat: sends again the emails whose after-commit send was lost. How many were sent."""
    now = timezone.now()
    due = Notification.objects.filter(
        emailed_at__isnull=True, created_at__lt=now - EMAIL_SWEEP_AFTER, created_at__gt=now - EMAIL_GIVE_UP_AFTER
    ).values_list("pk", flat=True)[:200]
    sent = 0
    for notification_id in due:
        try:
            sent += notification_email(notification_id=notification_id)
        except Exception:
            logger.exception("emailing notification %s failed; the sweep will try again", notification_id)
    return sent
