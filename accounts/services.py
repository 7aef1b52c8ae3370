import hashlib
import secrets
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group, Permission
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import ApiKey, ApiKeyScope, EndUser, SpendWindow, User, all_scopes
from accounts.permissions import STAFF_GROUP, STAFF_GROUP_PERMISSIONS
from billing.services import wallet_create, wallet_grant
from core.exceptions import StateConflict, field_error

KEY_PREFIX = "prl_"
# last_used_at is written at most this often per key, to keep auth off the write path.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_api_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


@transaction.atomic
def user_create(*, email: str, password: str | None = None, **extra) -> User:
    email = User.objects.normalize_email(email).strip()
    if User.objects.filter(email__iexact=email).exists():
        raise field_error("email", "A user with this email already exists.")
    user = User(email=email, **extra)
    if password:
        user.set_password(password)
    else:
        user.set_unusable_password()
    try:
        with transaction.atomic():
            user.save()
    except IntegrityError:
        raise field_error("email", "A user with this email already exists.") from None
    wallet_create(user=user)
    return user


@transaction.atomic
def user_register(*, email: str, password: str, key_name: str) -> tuple[User, ApiKey, str]:
    """Self-service sign-up (POST auth/register, when ALLOW_REGISTRATION): the user, its
    wallet and a first API key, and SIGNUP_CREDITS granted through the ledger (a
    promotional `grant` row, reference signup:<user id>, expiring after
    SIGNUP_CREDITS_DAYS days unless 0). Nothing else: what an account can spend
    beyond what it was given is bounded by BILLING_OVERDRAFT_LIMIT (billing.services)."""
    user = user_create(email=email, password=password)
    if settings.SIGNUP_CREDITS > 0:
        days = settings.SIGNUP_CREDITS_DAYS
        wallet_grant(
            user=user,
            amount=settings.SIGNUP_CREDITS,
            reason="Signup credits",
            reference=f"signup:{user.pk}",
            promotional=True,
            expires_at=timezone.now() + timedelta(days=days) if days else None,
        )
    # The account's first key is its only credential on the API (there is no login
    # there): every scope, `keys` included, so it can make the narrower keys apps get.
    api_key, raw_key = api_key_create(user=user, name=key_name, scopes=all_scopes())
    return user, api_key, raw_key


def staff_group() -> Group:
    """The "Parley staff" group, holding every permission the staff API needs
    (accounts.permissions). Migration accounts 0002 makes it; this makes it again
    if someone deleted it, and adds a permission it lost."""
    group, _ = Group.objects.get_or_create(name=STAFF_GROUP)
    for name in STAFF_GROUP_PERMISSIONS:
        app_label, codename = name.split(".")
        group.permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return group


@transaction.atomic
def user_make_staff(*, user: User) -> Group:
    """Makes `user` staff and a member of the "Parley staff" group (what the staff API
    and the matching admin pages ask for); returns the group."""
    if not user.is_staff:
        user.is_staff = True
        user.save(update_fields=["is_staff"])
    group = staff_group()
    user.groups.add(group)
    return group


# The limits a key can carry (billing.limits, accounts.rate_limits), all optional.
API_KEY_LIMIT_FIELDS = (
    "budget_credits", "budget_window", "end_user_budget_credits", "end_user_budget_window", "rpm", "tpm",
    "expires_at", "scopes",
)  # fmt: skip
SPEND_CAP_FIELDS = ("spend_cap_credits", "spend_cap_window")


def limit_values_clean(values: dict[str, Any], *, allowed: tuple[str, ...]) -> dict[str, Any]:
    """The limit fields of a create or update, checked against the rules the API,
    the admin and scripts share (the serializers check types and ranges first)."""
    unknown = set(values) - set(allowed)
    if unknown:
        raise field_error(sorted(unknown)[0], "Not a limit field.")
    cleaned = dict(values)
    for name in ("budget_credits", "end_user_budget_credits", "spend_cap_credits"):
        if cleaned.get(name) is not None and cleaned[name] < 0:
            raise field_error(name, "A budget must not be negative.")
    for name in ("budget_window", "end_user_budget_window", "spend_cap_window"):
        if cleaned.get(name) is not None and cleaned[name] not in SpendWindow.values:
            raise field_error(name, f"One of: {', '.join(SpendWindow.values)}, or null for a lifetime budget.")
    for name in ("rpm", "tpm"):
        if cleaned.get(name) is not None and cleaned[name] < 1:
            raise field_error(name, "Must be at least 1, or null for no limit.")
    if cleaned.get("expires_at") is not None and cleaned["expires_at"] <= timezone.now():
        raise field_error("expires_at", "Must be in the future.")
    if "scopes" in cleaned:
        scopes = cleaned["scopes"]
        if not scopes or any(scope not in ApiKeyScope.values for scope in scopes):
            raise field_error("scopes", f"A non-empty list of: {', '.join(ApiKeyScope.values)}.")
        cleaned["scopes"] = [scope for scope in ApiKeyScope.values if scope in scopes]  # ordered, no repeats
    return cleaned


def api_key_create(*, user: User, name: str, membership=None, **limits: Any) -> tuple[ApiKey, str]:  # noqa: ANN001, ANN401
    """Returns the key row and the raw key; the raw key is not stored anywhere.
    `limits`: any of API_KEY_LIMIT_FIELDS; without `scopes` the key gets chat and
    openai (accounts.models.default_scopes), not `keys`. An organization's key has
    `user` its account and `membership` the member who made it
    (organizations.services.organization_api_key_create)."""
    values = limit_values_clean(limits, allowed=API_KEY_LIMIT_FIELDS)
    raw_key = KEY_PREFIX + secrets.token_urlsafe(32)
    api_key = ApiKey.objects.create(
        user=user, membership=membership, name=name, prefix=raw_key[:12], key_hash=hash_api_key(raw_key), **values
    )
    return api_key, raw_key


def api_key_limits_set(*, api_key: ApiKey, **changes: Any) -> ApiKey:  # noqa: ANN401
    """Changes a key's limits (PATCH users/me/keys/{id}); fields left out stay as they
    are, null clears one. A new budget applies from the next request; what the
    current window spent and holds still counts. A revoked key cannot change."""
    values = limit_values_clean(changes, allowed=API_KEY_LIMIT_FIELDS)
    if api_key.revoked_at is not None:
        raise StateConflict("This API key is revoked; its limits can no longer change.")
    if values:
        ApiKey.objects.filter(pk=api_key.pk).update(**values)
        for name, value in values.items():
            setattr(api_key, name, value)
    return api_key


def user_spend_cap_set(*, user: User, **changes: Any) -> User:  # noqa: ANN401
    """Sets the account's spending cap (PATCH users/me/limits): `spend_cap_credits`
    (null: no cap) per `spend_cap_window` (null: lifetime)."""
    values = limit_values_clean(changes, allowed=SPEND_CAP_FIELDS)
    if values:
        User.objects.filter(pk=user.pk).update(**values)
        for name, value in values.items():
            setattr(user, name, value)
    return user


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    # Compare-and-set: revoking twice keeps the first revocation time.
    ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    api_key.refresh_from_db(fields=["revoked_at"])
    return api_key


def api_key_touch(*, api_key: ApiKey) -> None:
    now = timezone.now()
    if api_key.last_used_at is None or now - api_key.last_used_at > LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        api_key.last_used_at = now


# --- end users -------------------------------------------------------------------------

END_USER_ID_MAX = 256
END_USER_FIELDS = ("budget_credits", "budget_window", "blocked")


def end_user_named(*, api_key: ApiKey | None, external_id: str, field: str) -> EndUser | None:
    """The key's end user the request names (made on first use), or None when it names
    none or comes without a key (a console session speaks for itself). `field` is what
    a too-long id is reported as (`user`, or the header's name)."""
    if api_key is None or not external_id:
        return None
    if len(external_id) > END_USER_ID_MAX:
        raise field_error(field, f"An end user's id has at most {END_USER_ID_MAX} characters.")
    found = EndUser.objects.filter(api_key=api_key, external_id=external_id).first()
    if found is not None:
        return found
    try:
        with transaction.atomic():
            return EndUser.objects.create(api_key=api_key, external_id=external_id)
    except IntegrityError:  # a concurrent first request made it
        return EndUser.objects.get(api_key=api_key, external_id=external_id)


def end_user_override_set(*, end_user: EndUser, **changes: Any) -> EndUser:  # noqa: ANN401
    """Overrides one end user's budget (PUT users/me/end-users/{id}): `budget_credits`
    (null: the key's end-user budget applies again) per `budget_window` (null:
    lifetime), and `blocked` (every request for them refused)."""
    unknown = set(changes) - set(END_USER_FIELDS)
    if unknown:
        raise field_error(sorted(unknown)[0], "Not an end-user field.")
    if changes.get("budget_credits") is not None and changes["budget_credits"] < 0:
        raise field_error("budget_credits", "A budget must not be negative.")
    if changes.get("budget_window") is not None and changes["budget_window"] not in SpendWindow.values:
        raise field_error("budget_window", f"One of: {', '.join(SpendWindow.values)}, or null for a lifetime budget.")
    budget = changes.get("budget_credits", end_user.budget_credits)
    if changes.get("budget_window") is not None and budget is None:
        raise field_error("budget_window", "A window needs a budget_credits of their own (else the key's applies).")
    if changes:
        EndUser.objects.filter(pk=end_user.pk).update(**changes)
        for name, value in changes.items():
            setattr(end_user, name, value)
    return end_user


def end_user_override_clear(*, end_user: EndUser) -> EndUser:
    """DELETE users/me/end-users/{id}: the override goes (the key's end-user budget
    applies again) and a block is lifted; what they spent still counts."""
    return end_user_override_set(end_user=end_user, budget_credits=None, budget_window=None, blocked=False)
