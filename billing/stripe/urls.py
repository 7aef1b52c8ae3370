"""Top-up endpoints, mounted at the API root in config/urls.py."""

from django.urls import path

from billing.stripe.api import TopUpCreateView, TopUpListView

urlpatterns = [
    path("users/me/wallet/top-up", TopUpCreateView.as_view(), name="users-me-top-up"),
    path("users/me/top-ups", TopUpListView.as_view(), name="users-me-top-ups"),
]
