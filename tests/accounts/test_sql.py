"""accounts/_sql.py finds exactly the key and user the ORM query it replaces finds
(bench/sql_chat.py times the two)."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts import _sql
from accounts.models import ApiKey
from accounts.services import api_key_create, api_key_revoke, hash_api_key

pytestmark = pytest.mark.django_db


def _orm(raw_key: str) -> ApiKey | None:
    return (
        ApiKey.objects.select_related("user")
        .filter(key_hash=hash_api_key(raw_key), revoked_at__isnull=True, user__is_active=True)
        .first()
    )


def _fields(api_key: ApiKey | None) -> tuple | None:
    if api_key is None:
        return None
    return tuple(getattr(api_key, f.attname) for f in ApiKey._meta.concrete_fields) + tuple(
        getattr(api_key.user, f.attname) for f in type(api_key.user)._meta.concrete_fields
    )


def test_api_key_for_hash_reads_what_the_orm_reads(owner, other_user):
    owner.spend_cap_credits, owner.spend_cap_window = Decimal("12.50000000"), "day"
    owner.save()
    limited, limited_raw = api_key_create(
        user=owner, name="limited", budget_credits=Decimal("1.25"), budget_window="week", rpm=5,
        expires_at=timezone.now() + timedelta(days=3), scopes=["openai"],
    )  # fmt: skip
    _, plain_raw = api_key_create(user=owner, name="plain")
    revoked, revoked_raw = api_key_create(user=owner, name="revoked")
    api_key_revoke(api_key=revoked)
    _, inactive_raw = api_key_create(user=other_user, name="inactive owner")
    other_user.is_active = False
    other_user.save()

    for raw_key in (limited_raw, plain_raw, revoked_raw, inactive_raw, "pk_not_a_key"):
        found = _sql.api_key_for_hash(key_hash=hash_api_key(raw_key))
        assert _fields(found) == _fields(_orm(raw_key)), raw_key
    found = _sql.api_key_for_hash(key_hash=hash_api_key(limited_raw))
    assert found.pk == limited.pk and found.user == owner and found.scopes == ["openai"]
    assert _sql.api_key_for_hash(key_hash=hash_api_key(revoked_raw)) is None
    assert _sql.api_key_for_hash(key_hash=hash_api_key(inactive_raw)) is None
