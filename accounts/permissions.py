"""Who may use the staff API: staff members holding the same Django permissions as
the staff console pages that show the same data (is_staff alone reads nothing).

| endpoint | permissions (all of them) | the admin page |
| --- | --- | --- |
| GET admin/wallets/{user_id} | billing.view_wallet, billing.view_credittransaction | a wallet with its ledger rows |
| POST admin/wallets/{user_id}/grant | billing.view_wallet, billing.grant_credits | the grant form |
| GET admin/usage/summary | reporting.view_usage | Usage summary |

The "Parley staff" group (migration accounts 0002, `issue_api_key --staff`) holds
STAFF_GROUP_PERMISSIONS, every one of them.

KeysScope: what an API key may do to what keys may spend needs the key's `keys`
scope (the views list the methods in `keys_scope_methods`):

| endpoint | guarded |
| --- | --- |
| POST auth/keys | making a key |
| PATCH users/me/keys/{id} | a key's limits and scopes |
| PATCH users/me/limits | the account's spending cap |
| PUT, DELETE users/me/end-users/{id} | an end user's own budget or block |
| POST users/me/auto-top-up/card | saving a card |
| PUT users/me/auto-top-up | turning auto top-up on (or changing it) |

| POST orgs/{id}/keys, PATCH orgs/{id}/keys/{id} | an organization's key, its limits |
| PATCH orgs/{id}/members/{id} with a budget | a member's budget |
| PATCH orgs/{id}/limits | the organization's spending cap |

Reading, revoking a key and turning auto top-up off lower what can be spent and stay
open to any key.

OrganizationKeyRole: an organization's key (made by a member) on the personal
endpoints may do only what its member may: changing a key's limits, the cap or an end
user's budget needs an owner's or admin's key (403 naming the role), and a member's
key sees and revokes only the keys that member made (accounts.api)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rest_framework.exceptions import PermissionDenied
from rest_framework.permissions import BasePermission

from accounts.models import ApiKey, ApiKeyScope
from organizations.models import MANAGERS, Membership
from organizations.permissions import RoleRequired
from organizations.selectors import api_key_membership

if TYPE_CHECKING:  # rest_framework.views loads the authentication classes, which import accounts.services
    from rest_framework.request import Request
    from rest_framework.views import APIView

STAFF_GROUP = "Parley staff"
WALLET_VIEW = ("billing.view_wallet", "billing.view_credittransaction")
WALLET_GRANT = ("billing.view_wallet", "billing.grant_credits")
USAGE_VIEW = ("reporting.view_usage",)
STAFF_GROUP_PERMISSIONS = tuple(sorted({*WALLET_VIEW, *WALLET_GRANT, *USAGE_VIEW}))


class StaffPermissions(BasePermission):
    """An active staff member holding every permission in the view's
    `staff_permissions`; the 403 names the ones missing."""

    message = "Staff only."

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        if not (user and user.is_authenticated and user.is_active and user.is_staff):
            return False
        missing = [name for name in view.staff_permissions if not user.has_perm(name)]
        if missing:
            self.message = (
                f"This needs the permission{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                f"(the '{STAFF_GROUP}' group holds them)."
            )
        return not missing


def keys_scope_refusal(request: Request) -> str | None:
    """Why the request's API key may not raise what keys may spend (None: it may).
    Only API keys carry scopes: a request authenticated otherwise (a logged-in user,
    a test's force_authenticate) is not refused here."""
    api_key = request.auth
    if not isinstance(api_key, ApiKey) or ApiKeyScope.KEYS in api_key.scopes:
        return None
    return (
        f"API key '{api_key.name}' lacks the 'keys' scope (making keys, changing a key's limits or scopes, "
        f"the account's spending cap, an end user's or a member's budget, saving a card, auto top-up); its scopes: "
        f"{', '.join(api_key.scopes)}."
    )


def keys_scope_require(request: Request) -> None:
    """The `keys` scope for one part of a request (a member's budget in a PATCH that
    may also change only a role): 403 naming it."""
    refusal = keys_scope_refusal(request)
    if refusal:
        raise PermissionDenied(refusal)


class KeysScope(BasePermission):
    """The `keys` scope for the view's `keys_scope_methods`. Goes after
    IsAuthenticated, so a missing key stays 401."""

    message = "This API key lacks the 'keys' scope."

    def has_permission(self, request: Request, view: APIView) -> bool:
        if request.method not in getattr(view, "keys_scope_methods", ()):
            return True
        refusal = keys_scope_refusal(request)
        if refusal:
            self.message = refusal
        return not refusal


def key_member(request: Request) -> Membership | None:
    """The organization member behind the request's key when it is an organization's
    key (None for a person's key)."""
    api_key = request.auth
    return api_key_membership(api_key=api_key) if isinstance(api_key, ApiKey) else None


class OrganizationKeyRole(BasePermission):
    """An organization's key on the personal endpoints (users/me/...) may do only what
    its member may: the view's `manager_methods` (changing a key's limits, the cap, an
    end user's budget) need the member to be an owner or admin (403 naming the role).
    A person's key is not concerned."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        if request.method not in getattr(view, "manager_methods", ()):
            return True
        member = key_member(request)
        if member is not None and not member.manages:
            raise RoleRequired(organization=member.organization, needed=MANAGERS, role=member.role)
        return True
