"""The admin is Parley's staff console: its own title, Parley's sections in working
order, dj-stripe's models in one last section shown only when Stripe is on."""

import re

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from tests.conftest import make_user

STRIPE_TEST_KEY = "sk_test_" + "0" * 24  # Stripe on (never called here)

pytestmark = pytest.mark.django_db

PARLEY_SECTIONS = ["Users and API keys", "Wallets and ledger", "Model prices", "Upstreams and routing", "Chat", "Usage"]


def sections(settings, stripe: bool) -> tuple[list[str], str]:  # noqa: ANN001
    settings.STRIPE_SECRET_KEY = STRIPE_TEST_KEY if stripe else ""
    client = Client()
    client.force_login(make_user(f"boss{int(stripe)}@example.com", staff=True, is_superuser=True))
    html = client.get("/admin/").content.decode()
    return re.findall(r'<a href="[^"]*" class="section"[^>]*>([^<]+)</a>', html), html


def test_the_index_is_the_staff_console_without_dj_stripe_when_stripe_is_off(settings):
    names, html = sections(settings, stripe=False)
    assert names == PARLEY_SECTIONS
    assert "<title>Staff console | Parley staff console</title>" in html
    assert "Django administration" not in html
    assert "/admin/djstripe/" not in html
    assert 'id="console-shortcuts"' in html and 'href="/admin/reporting/usage/">Usage summary' in html


def test_dj_stripe_is_one_last_section_when_stripe_is_on(settings):
    names, html = sections(settings, stripe=True)
    assert names == [*PARLEY_SECTIONS, "Stripe (dj-stripe)"]
    assert html.count("/admin/djstripe/") > 30


def test_a_staff_member_sees_only_the_sections_they_may_open(settings):
    helpdesk = make_user("helpdesk@example.com", staff=True)
    helpdesk.user_permissions.add(Permission.objects.get(codename="view_usage"))
    client = Client()
    client.force_login(helpdesk)
    html = client.get("/admin/").content.decode()
    assert re.findall(r'class="section"[^>]*>([^<]+)</a>', html) == ["Usage"]
