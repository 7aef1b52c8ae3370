from django.urls import path

from billing.stripe_topup_api import TopUpCreateView, TopUpListView

urlpatterns = [
    path("users/me/wallet/top-up", TopUpCreateView.as_view(), name="users-me-top-up"),
    path("users/me/top-ups", TopUpListView.as_view(), name="users-me-top-ups"),
]
