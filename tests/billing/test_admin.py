"""The Django admin through its real views (test client, logged-in staff)."""

import re
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing.models import CreditGrant, CreditTransaction, ModelPrice, Wallet
from billing.services import PRICE_FIELDS, TIER_FIELDS, model_price_create, wallet_debit, wallet_grant
from core.exceptions import StateConflict
from tests.conftest import make_user

pytestmark = pytest.mark.django_db

BILLING_PERMISSIONS = [
    "view_wallet",
    "grant_credits",
    "view_credittransaction",
    "view_modelprice",
    "add_modelprice",
    "change_modelprice",
]


@pytest.fixture
def billing_staff(db):  # noqa: ANN001, ANN201
    """A staff member (not a superuser) given the billing permissions."""
    user = make_user("billing-staff@example.com", staff=True, password="pw-billing-123")
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="billing", codename__in=BILLING_PERMISSIONS)
    )
    return user


@pytest.fixture
def admin_client(client, billing_staff):  # noqa: ANN001, ANN201
    client.force_login(billing_staff)
    return client


def wallet_url(wallet: Wallet, action: str = "change") -> str:
    return f"/admin/billing/wallet/{wallet.pk}/{action}/"


def token_from(html: str) -> str:
    return re.search(r'name="token" value="([0-9a-f-]{36})"', html).group(1)


def test_the_wallet_page_shows_read_only_balances_recent_rows_and_the_usage_link(admin_client, owner, billing_staff):
    wallet_grant(user=owner, amount=Decimal("4"), reason="welcome gift", actor=billing_staff)
    wallet_debit(user=owner, amount=Decimal("1.5"), reference="turn-77")
    response = admin_client.get(wallet_url(owner.wallet))
    assert response.status_code == 200
    html = response.content.decode()
    assert "2.50000000" in html and "welcome gift" in html and "turn-77" in html
    assert 'name="balance"' not in html and 'name="held"' not in html  # read-only, not inputs
    assert f'href="/admin/reporting/usage/?user_id={owner.id}"' in html
    assert ">View usage<" in html
    assert 'id="grant_form"' in html


def test_staff_grant_through_the_admin_records_the_actor_and_applies_once(admin_client, owner, billing_staff):
    token = token_from(admin_client.get(wallet_url(owner.wallet)).content.decode())
    form = {"amount": "25.5", "reason": "conference voucher", "token": token}

    response = admin_client.post(wallet_url(owner.wallet, "grant"), form)
    assert response.status_code == 302
    assert response["Location"] == wallet_url(owner.wallet)
    # The same rendered form submitted twice (double click, back button) grants once.
    assert admin_client.post(wallet_url(owner.wallet, "grant"), form).status_code == 302

    row = CreditTransaction.objects.get()
    assert (row.kind, row.amount, row.actor, row.reason) == (
        "grant",
        Decimal("25.50000000"),
        billing_staff,
        "conference voucher",
    )
    assert Wallet.objects.get(user=owner).balance == Decimal("25.5")
    page = admin_client.get(wallet_url(owner.wallet)).content.decode()
    assert "Granted 25.50000000 credits" in page


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"amount": "0", "reason": "r"}, "amount"),
        ({"amount": "-3", "reason": "r"}, "amount"),
        ({"amount": "abc", "reason": "r"}, "amount"),
        ({"amount": "1.123456789", "reason": "r"}, "amount"),
        ({"amount": "10000.01", "reason": "r"}, "amount"),
        ({"amount": "5", "reason": ""}, "reason"),
    ],
)
def test_a_bad_admin_grant_shows_the_error_on_its_field(admin_client, owner, settings, form, field):
    settings.ADMIN_GRANT_MAX = Decimal("10000")
    response = admin_client.post(
        wallet_url(owner.wallet, "grant"), {**form, "token": "7c9e6679-7425-40de-944b-e07fc1f90ae7"}
    )
    assert response.status_code == 200
    assert field in response.context["form"].errors
    assert not CreditTransaction.objects.exists()


def test_granting_needs_the_grant_permission(client, owner):
    viewer = make_user("viewer@example.com", staff=True)
    viewer.user_permissions.set(Permission.objects.filter(codename__in=["view_wallet", "view_credittransaction"]))
    client.force_login(viewer)
    page = client.get(wallet_url(owner.wallet))
    assert page.status_code == 200 and 'id="grant_form"' not in page.content.decode()
    response = client.post(wallet_url(owner.wallet, "grant"), {"amount": "5", "reason": "r", "token": token_from_any()})
    assert response.status_code == 403
    assert not CreditTransaction.objects.exists()


def token_from_any() -> str:
    return "0b7b3c3e-0c4a-4b9e-9d6f-6a9f0f0e7b11"


def test_a_non_staff_user_cannot_reach_the_grant_view(client, owner):
    client.force_login(make_user("plain@example.com", password="pw-plain-12345"))
    response = client.post(wallet_url(owner.wallet, "grant"), {"amount": "5", "reason": "r", "token": token_from_any()})
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert not CreditTransaction.objects.exists()


def test_wallets_cannot_be_added_edited_or_deleted_in_the_admin(admin_client, owner):
    assert admin_client.get("/admin/billing/wallet/add/").status_code == 403
    assert admin_client.get(wallet_url(owner.wallet, "delete")).status_code == 403
    response = admin_client.post(wallet_url(owner.wallet), {"balance": "1000000"})
    assert response.status_code == 403
    assert Wallet.objects.get(user=owner).balance == Decimal("0")


def test_the_ledger_admin_has_no_add_change_or_delete(client, owner):
    superuser = make_user("root@example.com", staff=True)
    superuser.is_superuser = True
    superuser.save()
    client.force_login(superuser)
    row = wallet_grant(user=owner, amount=Decimal("1"), reason="r")

    assert client.get("/admin/billing/credittransaction/add/").status_code == 403
    assert client.get(f"/admin/billing/credittransaction/{row.pk}/delete/").status_code == 403
    change = client.post(f"/admin/billing/credittransaction/{row.pk}/change/", {"amount": "999", "kind": "grant"})
    assert change.status_code == 403
    changelist = client.get("/admin/billing/credittransaction/")
    assert changelist.status_code == 200
    assert 'name="action"' not in changelist.content.decode()  # no bulk delete
    bulk = client.post(
        "/admin/billing/credittransaction/", {"action": "delete_selected", "_selected_action": [row.pk], "post": "yes"}
    )
    assert bulk.status_code in (200, 302)
    row.refresh_from_db()
    assert row.amount == Decimal("1") and CreditTransaction.objects.count() == 1


def test_a_price_change_in_the_admin_creates_a_new_row_and_keeps_the_old_price(admin_client):
    old = model_price_create(
        alias="smart", provider="local", provider_model="local-smart",
        input_credits_per_mtok=Decimal("3"), output_credits_per_mtok=Decimal("15"),
        context_tokens=32768, max_output_tokens=4096,
    )  # fmt: skip
    form = {
        "provider": "local",
        "provider_model": "local-smart",
        "input_credits_per_mtok": "3",
        "output_credits_per_mtok": "12.5",
        "context_tokens": "32768",
        "max_output_tokens": "4096",
        "counting": "bytes",
        "active": "on",
    }
    response = admin_client.post(f"/admin/billing/modelprice/{old.pk}/change/", form)
    assert response.status_code == 302

    old.refresh_from_db()
    new = ModelPrice.objects.get(alias="smart", active=True)
    assert new.pk != old.pk
    assert (old.active, old.output_credits_per_mtok) == (False, Decimal("15"))
    assert (new.input_credits_per_mtok, new.output_credits_per_mtok) == (Decimal("3"), Decimal("12.5"))
    # The old row is history: its page is view-only and a POST changes nothing.
    assert admin_client.post(f"/admin/billing/modelprice/{old.pk}/change/", form).status_code == 403
    assert ModelPrice.objects.count() == 2
    assert admin_client.get(f"/admin/billing/modelprice/{new.pk}/delete/").status_code == 403


def test_unticking_active_withdraws_the_alias_without_a_new_row(admin_client):
    price = model_price_create(
        alias="old", provider="local", provider_model="m",
        input_credits_per_mtok=Decimal("1"), output_credits_per_mtok=Decimal("1"),
    )  # fmt: skip
    form = {
        "provider": "local",
        "provider_model": "m",
        "input_credits_per_mtok": "1",
        "output_credits_per_mtok": "1",
        "context_tokens": "8192",
        "max_output_tokens": "1024",
        "counting": "bytes",
    }
    assert admin_client.post(f"/admin/billing/modelprice/{price.pk}/change/", form).status_code == 302
    assert list(ModelPrice.objects.values_list("pk", "active")) == [(price.pk, False)]


def test_a_new_price_is_added_through_the_admin(admin_client):
    form = {
        "alias": "tiny",
        "provider": "local",
        "provider_model": "local-tiny",
        "input_credits_per_mtok": "0.1",
        "output_credits_per_mtok": "0.2",
        "context_tokens": "2048",
        "max_output_tokens": "256",
        "counting": "bytes",
    }
    assert admin_client.post("/admin/billing/modelprice/add/", form).status_code == 302
    duplicate = admin_client.post("/admin/billing/modelprice/add/", form)
    assert duplicate.status_code == 200  # the form shows the error
    price = ModelPrice.objects.get()
    assert (price.alias, price.active, price.output_credits_per_mtok) == ("tiny", True, Decimal("0.2"))


PRICE_FORM = {
    "alias": "opus",
    "provider": "anthropic",
    "provider_model": "claude-opus",
    "input_credits_per_mtok": "1500",
    "output_credits_per_mtok": "7500",
    "cached_input_credits_per_mtok": "150",
    "cache_write_credits_per_mtok": "1875",
    "tier_threshold_tokens": "200000",
    "tier_input_credits_per_mtok": "3000",
    "tier_output_credits_per_mtok": "11250",
    "context_tokens": "1000000",
    "max_output_tokens": "32000",
    "counting": "o200k_base",
}


def fieldsets_of(response) -> list[tuple[str | None, list[str]]]:  # noqa: ANN001
    return [(fieldset.name, list(fieldset.fields)) for fieldset in response.context["adminform"]]


def test_the_price_form_groups_every_price_field_in_its_fieldset(admin_client):
    response = admin_client.get("/admin/billing/modelprice/add/")
    assert response.status_code == 200
    assert fieldsets_of(response) == [
        (None, ["alias", "kind", "provider", "provider_model", "active", "created_at"]),
        ("Prices", ["input_credits_per_mtok", "output_credits_per_mtok"]),
        ("Token classes", ["cached_input_credits_per_mtok", "cache_write_credits_per_mtok"]),
        ("Long-context tier", ["tier_threshold_tokens", "tier_input_credits_per_mtok", "tier_output_credits_per_mtok"]),
        ("Limits & counting", ["context_tokens", "max_output_tokens", "counting"]),
    ]
    # Every field the services take is on the form, so none is left at a default unseen.
    assert set(PRICE_FIELDS) <= set(response.context["adminform"].form.fields)
    html = response.content.decode()
    assert '<option value="o200k_base">o200k_base (GPT-4o, GPT-4.1, GPT-5, o-series)</option>' in html
    assert '<option value="bytes" selected>UTF-8 bytes</option>' in html
    assert '<option value="chat" selected>Chat</option>' in html


def test_an_embedding_price_keeps_its_kind_when_its_price_changes(admin_client):
    assert admin_client.post("/admin/billing/modelprice/add/", {**PRICE_FORM, "kind": "embedding"}).status_code == 302
    old = ModelPrice.objects.get(active=True)
    form = {**PRICE_FORM, "kind": "embedding", "input_credits_per_mtok": "0.2", "active": "on"}
    form.pop("alias")
    assert admin_client.post(f"/admin/billing/modelprice/{old.pk}/change/", form).status_code == 302
    new = ModelPrice.objects.get(active=True)
    assert (new.pk != old.pk, old.kind, new.kind) == (True, "embedding", "embedding")


def test_a_new_price_with_token_classes_a_tier_and_a_counting_rule_is_added(admin_client):
    assert admin_client.post("/admin/billing/modelprice/add/", PRICE_FORM).status_code == 302
    price = ModelPrice.objects.get()
    assert (price.alias, price.active, price.counting) == ("opus", True, "o200k_base")
    assert (price.cached_input_credits_per_mtok, price.cache_write_credits_per_mtok) == (
        Decimal("150"),
        Decimal("1875"),
    )
    assert (price.tier_threshold_tokens, price.tier_input_credits_per_mtok, price.tier_output_credits_per_mtok) == (
        200000, Decimal("3000"), Decimal("11250"),
    )  # fmt: skip


def test_empty_class_prices_and_no_tier_are_saved_as_empty(admin_client):
    form = {**PRICE_FORM, "cached_input_credits_per_mtok": "", "cache_write_credits_per_mtok": ""}
    form.update(dict.fromkeys(TIER_FIELDS, ""))
    assert admin_client.post("/admin/billing/modelprice/add/", form).status_code == 302
    price = ModelPrice.objects.get()
    assert price.cached_input_credits_per_mtok is None and price.cache_write_credits_per_mtok is None
    assert price.cached_input_price == price.cache_write_price == Decimal("1500")
    assert (price.tier_threshold_tokens, price.tier_input_credits_per_mtok, price.tier_output_credits_per_mtok) == (
        None, None, None,
    )  # fmt: skip


def test_changing_a_class_price_makes_a_new_row_through_the_service(admin_client):
    old = model_price_create(
        alias="opus", provider="anthropic", provider_model="claude-opus",
        input_credits_per_mtok=Decimal("1500"), output_credits_per_mtok=Decimal("7500"),
        context_tokens=1000000, max_output_tokens=32000,
    )  # fmt: skip
    form = {**PRICE_FORM, "active": "on"}
    del form["alias"]
    assert admin_client.post(f"/admin/billing/modelprice/{old.pk}/change/", form).status_code == 302
    old.refresh_from_db()
    new = ModelPrice.objects.get(alias="opus", active=True)
    assert new.pk != old.pk and not old.active
    assert (old.cached_input_credits_per_mtok, old.tier_threshold_tokens, old.counting) == (None, None, "bytes")
    assert (new.cached_input_credits_per_mtok, new.tier_threshold_tokens, new.counting) == (
        Decimal("150"), 200000, "o200k_base",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"tier_input_credits_per_mtok": ""}, "tier_input_credits_per_mtok", "A tier needs its threshold and both"),
        ({"tier_threshold_tokens": ""}, "tier_threshold_tokens", "A tier needs its threshold and both"),
        ({"tier_threshold_tokens": "0"}, "tier_threshold_tokens", "A positive number of tokens, or empty"),
        ({"cached_input_credits_per_mtok": "-1"}, "cached_input_credits_per_mtok", "A price must not be negative."),
        ({"cache_write_credits_per_mtok": "-0.5"}, "cache_write_credits_per_mtok", "A price must not be negative."),
        ({"tier_output_credits_per_mtok": "-2"}, "tier_output_credits_per_mtok", "A price must not be negative."),
        ({"counting": "words"}, "counting", "Select a valid choice."),
    ],
)
def test_a_refused_price_shows_the_refusal_on_its_field_and_saves_nothing(admin_client, changes, field, message):
    response = admin_client.post("/admin/billing/modelprice/add/", {**PRICE_FORM, **changes})
    assert response.status_code == 200
    form = response.context["adminform"].form
    assert list(form.errors) == [field]
    assert message in form.errors[field][0]
    assert f'id="id_{field}_error"' in response.content.decode()  # shown under the field
    assert ModelPrice.objects.count() == 0


def test_a_refusal_when_the_service_writes_shows_on_its_field_and_saves_nothing(admin_client, monkeypatch):
    """The form's checks passed, then the service refused as it wrote (another staff
    member priced the alias meanwhile): the same form comes back, the error on alias."""
    assert admin_client.post("/admin/billing/modelprice/add/", PRICE_FORM).status_code == 302
    monkeypatch.setattr("billing.admin.model_price_for_alias", lambda alias: None)  # the form's own check missed it
    response = admin_client.post("/admin/billing/modelprice/add/", {**PRICE_FORM, "provider_model": "claude-2"})
    assert response.status_code == 200
    form = response.context["adminform"].form
    assert form.errors == {"alias": ["'opus' already has an active price; change that one instead."]}
    assert form.data["provider_model"] == "claude-2"  # what staff typed is kept
    assert list(ModelPrice.objects.values_list("provider_model", flat=True)) == ["claude-opus"]


def test_a_refusal_without_a_field_is_shown_above_the_form(admin_client, monkeypatch):
    price = model_price_create(
        alias="opus", provider="anthropic", provider_model="claude-opus",
        input_credits_per_mtok=Decimal("1500"), output_credits_per_mtok=Decimal("7500"),
    )  # fmt: skip

    def deactivated_meanwhile(**kwargs) -> None:  # noqa: ANN003
        raise StateConflict("An inactive price is history and cannot be changed.")

    monkeypatch.setattr("billing.admin.model_price_change", deactivated_meanwhile)
    form = {**PRICE_FORM, "active": "on"}
    response = admin_client.post(f"/admin/billing/modelprice/{price.pk}/change/", form)
    assert response.status_code == 200
    assert response.context["adminform"].form.non_field_errors() == [
        "An inactive price is history and cannot be changed."
    ]
    assert list(ModelPrice.objects.values_list("pk", "active", "cached_input_credits_per_mtok")) == [
        (price.pk, True, None)
    ]


@pytest.mark.parametrize(
    "url", ["/admin/billing/wallet/", "/admin/billing/credittransaction/", "/admin/billing/credithold/"]
)
def test_admin_lists_do_not_query_per_row(client, url, grant_staff):
    superuser = make_user("lists@example.com", staff=True)
    superuser.is_superuser = True
    superuser.save()
    client.force_login(superuser)

    def queries_for_page() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(url).status_code == 200
        return len(captured)

    from billing.services import wallet_hold_place

    def add_users(count: int, start: int) -> None:
        for number in range(start, start + count):
            user = make_user(f"u{number}@example.com")
            wallet_grant(user=user, amount=Decimal("1"), reason="r", actor=grant_staff)
            wallet_hold_place(user=user, amount=Decimal("1"), reference=f"turn-{number}")

    add_users(2, 0)
    few = queries_for_page()
    add_users(8, 2)
    assert queries_for_page() == few


def test_the_wallet_page_lists_only_the_latest_rows_in_a_constant_number_of_queries(admin_client, owner, grant_staff):
    def queries_for_page() -> tuple[int, str]:
        with CaptureQueriesContext(connection) as captured:
            response = admin_client.get(wallet_url(owner.wallet))
        assert response.status_code == 200
        return len(captured), response.content.decode()

    for number in range(3):
        wallet_grant(user=owner, amount=Decimal("1"), reason=f"grant number {number}", actor=grant_staff)
    queries_for_page()  # Django caches content types per process: a process's first page asks once more
    few, _ = queries_for_page()
    for number in range(3, 25):
        wallet_grant(user=owner, amount=Decimal("1"), reason=f"grant number {number}", actor=grant_staff)
    many, html = queries_for_page()
    assert many == few
    assert "grant number 24" in html and "grant number 5" in html
    assert "grant number 4<" not in html and "grant number 0<" not in html  # older than the latest 20
    assert "25.00000000" in html


def test_an_empty_wallet_shows_available_as_a_plain_amount(console, owner):
    page = console.get(f"/admin/billing/wallet/{owner.wallet.pk}/change/").content.decode()
    assert "0.00000000" in page and "0E-8" not in page


def test_the_admin_grants_promotional_expiring_credits_and_the_wallet_page_lists_them(admin_client, owner):
    token = token_from(admin_client.get(wallet_url(owner.wallet)).content.decode())
    form = {
        "amount": "12",
        "reason": "launch promo",
        "promotional": "on",
        "expires_at": "2031-01-31 00:00",
        "token": token,
    }
    assert admin_client.post(wallet_url(owner.wallet, "grant"), form).status_code == 302
    lot = CreditGrant.objects.get()
    assert (lot.amount, lot.promotional, lot.expires_at.isoformat()) == (
        Decimal("12"),
        True,
        "2031-01-31T00:00:00+00:00",
    )
    html = admin_client.get(wallet_url(owner.wallet)).content.decode()
    assert "Promotional and expiring grants" in html and "Jan. 31, 2031" in html


def test_an_admin_grant_expiring_in_the_past_shows_the_error_on_expires_at(admin_client, owner):
    form = {"amount": "12", "reason": "late", "expires_at": "2020-01-31 00:00", "token": token_from_any()}
    response = admin_client.post(wallet_url(owner.wallet, "grant"), form)
    assert response.status_code == 200
    assert response.context["form"].errors["expires_at"] == ["Must be in the future."]
    assert not CreditTransaction.objects.exists()
