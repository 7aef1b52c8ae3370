"""A key's end users in the staff console: the key's end-user budget on its page with
a link to its end users; their list with each one's budget and spend; an override or
a block set on an end user's page, through the same service as the API."""

from decimal import Decimal

import pytest

from accounts.models import EndUser
from accounts.services import api_key_create
from billing.limits import spend_limits_for
from billing.services import wallet_debit, wallet_grant, wallet_hold_place

pytestmark = pytest.mark.django_db


def spend(owner, api_key, end_user, amount: str, reference: str) -> None:  # noqa: ANN001
    """A settled request of `end_user`, as a turn settles it."""
    limits = spend_limits_for(user=owner, api_key=api_key, end_user=end_user)
    wallet_hold_place(user=owner, amount=Decimal(amount), reference=reference, spend_limits=limits)
    wallet_debit(user=owner, amount=Decimal(amount), reference=reference, release_hold=reference)


def test_a_keys_end_users_are_listed_with_their_budget_and_spend(admin_browser, owner):
    wallet_grant(user=owner, amount=Decimal("100"), reason="credits")
    api_key, _ = api_key_create(user=owner, name="webui", end_user_budget_credits=Decimal("5"),
                                end_user_budget_window="day")  # fmt: skip
    other_key, _ = api_key_create(user=owner, name="other")
    ada = EndUser.objects.create(api_key=api_key, external_id="ada@example.com")
    EndUser.objects.create(api_key=api_key, external_id="bob", budget_credits=Decimal("2.5"))
    EndUser.objects.create(api_key=other_key, external_id="carol")
    spend(owner, api_key, ada, "1.25", "t1")

    page = admin_browser.get(f"/admin/accounts/apikey/{api_key.pk}/change/").content.decode()
    assert "End users" in page and f"?api_key__id__exact={api_key.pk}" in page and "2 end users" in page

    listed = admin_browser.get(f"/admin/accounts/enduser/?api_key__id__exact={api_key.pk}")
    assert listed.status_code == 200
    text = listed.content.decode()
    assert "ada@example.com" in text and "bob" in text and "carol" not in text
    assert "5 / day" in text and "2.5 / lifetime (own)" in text and "1.25000000" in text


def test_an_end_user_is_overridden_and_blocked_in_the_console(admin_browser, owner):
    api_key, _ = api_key_create(user=owner, name="webui", end_user_budget_credits=Decimal("5"))
    ada = EndUser.objects.create(api_key=api_key, external_id="ada")
    url = f"/admin/accounts/enduser/{ada.pk}/change/"
    assert admin_browser.get(url).status_code == 200

    saved = admin_browser.post(url, {"budget_credits": "7.5", "budget_window": "week", "blocked": "on"})
    assert saved.status_code == 302, saved.content.decode()[:2000]
    ada.refresh_from_db()
    assert (ada.budget_credits, ada.budget_window, ada.blocked) == (Decimal("7.5"), "week", True)

    refused = admin_browser.post(url, {"budget_credits": "-1", "budget_window": ""})
    assert refused.status_code == 200 and "greater than or equal to 0" in refused.content.decode()
    ada.refresh_from_db()
    assert ada.budget_credits == Decimal("7.5")
    window_only = admin_browser.post(url, {"budget_credits": "", "budget_window": "day"})
    assert window_only.status_code == 200 and "A window needs a budget of their own" in window_only.content.decode()
    assert admin_browser.get("/admin/accounts/enduser/add/").status_code == 403
    assert admin_browser.get(f"/admin/accounts/enduser/{ada.pk}/delete/").status_code == 403
