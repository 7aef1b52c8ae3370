"""`manage.py seed_demo` (run by every `bin/serve`) keeps one working demo key: the
earlier ones are revoked, and it says so. (Here rather than in tests/accounts while
that app's layout is being reworked.)"""

from io import StringIO

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from accounts.models import ApiKey
from accounts.services import api_key_create

pytestmark = pytest.mark.django_db


def seed() -> str:
    out = StringIO()
    call_command("seed_demo", stdout=out)
    return out.getvalue()


def works(raw_key: str) -> bool:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client.get("/api/v1/users/me").status_code == 200


def test_running_seed_demo_again_revokes_the_earlier_demo_key_and_names_it():
    first = seed()
    first_key = first.split("API key:")[1].split()[0]
    assert "Revoked" not in first
    second = seed()
    second_key = second.split("API key:")[1].split()[0]
    assert f"Revoked:   the earlier demo key ({first_key[:12]}...)" in second
    assert not works(first_key) and works(second_key)
    assert ApiKey.objects.filter(user__email="demo@parley.local", revoked_at__isnull=True).count() == 1


def test_a_key_the_demo_user_made_elsewhere_is_left_alone():
    seed()
    own = ApiKey.objects.get(name="demo").user
    _, raw_key = api_key_create(user=own, name="my laptop")
    seed()
    assert works(raw_key)
