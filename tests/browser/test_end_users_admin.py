"""A key's end users in headless Chromium at 1280 px: the key's page links to them,
their list fits the screen one line per row, and an end user's page sets a block.
Screenshots go to SCREENSHOT_DIR when it is set (checked by eye)."""

from decimal import Decimal

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from accounts.models import EndUser
from accounts.services import api_key_create, user_create
from billing.services import wallet_grant
from tests.browser.test_routing_admin import PASSWORD, shots, whole_page  # noqa: F401

pytestmark = pytest.mark.browser


def test_a_keys_end_users_in_the_console(live_server, browser, plain_http_cookies, transactional_db, shots):  # noqa: F811
    staff = user_create(email="staff@example.com", password=PASSWORD, is_staff=True, is_superuser=True)
    owner = user_create(email="team-lead-with-a-long-address@example-company.com")
    wallet_grant(user=owner, amount=Decimal("100"), reason="credits")
    api_key, _ = api_key_create(
        user=owner, name="open-webui", end_user_budget_credits=Decimal("5"), end_user_budget_window="day"
    )
    for n in range(12):
        EndUser.objects.create(
            api_key=api_key, external_id=f"3f9c2a1e-7b4d-4c8e-9a10-{n:012d}",
            budget_credits=Decimal("20") if n == 3 else None, blocked=n == 5,
        )  # fmt: skip
    browser.set_window_size(1280, 900)
    browser.get(f"{live_server.url}/admin/login/?next=/admin/accounts/apikey/{api_key.pk}/change/")
    browser.find_element(By.NAME, "username").send_keys(staff.email)
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "#login-form [type=submit]").click()
    link = WebDriverWait(browser, 20).until(EC.presence_of_element_located((By.PARTIAL_LINK_TEXT, "12 end users")))
    whole_page(browser, shots / "apikey-end-users.png", 1280)

    link.click()
    WebDriverWait(browser, 20).until(EC.presence_of_element_located((By.ID, "result_list")))
    whole_page(browser, shots / "end-users.png", 1280)
    browser.set_window_size(1280, 900)
    table = browser.find_element(By.ID, "result_list")
    rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert len(rows) == 12
    assert max(row.size["height"] for row in rows) <= 40
    fits = "const t = document.getElementById('result_list'); return t.scrollWidth <= t.parentElement.clientWidth"
    assert browser.execute_script(fits)

    browser.find_element(By.LINK_TEXT, "3f9c2a1e-7b4d-4c8e-9a10-000000000003").click()
    WebDriverWait(browser, 20).until(EC.presence_of_element_located((By.NAME, "blocked"))).click()
    browser.find_element(By.NAME, "_save").click()
    WebDriverWait(browser, 20).until(EC.presence_of_element_located((By.CSS_SELECTOR, ".messagelist .success")))
    assert EndUser.objects.get(external_id__endswith="000000000003").blocked
    whole_page(browser, shots / "end-users-after-block.png", 1280)


def test_the_usage_page_by_end_user_and_purpose(live_server, browser, plain_http_cookies, transactional_db, shots):  # noqa: F811
    from datetime import timedelta

    from django.utils import timezone

    from tests.billing.factories import ModelPriceFactory
    from tests.chat.factories import ChatSessionFactory
    from tests.reporting.factories import CallSpec, record_turn

    staff = user_create(email="staff@example.com", password=PASSWORD, is_staff=True, is_superuser=True)
    owner = user_create(email="owner@example.com")
    ModelPriceFactory(alias="fast", input_credits_per_mtok=Decimal("150"), output_credits_per_mtok=Decimal("600"))
    api_key, _ = api_key_create(user=owner, name="open-webui")
    people = [EndUser.objects.create(api_key=api_key, external_id=name) for name in ("ada@example.com", "bob")]
    session = ChatSessionFactory(user=owner)
    now = timezone.now() - timedelta(hours=1)
    for n, purpose in enumerate(["", "title", "tags", "follow_ups", "", ""]):
        record_turn(session=session, calls=[CallSpec("fast", now, 900 + 50 * n, 120)], end_user=people[n % 2],
                    purpose=purpose)  # fmt: skip
    record_turn(session=session, calls=[CallSpec("fast", now, 300, 40)])

    browser.set_window_size(1280, 900)
    browser.get(f"{live_server.url}/admin/login/?next=/admin/reporting/usage/")
    browser.find_element(By.NAME, "username").send_keys(staff.email)
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "#login-form [type=submit]").click()
    WebDriverWait(browser, 20).until(EC.presence_of_element_located((By.ID, "usage-by-end-user")))
    rows = browser.find_elements(By.CSS_SELECTOR, "#usage-by-end-user tbody tr")
    assert [row.text.split()[0] for row in rows] == ["none", "ada@example.com", "bob"]
    assert len(browser.find_elements(By.CSS_SELECTOR, "#usage-by-purpose tbody tr")) == 4
    whole_page(browser, shots / "usage-by-end-user.png", 1280)
