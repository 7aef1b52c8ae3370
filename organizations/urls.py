"""`/api/v1/orgs/...`: organizations, members and invitations (organizations.api),
and the organization's wallet and top-ups (organizations.api_billing)."""

from organizations import api, api_billing

urlpatterns = [*api.urlpatterns, *api_billing.urlpatterns]
