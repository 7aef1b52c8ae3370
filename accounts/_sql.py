"""Accounts' raw SQL, under chat/_sql.py's rule (a statement stays only on the turn
hot path and only where it saves at least 10% of the ORM path's CPU), with its
figure from bench/sql_chat.py. tests/accounts/test_sql.py checks it finds exactly
the key and user the ORM query finds."""

from accounts.models import ApiKey, User

# Every API request's authentication: 732 us raw vs 1631 us ORM CPU (-55%). Two
# indexed reads through Model.raw (the database's converters still apply) instead of
# the ORM's select_related join.
_API_KEY_FOR_HASH = f"SELECT * FROM {ApiKey._meta.db_table} WHERE key_hash = %s AND revoked_at IS NULL"  # noqa: S608
_ACTIVE_USER = f"SELECT * FROM {User._meta.db_table} WHERE id = %s AND is_active"  # noqa: S608


def api_key_for_hash(*, key_hash: str) -> ApiKey | None:
    """The unrevoked key with this hash and its active user (cached on `key.user`)."""
    api_key = next(iter(ApiKey.objects.raw(_API_KEY_FOR_HASH, [key_hash])), None)
    if api_key is None:
        return None
    user = next(iter(User.objects.raw(_ACTIVE_USER, [api_key.user_id])), None)
    if user is None:
        return None
    api_key.user = user
    return api_key
