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

Reading, revoking a key and turning auto top-up off lower what can be spent and stay
open to any key."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rest_framework.permissions import BasePermission

from accounts.models import ApiKey, ApiKeyScope

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


class KeysScope(BasePermission):
    """The `keys` scope for the view's `keys_scope_methods`. Only API keys carry
    scopes: a request authenticated otherwise (a logged-in user, a test's
    force_authenticate) is not refused here. Goes after IsAuthenticated, so a
    missing key stays 401."""

    message = "This API key lacks the 'keys' scope."

    def has_permission(self, request: Request, view: APIView) -> bool:
        if request.method not in getattr(view, "keys_scope_methods", ()):
            return True
        api_key = request.auth
        if not isinstance(api_key, ApiKey) or ApiKeyScope.KEYS in api_key.scopes:
            return True
        self.message = (
            f"API key '{api_key.name}' lacks the 'keys' scope (making keys, changing a key's limits or scopes, "
            f"the account's spending cap, an end user's budget or block, saving a card, auto top-up); its scopes: {', '.join(api_key.scopes)}."
        )
        return False
