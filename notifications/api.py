from rest_framework import generics

from core.pagination import NewestFirstCursorPagination
from notifications.models import Notification
from notifications.selectors import notifications_for_user
from notifications.serializers import NotificationSerializer


class NotificationListView(generics.ListAPIView):
    """The caller's notices, newest first (e.g. `low_balance`, once each time the
    balance falls below LOW_BALANCE_THRESHOLD)."""

    serializer_class = NotificationSerializer
    pagination_class = NewestFirstCursorPagination
    queryset = Notification.objects.none()  # for the schema; requests use get_queryset

    def get_queryset(self):  # noqa: ANN201
        return notifications_for_user(user=self.request.user)
