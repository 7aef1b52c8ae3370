"""Top-up endpoints, mounted at the API root in config/urls.py."""

from django.urls import path

from billing.stripe.api import AutoTopUpView, CardSetupView, TopUpCreateView, TopUpListView

urlpatterns = [
    path("users/me/wallet/top-up", TopUpCreateView.as_view(), name="users-me-top-up"),
    path("users/me/top-ups", TopUpListView.as_view(), name="users-me-top-ups"),
    path("users/me/auto-top-up", AutoTopUpView.as_view(), name="users-me-auto-top-up"),
    path("users/me/auto-top-up/card", CardSetupView.as_view(), name="users-me-auto-top-up-card"),
]
