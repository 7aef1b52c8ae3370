import pytest
from django.test import Client

from accounts.models import User
from accounts.services import api_key_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_browser(staff_user) -> Client:
    staff_user.is_superuser = True
    staff_user.save(update_fields=["is_superuser"])
    client = Client()
    client.force_login(staff_user)
    return client


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
