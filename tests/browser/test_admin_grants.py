"""A promotional, expiring grant made from the wallet page in a real browser, then
shown on that page with what expired (the screenshot is kept when SCREENSHOT_DIR is set)."""

import os
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.utils import timezone
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from accounts.services import user_create
from billing.models import CreditGrant, Wallet
from billing.services import grants_expire_due, wallet_debit, wallet_grant, wallet_topup

pytestmark = pytest.mark.browser


def test_staff_grant_promotional_expiring_credits_and_see_them_on_the_wallet(
    live_server, browser, plain_http_cookies, transactional_db, tmp_path
):
    staff = user_create(email="boss@example.com", password="console-pass-4821", is_staff=True, is_superuser=True)
    customer = user_create(email="customer@example.com")
    wallet = Wallet.objects.get(user=customer)
    wallet_topup(user=customer, amount=Decimal("20"), reference="pi_1")
    trial = wallet_grant(
        user=customer, amount=Decimal("5"), reason="trial", expires_at=timezone.now() + timedelta(days=1)
    )
    wallet_debit(user=customer, amount=Decimal("1.25"), reference="turn-1")
    grants_expire_due(now=timezone.now() + timedelta(days=2))  # what is left of the trial: 3.75

    browser.get(f"{live_server.url}/admin/login/?next=/admin/")
    browser.find_element(By.NAME, "username").send_keys(staff.email)
    browser.find_element(By.NAME, "password").send_keys("console-pass-4821")
    browser.find_element(By.CSS_SELECTOR, "#login-form [type=submit]").click()
    WebDriverWait(browser, 20).until(EC.presence_of_element_located((By.ID, "user-tools")))

    browser.get(f"{live_server.url}/admin/billing/wallet/{wallet.pk}/change/")
    form = WebDriverWait(browser, 20).until(EC.presence_of_element_located((By.CSS_SELECTOR, "form#grant_form")))
    form.find_element(By.NAME, "amount").send_keys("12.5")
    form.find_element(By.NAME, "reason").send_keys("Launch promotion")
    form.find_element(By.NAME, "promotional").click()
    form.find_element(By.NAME, "expires_at").send_keys("2031-01-31 00:00")
    form.find_element(By.CSS_SELECTOR, "[type=submit]").click()
    WebDriverWait(browser, 20).until(EC.presence_of_element_located((By.CSS_SELECTOR, ".messagelist .success")))

    lot = CreditGrant.objects.get(promotional=True)
    assert (lot.amount, lot.remaining, lot.expires_at.isoformat()) == (
        Decimal("12.5"),
        Decimal("12.5"),
        "2031-01-31T00:00:00+00:00",
    )
    page = browser.find_element(By.TAG_NAME, "body").text
    assert "PROMOTIONAL AND EXPIRING GRANTS" in page.upper()
    assert "Jan. 31, 2031" in page and f"Grant {trial.lot.pk}: 0.00000000 of 5.00000000 left" in page
    assert "expiry" in page and "-3.75000000" in page and f"Grant {trial.lot.pk} expired" in page
    shot = Path(os.environ.get("SCREENSHOT_DIR") or tmp_path) / "admin_wallet_grants.png"
    browser.set_window_size(1400, 2100)
    assert browser.save_screenshot(str(shot))
