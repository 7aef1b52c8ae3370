from django.urls import path

from reporting import api

urlpatterns = [
    path("admin/usage/summary", api.AdminUsageSummaryView.as_view(), name="admin-usage-summary"),
    path("users/me/usage", api.MyUsageView.as_view(), name="users-me-usage"),
    path("orgs/<int:org_id>/usage", api.OrgUsageView.as_view(), name="org-usage"),
]
