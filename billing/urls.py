from django.urls import path

from billing import api

urlpatterns = [
    path("users/me/wallet", api.WalletView.as_view(), name="users-me-wallet"),
    path("users/me/transactions", api.TransactionListView.as_view(), name="users-me-transactions"),
    path("models", api.ModelPriceListView.as_view(), name="models"),
    path("admin/wallets/<int:user_id>", api.AdminWalletView.as_view(), name="admin-wallet"),
    path("admin/wallets/<int:user_id>/grant", api.AdminGrantView.as_view(), name="admin-wallet-grant"),
]
