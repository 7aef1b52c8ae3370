from django.db.models import QuerySet

from accounts import _sql
from accounts.models import ApiKey, EndUser, User
from accounts.services import hash_api_key


def api_key_for_raw(*, raw_key: str) -> ApiKey | None:
    """The active key matching the raw value, with its user; None when unknown or revoked."""
    return _sql.api_key_for_hash(key_hash=hash_api_key(raw_key))


def api_keys_for_user(*, user: User) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(user=user)


def end_users_for_user(*, user: User, api_key_id: int | None = None) -> QuerySet[EndUser]:
    """The end users of the user's keys (with their key), by key then id."""
    end_users = EndUser.objects.filter(api_key__user=user).select_related("api_key")
    if api_key_id is not None:
        end_users = end_users.filter(api_key_id=api_key_id)
    return end_users.order_by("api_key_id", "id")
