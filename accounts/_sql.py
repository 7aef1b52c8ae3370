"""Accounts' raw SQL, under chat/_sql.py's rule (a statement stays only on the turn
hot path and only where it saves at least 10% of the ORM path's CPU), with its
figure from bench/sql_chat.py. tests/accounts/test_sql.py checks it finds exactly
the key and user the ORM query finds."""

from accounts.models import ApiKey, User
from core import rawsql

# Every API request's authentication: 146 us raw vs 772 us ORM CPU (-81%). The ORM's
# select_related join as one plain statement (core.rawsql: the ORM's converters apply).
_API_KEY_FOR_HASH = (
    f"SELECT {rawsql.columns(ApiKey, 'k')}, {rawsql.columns(User, 'u')} FROM {ApiKey._meta.db_table} k "  # noqa: S608
    f"JOIN {User._meta.db_table} u ON u.id = k.user_id WHERE k.key_hash = %s AND k.revoked_at IS NULL AND u.is_active"
)


def api_key_for_hash(*, key_hash: str) -> ApiKey | None:
    """The unrevoked key with this hash and its active user (cached on `key.user`)."""
    rows = rawsql.fetch(_API_KEY_FOR_HASH, [key_hash], [ApiKey, User])
    if not rows:
        return None
    api_key, api_key.user = rows[0]
    return api_key
