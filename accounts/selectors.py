from django.db.models import QuerySet

from accounts import _sql
from accounts.models import ApiKey, User
from accounts.services import hash_api_key


def api_key_for_raw(*, raw_key: str) -> ApiKey | None:
    """The active key matching the raw value, with its user; None when unknown or revoked."""
    return _sql.api_key_for_hash(key_hash=hash_api_key(raw_key))


def api_keys_for_user(*, user: User) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(user=user)
