"""The staff usage page breaks totals down by end user and by purpose, and filters by
either; the CSV follows the filters."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from accounts.models import EndUser
from accounts.services import api_key_create
from tests.billing.factories import ModelPriceFactory
from tests.chat.factories import ChatSessionFactory
from tests.reporting.factories import CallSpec, record_turn

pytestmark = pytest.mark.django_db

PAGE = "/admin/reporting/usage/"


def test_the_page_breaks_down_and_filters_by_end_user_and_purpose(admin_browser, owner):
    ModelPriceFactory(alias="fast", input_credits_per_mtok=Decimal("150"), output_credits_per_mtok=Decimal("600"))
    key, _ = api_key_create(user=owner, name="open-webui")
    ada = EndUser.objects.create(api_key=key, external_id="ada@example.com")
    session = ChatSessionFactory(user=owner)
    when = datetime(2025, 1, 2, 12, tzinfo=UTC)
    record_turn(session=session, calls=[CallSpec("fast", when, 1000, 100)], end_user=ada)
    record_turn(session=session, calls=[CallSpec("fast", when, 100, 10)], end_user=ada, purpose="title")
    record_turn(session=session, calls=[CallSpec("fast", when, 10, 1)])

    page = admin_browser.get(PAGE).content.decode()
    assert 'id="usage-by-end-user"' in page and 'id="usage-by-purpose"' in page
    assert f'?end_user={ada.pk}">ada@example.com</a> <span class="quiet">(open-webui)</span>' in page
    assert "none named" in page and "unlabelled" in page and '?purpose=title">title</a>' in page

    only_ada = admin_browser.get(f"{PAGE}?end_user={ada.pk}").content.decode()
    assert '<span id="usage-end-user">ada@example.com</span>' in only_ada
    titles = admin_browser.get(f"{PAGE}?purpose=title&format=csv").content.decode()
    assert titles.splitlines()[1].startswith("total,,,1,100,")

    bad = admin_browser.get(f"{PAGE}?purpose=not+a+label").content.decode()
    assert "1-32 letters" in bad and 'id="usage-by-end-user"' not in bad
