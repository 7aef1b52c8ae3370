"""An organization's wallet, ledger, top-ups and auto top-up (`/api/v1/orgs/{org_id}/...`),
and the staff's view of it and grant to it (`/api/v1/admin/orgs/{org_id}/...`).

These are the personal views (billing.api, billing.stripe.api) serving the
organization's account instead of the caller's: only `account()` differs, so the
bodies, the validation, the Idempotency-Key rules and the `keys` scope are the same
code. The caller is a person with their own key: any member reads the wallet; the
rest is for owners and admins (403 naming the role); another organization is 404.
An organization's own key is refused (403): it spends the wallet, it does not run it."""

from typing import Any

from django.shortcuts import get_object_or_404
from django.urls import path
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request

from accounts.models import User
from accounts.permissions import KeysScope
from billing.api import AdminGrantView, AdminWalletView, TransactionListView, WalletView
from billing.stripe.api import AutoTopUpView, CardSetupView, TopUpCreateView, TopUpListView
from organizations.api import PersonKey
from organizations.models import MANAGERS, Membership, Organization
from organizations.selectors import membership_for


class OrganizationAccount:
    """Serves the wallet of the organization in the URL to a member with one of
    `roles` (every member when empty). Checked before the view reads anything, so a
    non-member learns nothing (404), not even that Stripe is off."""

    permission_classes = [IsAuthenticated, PersonKey, KeysScope]  # as every /orgs view (organizations.api)
    roles: tuple[str, ...] = MANAGERS
    membership: Membership

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401
        super().initial(request, *args, **kwargs)  # authentication, permissions, throttles
        self.membership = membership_for(user=request.user, organization_id=kwargs["org_id"], roles=self.roles)

    def account(self, request: Request) -> User:
        return self.membership.organization.account


class OrganizationWalletView(OrganizationAccount, WalletView):
    """The organization's wallet, as users/me/wallet shows a person's: balance, held,
    available, grants, low_balance and auto top-up. Any member."""

    roles = ()


class OrganizationTransactionListView(OrganizationAccount, TransactionListView):
    """The organization's ledger, newest first (cursor pagination). Owners and admins."""


class OrganizationTopUpCreateView(OrganizationAccount, TopUpCreateView):
    """Tops up the organization's wallet through Stripe, as users/me/wallet/top-up does
    a person's: mode `payment_intent` (the default) answers a `client_secret` for
    Stripe.js, mode `checkout` the `url` of a Stripe-hosted page (needs `success_url`
    and `cancel_url`). Credits arrive with Stripe's webhook, once. Owners and admins;
    503 when Stripe is not configured."""


class OrganizationTopUpListView(OrganizationAccount, TopUpListView):
    """The organization's top-ups, newest first. Owners and admins."""


class OrganizationAutoTopUpView(OrganizationAccount, AutoTopUpView):
    """The organization's auto top-up: when a settled debit leaves its balance under
    `threshold` credits, its saved card is charged `amount_usd` off-session, credited
    by Stripe's webhook. PUT turns it on (400 naming `card` without a saved card),
    DELETE turns it off. Owners and admins; PUT needs the key's `keys` scope."""


class OrganizationCardSetupView(OrganizationAccount, CardSetupView):
    """Saves the organization's card for auto top-up: answers the `url` of a
    Stripe-hosted Checkout page in setup mode (nothing is charged). Owners and admins,
    with the key's `keys` scope."""


class OrganizationInUrl:
    """The staff views of a wallet, for the organization the URL names."""

    def account(self, **kwargs: int) -> User:
        return get_object_or_404(Organization.objects.select_related("account"), pk=kwargs["org_id"]).account


class AdminOrganizationWalletView(OrganizationInUrl, AdminWalletView):
    """Staff: the organization's wallet and its latest ledger rows (`user_id` and
    `email` are its account's). Needs billing.view_wallet and billing.view_credittransaction."""


class AdminOrganizationGrantView(OrganizationInUrl, AdminGrantView):
    """Staff: grants credits to the organization's wallet, as admin/wallets/{user_id}/grant
    does to a person's (the same rules and Idempotency-Key). Needs billing.view_wallet
    and billing.grant_credits."""


urlpatterns = [
    path("orgs/<int:org_id>/wallet", OrganizationWalletView.as_view(), name="org-wallet"),
    path("orgs/<int:org_id>/transactions", OrganizationTransactionListView.as_view(), name="org-transactions"),
    path("orgs/<int:org_id>/wallet/top-up", OrganizationTopUpCreateView.as_view(), name="org-top-up"),
    path("orgs/<int:org_id>/top-ups", OrganizationTopUpListView.as_view(), name="org-top-ups"),
    path("orgs/<int:org_id>/auto-top-up", OrganizationAutoTopUpView.as_view(), name="org-auto-top-up"),
    path("orgs/<int:org_id>/auto-top-up/card", OrganizationCardSetupView.as_view(), name="org-auto-top-up-card"),
    path("admin/orgs/<int:org_id>/wallet", AdminOrganizationWalletView.as_view(), name="admin-org-wallet"),
    path("admin/orgs/<int:org_id>/grant", AdminOrganizationGrantView.as_view(), name="admin-org-grant"),
]
