from django.urls import path

from notifications import api

urlpatterns = [
    path("users/me/notifications", api.NotificationListView.as_view(), name="users-me-notifications"),
]
