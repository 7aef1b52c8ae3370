import pytest
from rest_framework.test import APIClient

from accounts.models import ApiKey, User
from accounts.services import api_key_create, api_key_revoke

pytestmark = pytest.mark.django_db


def test_admin_lists_users_and_api_keys(admin_browser, owner):
    api_key_create(user=owner, name="owner-laptop")
    users = admin_browser.get("/admin/accounts/user/")
    keys = admin_browser.get("/admin/accounts/apikey/")
    assert users.status_code == 200
    assert b"owner@example.com" in users.content
    assert keys.status_code == 200
    assert b"owner-laptop" in keys.content
    assert admin_browser.get("/admin/accounts/apikey/add/").status_code == 403


def test_admin_adds_a_user_with_a_wallet(admin_browser):
    response = admin_browser.post(
        "/admin/accounts/user/add/",
        {"email": "added@example.com", "password1": "a-long-passphrase-1", "password2": "a-long-passphrase-1"},
    )
    assert response.status_code == 302
    user = User.objects.get(email="added@example.com")
    assert user.check_password("a-long-passphrase-1")
    assert user.wallet.balance == 0


def test_a_revoked_key_cannot_be_revived_in_the_admin(admin_browser, owner):
    api_key, raw_key = api_key_create(user=owner, name="stolen-laptop")
    api_key = api_key_revoke(api_key=api_key)
    revoked_at = api_key.revoked_at

    page = admin_browser.get(f"/admin/accounts/apikey/{api_key.pk}/change/")
    assert page.status_code == 200
    assert b'name="revoked_at' not in page.content  # shown, not editable
    response = admin_browser.post(
        f"/admin/accounts/apikey/{api_key.pk}/change/",
        # (the form as a browser sends it: the scope checkboxes come with it)
        {"name": "stolen-laptop", "revoked_at_0": "", "revoked_at_1": "", "revoked_at": "", "scopes": ["chat", "openai"]},
    )

    assert response.status_code == 302
    api_key.refresh_from_db()
    assert api_key.revoked_at == revoked_at
    assert APIClient(HTTP_AUTHORIZATION=f"Bearer {raw_key}").get("/api/v1/users/me").status_code == 401


def test_keys_are_revoked_from_the_admin_list_through_the_service(admin_browser, owner):
    live, raw_key = api_key_create(user=owner, name="old-laptop")
    earlier, _ = api_key_create(user=owner, name="older-laptop")
    earlier = api_key_revoke(api_key=earlier)

    response = admin_browser.post(
        "/admin/accounts/apikey/", {"action": "revoke_keys", "_selected_action": [live.pk, earlier.pk]}
    )

    assert response.status_code == 302
    live.refresh_from_db()
    assert live.revoked_at is not None
    assert ApiKey.objects.get(pk=earlier.pk).revoked_at == earlier.revoked_at  # the first revocation stays
    assert APIClient(HTTP_AUTHORIZATION=f"Bearer {raw_key}").get("/api/v1/users/me").status_code == 401
