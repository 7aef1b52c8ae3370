"""What Parley tells a user beyond an API answer: a row they can list
(GET users/me/notifications) and, sent after commit by a worker, an email."""

from django.conf import settings
from django.db import models


class Notification(models.Model):
    class Kind(models.TextChoices):
        LOW_BALANCE = "low_balance", "Low balance"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notifications")
    kind = models.CharField(max_length=32, choices=Kind.choices)
    message = models.CharField(max_length=500)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Set when a worker takes the email to send (cleared again if sending fails), so
    # the after-commit task and the sweep never both send it.
    emailed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # Serves GET users/me/notifications (own, newest first).
            models.Index(fields=["user", "-created_at", "-id"], name="notifications_user_created"),
            # Serves the sweep of emails not sent (partial: sent ones, nearly all, cost it nothing).
            models.Index(
                fields=["created_at"], condition=models.Q(emailed_at__isnull=True), name="notifications_unsent"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} for {self.user}"
