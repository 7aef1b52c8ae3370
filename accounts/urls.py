from django.urls import path

from accounts import api

urlpatterns = [
    path("auth/register", api.RegisterView.as_view(), name="auth-register"),
    path("auth/keys", api.ApiKeyCreateView.as_view(), name="auth-keys"),
    path("users/me", api.MeView.as_view(), name="users-me"),
    path("users/me/keys", api.ApiKeyListView.as_view(), name="users-me-keys"),
    path("users/me/keys/<int:key_id>", api.ApiKeyDetailView.as_view(), name="users-me-key"),
    path("users/me/end-users", api.EndUserListView.as_view(), name="users-me-end-users"),
    path("users/me/end-users/<int:end_user_id>", api.EndUserDetailView.as_view(), name="users-me-end-user"),
    path("users/me/limits", api.AccountLimitsView.as_view(), name="users-me-limits"),
]
