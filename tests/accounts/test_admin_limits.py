"""The limits in the Django admin: a key's budget, window, rates, expiry and scopes,
and the account's spending cap, with the same rules as the API."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts.models import ApiKey
from accounts.services import api_key_create
from billing.limits import spend_limits_for
from billing.services import wallet_debit, wallet_grant, wallet_hold_place

pytestmark = pytest.mark.django_db


def key_form(**changes) -> dict:  # noqa: ANN003
    form = {
        "name": "ci", "budget_credits": "", "budget_window": "", "rpm": "", "tpm": "",
        "expires_at_0": "", "expires_at_1": "", "scopes": ["chat", "openai"],
    }  # fmt: skip
    form.update(changes)
    return form


def test_a_keys_limits_are_set_in_the_admin(admin_browser, owner):
    key, _ = api_key_create(user=owner, name="ci")
    expires = timezone.now() + timedelta(days=3)
    response = admin_browser.post(
        f"/admin/accounts/apikey/{key.pk}/change/",
        key_form(
            budget_credits="12.5", budget_window="week", rpm="30", tpm="50000", scopes=["openai"],
            expires_at_0=expires.strftime("%Y-%m-%d"), expires_at_1="12:00:00",
        ),  # fmt: skip
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    key.refresh_from_db()
    assert (key.budget_credits, key.budget_window, key.rpm, key.tpm, key.scopes) == (
        Decimal("12.5"), "week", 30, 50000, ["openai"],
    )  # fmt: skip
    assert key.expires_at.date() == expires.date()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"budget_credits": "-1"}, "budget_credits"),
        ({"budget_window": "year"}, "budget_window"),
        ({"rpm": "0"}, "rpm"),
        ({"scopes": []}, "scopes"),
        ({"scopes": ["admin"]}, "scopes"),
        ({"expires_at_0": "2020-01-01", "expires_at_1": "00:00:00"}, "expires_at"),
    ],
)
def test_bad_limits_are_refused_on_their_field_in_the_admin(admin_browser, owner, changes, field):
    key, _ = api_key_create(user=owner, name="ci")
    response = admin_browser.post(f"/admin/accounts/apikey/{key.pk}/change/", key_form(**changes))
    assert response.status_code == 200  # the form again, with the error
    assert field in response.context["adminform"].form.errors
    key.refresh_from_db()
    assert (key.budget_credits, key.rpm, key.scopes, key.expires_at) == (None, None, ["chat", "openai"], None)


def test_the_key_page_shows_what_the_window_spent(admin_browser, owner):
    wallet_grant(user=owner, amount=Decimal("10"), reason="test")
    key, _ = api_key_create(user=owner, name="ci", budget_credits=Decimal("5"), budget_window="day")
    wallet_hold_place(user=owner, amount=Decimal("2"), reference="t1",
                      spend_limits=spend_limits_for(user=owner, api_key=key))  # fmt: skip
    wallet_debit(user=owner, amount=Decimal("1.25"), reference="t1", release_hold="t1")
    page = admin_browser.get(f"/admin/accounts/apikey/{key.pk}/change/").content.decode()
    assert "1.25000000 spent, 0.00000000 held (resets at " in page
    listing = admin_browser.get("/admin/accounts/apikey/").content.decode()
    assert "5 / day" in listing


def test_the_account_cap_is_set_in_the_admin(admin_browser, owner):
    page = admin_browser.get(f"/admin/accounts/user/{owner.pk}/change/")
    form = page.context["adminform"].form
    data = {name: value for name, value in form.initial.items() if value is not None and name != "password"}
    data.update(
        {
            "email": owner.email, "date_joined_0": owner.date_joined.strftime("%Y-%m-%d"),
            "date_joined_1": owner.date_joined.strftime("%H:%M:%S"), "spend_cap_credits": "40",
            "spend_cap_window": "month", "groups": [], "user_permissions": [],
        }
    )  # fmt: skip
    data.pop("date_joined", None)
    data.pop("last_login", None)
    response = admin_browser.post(f"/admin/accounts/user/{owner.pk}/change/", data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    owner.refresh_from_db()
    assert (owner.spend_cap_credits, owner.spend_cap_window) == (Decimal("40"), "month")

    data["spend_cap_credits"] = "-3"
    refused = admin_browser.post(f"/admin/accounts/user/{owner.pk}/change/", data)
    assert refused.status_code == 200
    assert "spend_cap_credits" in refused.context["adminform"].form.errors
    assert ApiKey.objects.count() == 0
    owner.refresh_from_db()
    assert owner.spend_cap_credits == Decimal("40")
