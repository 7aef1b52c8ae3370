"""`manage.py seed_demo` (run by every `bin/serve`) keeps one working demo key: with
`--key-file` (bin/serve's) the same key across restarts; without it the earlier ones
are revoked, and it says so. (Here rather than in tests/accounts while
that app's layout is being reworked.)"""

from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.utils import timezone
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


# --- bin/serve: the demo key kept across restarts (--key-file) ---------------------------


def seed_keeping(key_file) -> str:  # noqa: ANN001
    out = StringIO()
    call_command("seed_demo", key_file=key_file, stdout=out)
    return out.getvalue()


def printed_key(output: str) -> str:
    return output.split("API key:")[1].split()[0]


def test_bin_serve_keeps_the_demo_key_in_a_private_git_ignored_file():
    root = Path(__file__).resolve().parents[2]
    assert '"$PY" manage.py seed_demo --key-file .parley/demo-key' in (root / "bin" / "serve").read_text()
    assert ".parley/" in (root / ".gitignore").read_text().splitlines()


def test_a_restart_prints_the_same_demo_key_and_it_still_works(tmp_path):
    key_file = tmp_path / ".parley" / "demo-key"
    first = seed_keeping(key_file)
    first_key = printed_key(first)
    assert f"(new; kept in {key_file} for the next run)" in first
    assert key_file.read_text().strip() == first_key
    assert key_file.stat().st_mode & 0o777 == 0o600

    second = seed_keeping(key_file)
    assert printed_key(second) == first_key
    assert f"(the same as last time, kept in {key_file})" in second
    assert "Revoked" not in second
    assert works(first_key)
    assert ApiKey.objects.filter(user__email="demo@parley.local", revoked_at__isnull=True).count() == 1


def test_a_kept_key_that_was_revoked_is_replaced_and_the_line_says_so(tmp_path):
    key_file = tmp_path / "demo-key"
    first_key = printed_key(seed_keeping(key_file))
    ApiKey.objects.filter(name="demo").update(revoked_at=timezone.now())  # revoked in the console, say
    second = seed_keeping(key_file)
    second_key = printed_key(second)
    assert second_key != first_key and works(second_key) and not works(first_key)
    assert f"API key:   {second_key} (new; the key {key_file} held no longer works; kept in {key_file}" in second
    assert key_file.read_text().strip() == second_key


def test_without_the_key_file_a_new_key_replaces_the_kept_one_and_the_key_line_says_it_is_revoked(tmp_path):
    first_key = printed_key(seed_keeping(tmp_path / "demo-key"))
    second = seed()
    second_key = printed_key(second)
    assert f"API key:   {second_key} (new; the earlier demo key ({first_key[:12]}...) is revoked)" in second
    assert not works(first_key)
