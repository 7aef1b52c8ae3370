from django.db.models import QuerySet

from accounts.models import User
from notifications.models import Notification


def notifications_for_user(*, user: User) -> QuerySet[Notification]:
    return Notification.objects.filter(user=user).only("id", "kind", "message", "data", "created_at")
