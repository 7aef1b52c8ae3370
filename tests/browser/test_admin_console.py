"""The staff console end to end in a real browser: log in, grant credits on a wallet,
open the usage page from the wallet, filter it, download the CSV."""

import csv
import io
import time
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

from accounts.services import user_create
from billing.models import CreditTransaction, Wallet
from billing.money import format_usage
from reporting.export import usage_summary_rows
from reporting.selectors import usage_summary, usage_summary_from_calls
from tests.billing.factories import ModelPriceFactory
from tests.chat.factories import ChatSessionFactory
from tests.reporting.factories import CallSpec, record_turn

pytestmark = pytest.mark.browser


def wait(browser: WebDriver, seconds: int = 20) -> WebDriverWait:
    return WebDriverWait(browser, seconds)


def downloaded_csv(folder: Path, timeout: float = 20) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [path for path in folder.iterdir() if path.suffix == ".csv"]
        if done and not any(path.suffix == ".crdownload" for path in folder.iterdir()):
            return done[0]
        time.sleep(0.1)
    raise AssertionError(f"no CSV downloaded into {folder}: {list(folder.iterdir())}")


def test_staff_grant_credits_then_read_and_download_usage(
    live_server, browser, download_dir, plain_http_cookies, transactional_db
):
    staff = user_create(email="boss@example.com", password="console-pass-4821", is_staff=True, is_superuser=True)
    customer = user_create(email="customer@example.com")
    bystander = user_create(email="bystander@example.com")
    ModelPriceFactory(alias="fast", input_credits_per_mtok=Decimal("150"), output_credits_per_mtok=Decimal("600"))
    ModelPriceFactory(alias="smart", input_credits_per_mtok=Decimal("3000"), output_credits_per_mtok=Decimal("15000"))
    session = ChatSessionFactory(user=customer)
    record_turn(session=session, calls=[CallSpec("fast", datetime(2025, 1, 30, 9, tzinfo=UTC), 1000, 200)])  # 0.27
    record_turn(
        session=session,
        calls=[
            CallSpec(
                "fast",
                datetime(2025, 2, 2, 9, tzinfo=UTC),
                333,
                77,
                cached_input_tokens=300,
                cache_write_tokens=33,
                reasoning_tokens=70,
            )
        ],
    )  # 0.0962 (no class prices: the classes cost what plain tokens do)
    record_turn(session=session, calls=[CallSpec("smart", datetime(2025, 2, 2, 10, tzinfo=UTC), 2000, 100)])  # 7.5
    record_turn(
        session=ChatSessionFactory(user=bystander), calls=[CallSpec("fast", datetime(2025, 2, 3, tzinfo=UTC), 50, 5)]
    )
    wallet = Wallet.objects.get(user=customer)

    # Log in to the admin.
    browser.get(f"{live_server.url}/admin/login/?next=/admin/")
    browser.find_element(By.NAME, "username").send_keys(staff.email)
    browser.find_element(By.NAME, "password").send_keys("console-pass-4821")
    browser.find_element(By.CSS_SELECTOR, "#login-form [type=submit]").click()
    wait(browser).until(EC.presence_of_element_located((By.ID, "user-tools")))

    # Grant credits from the wallet page.
    browser.get(f"{live_server.url}/admin/billing/wallet/{wallet.pk}/change/")
    form = wait(browser).until(EC.presence_of_element_located((By.CSS_SELECTOR, "form#grant_form")))
    form.find_element(By.NAME, "amount").send_keys("12.5")
    form.find_element(By.NAME, "reason").send_keys("Goodwill after the outage")
    form.find_element(By.CSS_SELECTOR, "[type=submit]").click()
    wait(browser).until(EC.presence_of_element_located((By.CSS_SELECTOR, ".messagelist .success")))
    wallet.refresh_from_db()
    assert wallet.balance == Decimal("12.50000000")
    grant = CreditTransaction.objects.get(wallet=wallet)
    assert (grant.kind, grant.amount, grant.actor_id, grant.reason) == (
        "grant",
        Decimal("12.50000000"),
        staff.pk,
        "Goodwill after the outage",
    )

    # "View usage" opens the usage page for this user.
    browser.find_element(By.ID, "view-usage").click()
    wait(browser).until(EC.presence_of_element_located((By.ID, "usage-totals")))
    assert f"/admin/reporting/usage/?user_id={customer.pk}" in browser.current_url
    assert "customer@example.com" in browser.find_element(By.CLASS_NAME, "usage-scope").text
    everything = usage_summary(user_id=customer.pk)
    assert browser.find_element(By.CSS_SELECTOR, "[data-figure=credits]").text == format_usage(
        everything["totals"]["credits"]
    )

    # Narrow it with the filter form: the fast model, per month, from January 1.
    Select(browser.find_element(By.NAME, "model_alias")).select_by_value("fast")
    Select(browser.find_element(By.NAME, "bucket")).select_by_value("month")
    browser.execute_script("document.getElementsByName('from_date')[0].value = '2025-01-01'")
    browser.find_element(By.NAME, "apply-filters").click()
    wait(browser).until(EC.url_contains("model_alias=fast"))
    expected = usage_summary_from_calls(
        user_id=customer.pk, model_alias="fast", from_date=date(2025, 1, 1), bucket="month"
    )
    assert expected["totals"] == {
        "calls": 2, "input_tokens": 1333, "cached_input_tokens": 300, "cache_write_tokens": 33, "output_tokens": 277,
        "reasoning_tokens": 70, "credits": Decimal("0.3662"),
    }  # fmt: skip
    shown = {
        name: browser.find_element(By.CSS_SELECTOR, f"#usage-totals [data-figure={name}]").text
        for name in expected["totals"]
    }
    assert shown == {
        "calls": "2", "input_tokens": "1333", "cached_input_tokens": "300", "cache_write_tokens": "33",
        "output_tokens": "277", "reasoning_tokens": "70", "credits": "0.3662",
    }  # fmt: skip
    bars = browser.find_elements(By.CSS_SELECTOR, "#usage-chart rect.bar")
    assert [(bar.get_attribute("data-bucket"), bar.get_attribute("data-credits")) for bar in bars] == [
        ("2025-01-01", "0.2700"),
        ("2025-02-01", "0.0962"),
    ]
    assert "bystander@example.com" not in browser.page_source

    # Download the CSV of exactly this selection.
    browser.find_element(By.ID, "usage-csv").click()
    path = downloaded_csv(download_dir)
    assert path.name == f"usage_2025-01-01_now_month_user{customer.pk}.csv"
    assert list(csv.reader(io.StringIO(path.read_text()))) == usage_summary_rows(expected)
