"""Each staff console page in headless Chromium at the widths staff use: it renders
with nothing collapsed and no sideways scrolling at 1280 px, its form submits, and a
screenshot of it is saved in the test's temporary folder (`shots/`) to look at."""

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

from accounts.services import user_create
from billing.models import CreditTransaction, ModelPrice, Wallet
from tests.billing.factories import ModelPriceFactory
from tests.chat.factories import ChatSessionFactory
from tests.reporting.factories import CallSpec, record_turn

STRIPE_TEST_KEY = "sk_test_" + "0" * 24  # Stripe on (never called here)

pytestmark = pytest.mark.browser

PASSWORD = "console-pass-4821"
# Elements that must never be squeezed to a sliver (the grant form once was 0 px wide).
# Checkboxes are small by nature (13 px), so they are not measured.
BOXES = "#content form, #content fieldset, #content table, #content .module, #content input:not([type=hidden]):not([type=checkbox]), #content textarea, #content select"  # noqa: E501
LAYOUT = """
const doc = document.documentElement;
const collapsed = [...document.querySelectorAll(arguments[0])]
  .filter(el => el.getClientRects().length && getComputedStyle(el).visibility !== 'hidden')
  .map(el => ({el, rect: el.getBoundingClientRect()}))
  .filter(({rect}) => rect.width < 24 || rect.height < 8)
  .map(({el, rect}) => `${el.tagName.toLowerCase()}#${el.id}.${el.className} ${rect.width}x${rect.height}`);
return {scrollWidth: doc.scrollWidth, clientWidth: doc.clientWidth, collapsed};
"""


def wait(browser: WebDriver, seconds: int = 20) -> WebDriverWait:
    return WebDriverWait(browser, seconds)


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    path = tmp_path / "shots"
    path.mkdir()
    return path


@pytest.fixture
def staff(transactional_db):  # noqa: ANN001, ANN201
    return user_create(email="boss@example.com", password=PASSWORD, is_staff=True, is_superuser=True)


def log_in(browser: WebDriver, live_server, staff, width: int = 1280) -> None:  # noqa: ANN001
    browser.set_window_size(width, 900)
    browser.get(f"{live_server.url}/admin/login/?next=/admin/")
    browser.find_element(By.NAME, "username").send_keys(staff.email)
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "#login-form [type=submit]").click()
    wait(browser).until(EC.presence_of_element_located((By.ID, "user-tools")))


def assert_usable(browser: WebDriver, shot: Path) -> None:
    """No sideways scrolling and no collapsed element; the screenshot is taken first,
    so a failure leaves the picture of what went wrong."""
    browser.save_screenshot(str(shot))
    layout = browser.execute_script(LAYOUT, BOXES)
    assert layout["scrollWidth"] <= layout["clientWidth"], f"scrolls sideways: {layout}"
    assert layout["collapsed"] == [], layout["collapsed"]


def rect(browser: WebDriver, css: str) -> dict:
    return browser.execute_script("return document.querySelector(arguments[0]).getBoundingClientRect().toJSON()", css)


def test_the_admin_index_is_the_parley_console_with_usage_in_view(live_server, browser, staff, shots, settings):
    settings.STRIPE_SECRET_KEY = ""
    log_in(browser, live_server, staff)
    assert browser.title.startswith("Staff console | Parley staff console")
    assert browser.find_element(By.CSS_SELECTOR, "#site-name").text == "Parley staff console"
    sections = [el.text for el in browser.find_elements(By.CSS_SELECTOR, "#content-main .module caption")]
    assert sections == [
        "USERS AND API KEYS",
        "WALLETS AND LEDGER",
        "MODEL PRICES",
        "UPSTREAMS AND ROUTING",
        "CHAT",
        "USAGE",
    ]
    shortcut = rect(browser, "#console-shortcuts a[href='/admin/reporting/usage/']")
    assert shortcut["bottom"] <= browser.execute_script("return window.innerHeight"), "Usage summary below the fold"
    assert browser.find_element(By.CSS_SELECTOR, "#parley-usage-usage a").text == "Usage summary"
    assert_usable(browser, shots / "admin-index-1280.png")

    # With Stripe on, dj-stripe's models are one section, after Parley's.
    settings.STRIPE_SECRET_KEY = STRIPE_TEST_KEY
    browser.get(f"{live_server.url}/admin/")
    sections = [el.text for el in browser.find_elements(By.CSS_SELECTOR, "#content-main .module caption")]
    assert sections[-1] == "STRIPE (DJ-STRIPE)" and sections[:6][-1] == "USAGE"
    browser.save_screenshot(str(shots / "admin-index-stripe-on.png"))

    # "View site" leads to the page that says what this server is.
    settings.STRIPE_SECRET_KEY = ""
    browser.get(f"{live_server.url}/admin/")
    browser.find_element(By.CSS_SELECTOR, "#console-shortcuts a[href='/admin/reporting/usage/']").click()
    wait(browser).until(EC.presence_of_element_located((By.ID, "usage-filters")))
    browser.get(f"{live_server.url}/admin/")
    browser.find_element(By.LINK_TEXT, "VIEW SITE").click()
    wait(browser).until(EC.presence_of_element_located((By.ID, "link-docs")))
    assert browser.find_element(By.TAG_NAME, "h1").text == "Parley"
    assert_usable(browser, shots / "home-1280.png")


@pytest.mark.parametrize("width", [1280, 1400, 1920])
def test_the_grant_form_on_the_wallet_page_is_full_width_and_grants(live_server, browser, staff, shots, width):
    customer = user_create(email="customer@example.com")
    wallet = Wallet.objects.get(user=customer)
    log_in(browser, live_server, staff, width)
    browser.get(f"{live_server.url}/admin/billing/wallet/{wallet.pk}/change/")
    form = wait(browser).until(EC.presence_of_element_located((By.CSS_SELECTOR, "form#grant_form")))
    assert form.size["width"] >= 300, form.size
    assert rect(browser, "#grant_form textarea")["width"] >= 300
    # Below the wallet's own details, not beside them, and above its grants and ledger rows.
    assert rect(browser, "#grant_form")["top"] >= rect(browser, "#wallet_form")["bottom"]
    assert rect(browser, "#grant_form")["bottom"] <= rect(browser, "#grants-group")["top"]
    assert rect(browser, "#grants-group")["bottom"] <= rect(browser, "#transactions-group")["top"]
    form.find_element(By.NAME, "amount").send_keys("12.5")
    form.find_element(By.NAME, "reason").send_keys("Goodwill after the outage")
    browser.execute_script("arguments[0].scrollIntoView()", form)
    assert_usable(browser, shots / f"wallet-grant-form-{width}.png")
    form.find_element(By.CSS_SELECTOR, "[type=submit]").click()
    wait(browser).until(EC.presence_of_element_located((By.CSS_SELECTOR, ".messagelist .success")))
    wallet.refresh_from_db()
    assert wallet.balance == Decimal("12.50000000")
    assert CreditTransaction.objects.get(wallet=wallet).actor_id == staff.pk
    assert_usable(browser, shots / f"wallet-after-grant-{width}.png")


def test_the_grant_page_shows_errors_then_grants(live_server, browser, staff, shots):
    customer = user_create(email="customer@example.com")
    wallet = Wallet.objects.get(user=customer)
    log_in(browser, live_server, staff)
    browser.get(f"{live_server.url}/admin/billing/wallet/{wallet.pk}/grant/")
    form = wait(browser).until(EC.presence_of_element_located((By.CSS_SELECTOR, "form#grant_form")))
    form.find_element(By.NAME, "amount").send_keys("-3")
    form.find_element(By.CSS_SELECTOR, "[type=submit]").click()
    wait(browser).until(EC.presence_of_element_located((By.CSS_SELECTOR, ".errornote")))
    assert browser.find_elements(By.CSS_SELECTOR, ".field-reason .errorlist")
    assert browser.find_element(By.CSS_SELECTOR, "form#grant_form").size["width"] >= 300
    assert_usable(browser, shots / "grant-page-errors.png")
    form = browser.find_element(By.CSS_SELECTOR, "form#grant_form")
    amount = form.find_element(By.NAME, "amount")
    amount.clear()
    amount.send_keys("7")
    form.find_element(By.NAME, "reason").send_keys("Refund for a failed turn")
    form.find_element(By.CSS_SELECTOR, "[type=submit]").click()
    wait(browser).until(EC.presence_of_element_located((By.CSS_SELECTOR, ".messagelist .success")))
    wallet.refresh_from_db()
    assert wallet.balance == Decimal("7")


def test_the_usage_page_filters_by_email_and_keeps_its_filter_row_aligned_on_errors(live_server, browser, staff, shots):
    customer = user_create(email="customer@example.com")
    ModelPriceFactory(alias="fast")
    log_in(browser, live_server, staff)
    browser.get(f"{live_server.url}/admin/reporting/usage/")
    wait(browser).until(EC.presence_of_element_located((By.ID, "usage-totals")))
    assert_usable(browser, shots / "usage-all.png")

    browser.find_element(By.NAME, "user").send_keys("Customer@Example.com")
    browser.find_element(By.NAME, "apply-filters").click()
    wait(browser).until(EC.url_contains("user=Customer%40Example.com"))
    assert "User: customer@example.com" in browser.find_element(By.CLASS_NAME, "usage-scope").text
    assert_usable(browser, shots / "usage-by-email.png")

    # A source picked from the filter row is said in the scope line, with a way back.
    Select(browser.find_element(By.ID, "id_source")).select_by_visible_text("/v1")
    browser.find_element(By.NAME, "apply-filters").click()
    wait(browser).until(EC.url_contains("source=openai"))
    assert "Source: OpenAI endpoint (/v1) (all sources)." in browser.find_element(By.CLASS_NAME, "usage-scope").text
    assert_usable(browser, shots / "usage-by-source.png")

    # Bad values: the errors show under their fields, and the fields and buttons stay in one row.
    browser.get(
        f"{live_server.url}/admin/reporting/usage/?user=nobody@example.com&from_date=2025-13-45&to_date=2025-01-01"
    )
    wait(browser).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#filter-from_date .errorlist")))
    assert "Enter a valid date." in browser.find_element(By.ID, "filter-from_date").text
    assert "No user with this email." in browser.find_element(By.ID, "filter-user").text
    assert not browser.find_elements(By.ID, "usage-totals")
    tops = {
        css: round(rect(browser, css)["top"])
        for css in (
            "#id_user",
            "#id_model_alias",
            "#id_from_date",
            "#id_to_date",
            "#id_bucket",
            "#id_source",
            "[name=apply-filters]",
        )
    }
    assert max(tops.values()) - min(tops.values()) <= 2, f"the filter row is out of line: {tops}"
    assert_usable(browser, shots / "usage-bad-filters.png")
    assert customer.pk


def test_the_price_form_groups_its_fields_and_shows_a_refusal_under_its_field(live_server, browser, staff, shots):
    log_in(browser, live_server, staff)
    browser.get(f"{live_server.url}/admin/billing/modelprice/add/")
    form = wait(browser).until(EC.presence_of_element_located((By.ID, "modelprice_form")))
    headings = [el.text for el in form.find_elements(By.CSS_SELECTOR, "fieldset h2")]
    assert headings == ["Prices", "Token classes", "Long-context tier", "Limits & counting"]
    assert_usable(browser, shots / "price-add-1280.png")
    values = {
        "alias": "opus", "provider_model": "claude-opus", "input_credits_per_mtok": "1500",
        "output_credits_per_mtok": "7500", "cached_input_credits_per_mtok": "150", "tier_threshold_tokens": "200000",
        "tier_input_credits_per_mtok": "3000",
    }  # fmt: skip
    for name, value in values.items():
        field = form.find_element(By.NAME, name)
        field.clear()
        field.send_keys(value)
    Select(form.find_element(By.NAME, "provider")).select_by_value("anthropic")
    Select(form.find_element(By.NAME, "counting")).select_by_value("o200k_base")
    form.find_element(By.NAME, "_save").click()
    # A tier without its output price: the service's refusal, under that field.
    error = wait(browser).until(
        EC.presence_of_element_located((By.CSS_SELECTOR, ".field-tier_output_credits_per_mtok .errorlist"))
    )
    assert "A tier needs its threshold and both its prices." in error.text
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", error)
    assert_usable(browser, shots / "price-add-refused-1280.png")
    field = browser.find_element(By.NAME, "tier_output_credits_per_mtok")
    field.send_keys("11250")
    browser.find_element(By.NAME, "_save").click()
    wait(browser).until(EC.presence_of_element_located((By.CSS_SELECTOR, ".messagelist .success")))
    price = ModelPrice.objects.get(alias="opus")
    assert (price.counting, price.cached_input_credits_per_mtok, price.tier_output_credits_per_mtok) == (
        "o200k_base", Decimal("150"), Decimal("11250"),
    )  # fmt: skip
    browser.get(f"{live_server.url}/admin/billing/modelprice/{price.pk}/change/")
    wait(browser).until(EC.presence_of_element_located((By.ID, "modelprice_form")))
    assert_usable(browser, shots / "price-change-1280.png")


def test_llm_calls_show_their_token_classes_without_sideways_scrolling(live_server, browser, staff, shots):
    ModelPriceFactory(alias="fast")
    customer = user_create(email="customer@example.com")
    [call] = record_turn(
        session=ChatSessionFactory(user=customer),
        calls=[
            CallSpec(
                "fast", datetime(2025, 1, 10, 12, tzinfo=UTC), 12000, 900,
                cached_input_tokens=10000, cache_write_tokens=1200, reasoning_tokens=600,
            )
        ],
    )  # fmt: skip
    log_in(browser, live_server, staff)
    browser.get(f"{live_server.url}/admin/chat/llmcall/")
    wait(browser).until(EC.presence_of_element_located((By.ID, "result_list")))
    cells = {
        name: browser.find_element(By.CSS_SELECTOR, f"#result_list td.field-{name}")
        for name in ("tokens_in", "tokens_out")
    }
    assert cells["tokens_in"].text.replace("\u00a0", " ").split("\n") in (
        ["12000", "10000 cached, 1200 cache write"], ["12000", "10000 cached,", "1200 cache write"],
    )  # fmt: skip
    assert cells["tokens_out"].text.replace("\u00a0", " ") == "900\n600 reasoning"
    # The list scrolls inside its box beside the filters (as before the classes); the page does not.
    browser.execute_script("arguments[0].scrollIntoView({block: 'nearest', inline: 'center'})", cells["tokens_out"])
    assert_usable(browser, shots / "llmcall-list-1280.png")
    browser.get(f"{live_server.url}/admin/chat/turn/{call.turn_id}/change/")
    inline = wait(browser).until(EC.presence_of_element_located((By.ID, "llm_calls-group")))
    browser.execute_script("arguments[0].scrollIntoView()", inline)
    assert "600 reasoning" in inline.find_element(By.CSS_SELECTOR, "td.field-tokens_out").text.replace("\u00a0", " ")
    assert_usable(browser, shots / "turn-calls-inline-1280.png")
    browser.get(f"{live_server.url}/admin/chat/llmcall/{call.pk}/change/")
    wait(browser).until(EC.presence_of_element_located((By.ID, "content-main")))
    assert "10000" in browser.find_element(By.CSS_SELECTOR, ".field-cached_input_tokens").text
    assert_usable(browser, shots / "llmcall-page-1280.png")
