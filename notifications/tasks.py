from smtplib import SMTPException

from celery import shared_task

from config.celery import app
from notifications.services import notification_email, notification_emails_sweep


@shared_task(
    ignore_result=True,
    name="notifications.email",
    autoretry_for=(SMTPException, OSError),
    max_retries=5,
    retry_backoff=5,
    retry_jitter=True,
)
def email_notification(notification_id: int) -> bool:
    return notification_email(notification_id=notification_id)


@shared_task(ignore_result=True, name="notifications.sweep_emails", acks_late=False)
def sweep_notification_emails() -> int:
    return notification_emails_sweep()


app.add_periodic_task(60.0, sweep_notification_emails.s(), name="notifications: email what was not sent", expires=55)
