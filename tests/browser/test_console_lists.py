"""The console's busiest lists at 1280 x 900 in headless Chromium (issue 30): the
ledger, turns and API keys show their key columns without sideways scrolling, the
table no wider than its box, one line per row, with rows as production has them
(long emails, long references and reasons). Then the dashboard and the wallet page.
Screenshots go to SCREENSHOT_DIR when it is set, else to the test's temporary folder."""

import os
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.utils import timezone
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from accounts.models import ApiKey
from accounts.services import api_key_create, api_key_limits_set, api_key_revoke, user_create
from billing.models import TopUp, Wallet
from billing.services import wallet_debit, wallet_grant, wallet_topup
from chat.models import Turn
from routing.cooldown import failure_record
from routing.models import Upstream
from tests.billing.factories import ModelPriceFactory, TopUpFactory
from tests.chat.factories import ChatSessionFactory
from tests.reporting.factories import CallSpec, record_turn

pytestmark = pytest.mark.browser

PASSWORD = "console-pass-4821"
WIDTH, HEIGHT = 1280, 900
ONE_LINE_PX = 40
# The changelist table against its box (Django's `.results`, which scrolls sideways
# when the table is wider), and each row's height.
MEASURE = """
// A full page (50 rows) always has a vertical scrollbar: measure with one.
document.documentElement.style.overflowY = 'scroll';
const table = document.querySelector('#result_list');
const box = table.closest('.results') || table.parentElement;
// The table's narrowest layout, to tell how much room is left.
table.style.width = '1px';
const narrowest = table.scrollWidth;
table.style.width = '';
return {
  narrowest,
  tableWidth: table.scrollWidth, boxWidth: box.clientWidth, boxScrollWidth: box.scrollWidth,
  pageScrollWidth: document.documentElement.scrollWidth, pageWidth: document.documentElement.clientWidth,
  rowHeights: [...table.querySelectorAll('tbody tr')].map(row => Math.round(row.getBoundingClientRect().height)),
  headers: [...table.querySelectorAll('thead th')].map(th => th.innerText.trim()).filter(Boolean),
};
"""
LONG_EMAILS = [
    "maximilian.alexander.featherstonehaugh@very-long-company-name-example.com",
    "customer-success+enterprise-pilot-2026@subsidiary.international-example.org",
    "j@x.io",
    "procurement.department.shared.inbox@public-sector-agency.example.gov",
]


def wait(browser: WebDriver, seconds: int = 20) -> WebDriverWait:
    return WebDriverWait(browser, seconds)


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    path = Path(os.environ.get("SCREENSHOT_DIR") or tmp_path / "shots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def console(transactional_db, settings, live_server, browser, plain_http_cookies):  # noqa: ANN001, ANN201
    """A staff member logged in at 1280 x 900, and a few weeks of realistic rows."""
    settings.UPSTREAM_COOLDOWN_FAILURES = 1
    settings.STRIPE_SECRET_KEY = "sk_test_" + "0" * 24  # Stripe on (never called here)
    staff = user_create(email="boss@example.com", password=PASSWORD, is_staff=True, is_superuser=True)
    ModelPriceFactory(alias="fast")
    ModelPriceFactory(alias="claude-sonnet-4-5-extended-thinking")
    users = [user_create(email=email) for email in LONG_EMAILS]
    for n, user in enumerate(users):
        wallet_topup(user=user, amount=Decimal("2500"), reference=f"pi_3QxYzLongPaymentIntentReference{n:04d}abcdef")
        wallet_grant(
            user=user, amount=Decimal("125.5"), actor=staff,
            reason="Goodwill credit after the 2026-11-30 upstream outage, agreed with the account manager on a call",
        )  # fmt: skip
        wallet_debit(user=user, amount=Decimal("0.01234567"), reference=f"turn:{Turn().pk}:reply:settle")
        session = ChatSessionFactory(user=user, title="A fairly long session title about quarterly planning")
        for alias in ("fast", "claude-sonnet-4-5-extended-thinking"):
            record_turn(session=session, calls=[CallSpec(alias, timezone.now() - timedelta(hours=n), 1200, 300)])
        Turn.objects.filter(session=session).update(
            credits_charged=Decimal("1.23456789"), balance_after=Decimal("2624.1")
        )
        failed = record_turn(session=session, calls=[CallSpec("fast", timezone.now(), 10, 0)])[0].turn
        Turn.objects.filter(pk=failed.pk).update(status=Turn.Status.FAILED, finished_at=timezone.now())
        key, _ = api_key_create(user=user, name=f"Production backend for the {n}th integration (eu-west-1)")
        api_key_limits_set(api_key=key, budget_credits=Decimal("1000"), budget_window="month")
        ApiKey.objects.filter(pk=key.pk).update(
            expires_at=timezone.now() + timedelta(days=90), last_used_at=timezone.now()
        )
        if n == 0:
            api_key_revoke(api_key=key)
        TopUpFactory(user=user, amount_usd=Decimal("25.00"), status=TopUp.Status.SUCCEEDED)
    Upstream.objects.create(name="groq", kind="openai", base_url="https://api.groq.com/openai/v1")
    failure_record("groq", reason="rate_limited", message="429 Too Many Requests")

    browser.set_window_size(WIDTH, HEIGHT)
    browser.get(f"{live_server.url}/admin/login/?next=/admin/")
    browser.find_element(By.NAME, "username").send_keys(staff.email)
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "#login-form [type=submit]").click()
    wait(browser).until(EC.presence_of_element_located((By.ID, "user-tools")))
    return {"staff": staff, "users": users}


def measured(browser: WebDriver, url: str, shot: Path) -> dict:
    browser.set_window_size(WIDTH, HEIGHT)
    browser.get(url)
    wait(browser).until(EC.presence_of_element_located((By.ID, "result_list")))
    assert browser.save_screenshot(str(shot))
    return browser.execute_script(MEASURE)


def assert_fits(layout: dict, columns: list[str], rows: int) -> None:
    assert layout["pageScrollWidth"] <= layout["pageWidth"], f"the page scrolls sideways: {layout}"
    assert layout["tableWidth"] <= layout["boxWidth"], f"the list scrolls sideways in its box: {layout}"
    assert len(layout["rowHeights"]) == rows, layout
    assert max(layout["rowHeights"]) <= ONE_LINE_PX, f"rows wrap: {layout}"
    missing = [name for name in columns if name not in layout["headers"]]
    assert not missing, f"columns not shown: {missing} of {layout['headers']}"


def test_the_ledger_turns_and_api_key_lists_fit_1280_px_one_line_per_row(live_server, browser, console, shots):
    ledger = measured(browser, f"{live_server.url}/admin/billing/credittransaction/", shots / "ledger-list.png")
    turns = measured(browser, f"{live_server.url}/admin/chat/turn/", shots / "turns-list.png")
    keys = measured(browser, f"{live_server.url}/admin/accounts/apikey/", shots / "apikeys-list.png")
    assert_fits(ledger, ["CREATED AT", "USER", "KIND", "AMOUNT", "BALANCE AFTER", "REFERENCE", "ACTOR", "REASON"], 12)
    assert_fits(
        turns, ["TURN", "CREATED AT", "USER", "SESSION", "STATUS", "MODELS", "CREDITS CHARGED", "BALANCE AFTER"], 12
    )
    assert_fits(keys, ["NAME", "PREFIX", "USER", "CREATED AT", "LAST USED", "EXPIRES AT", "BUDGET", "REVOKED AT"], 4)
    # What a cell cut off is in its tooltip.
    titles = [el.get_attribute("title") for el in browser.find_elements(By.CSS_SELECTOR, "td.field-user_email .clip")]
    assert sorted(titles) == sorted(LONG_EMAILS)


def test_the_dashboard_and_the_wallet_page_at_1280_px(live_server, browser, console, shots):
    browser.set_window_size(WIDTH, HEIGHT)
    browser.get(f"{live_server.url}/admin/")
    dashboard = wait(browser).until(EC.presence_of_element_located((By.ID, "dashboard")))
    assert browser.save_screenshot(str(shots / "dashboard.png"))
    cards = [el.get_attribute("id") for el in dashboard.find_elements(By.CSS_SELECTOR, ".card")]
    assert cards == [
        "dashboard-credits", "dashboard-top-ups", "dashboard-spend", "dashboard-active-users",
        "dashboard-failing-turns", "dashboard-stripe", "dashboard-upstreams",
    ]  # fmt: skip
    # The figures are in view as the page opens; the sections follow them.
    assert (
        browser.execute_script("return document.querySelector('#dashboard-upstreams').getBoundingClientRect().bottom")
        <= HEIGHT
    )
    assert browser.find_elements(By.CSS_SELECTOR, "#content-main .module caption")
    assert browser.find_element(By.CSS_SELECTOR, "#dashboard-failing-turns .figure").text == "4"
    assert browser.find_element(By.CSS_SELECTOR, "#dashboard-upstreams .figure").text == "1"
    scroll_width, client_width = browser.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert scroll_width <= client_width
    # A figure leads to its list.
    browser.find_element(By.CSS_SELECTOR, "#dashboard-failing-turns .figure").click()
    wait(browser).until(EC.presence_of_element_located((By.ID, "result_list")))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")) == 4
    browser.get(f"{live_server.url}/admin/")
    wait(browser).until(EC.presence_of_element_located((By.ID, "dashboard")))
    whole_page(browser, shots / "dashboard-whole.png")

    wallet = Wallet.objects.get(user=console["users"][0])
    browser.set_window_size(WIDTH, HEIGHT)
    browser.get(f"{live_server.url}/admin/billing/wallet/{wallet.pk}/change/")
    form = wait(browser).until(EC.presence_of_element_located((By.ID, "grant_form")))
    assert form.rect["y"] + form.rect["height"] <= HEIGHT, "the grant form is below the fold"
    ledger = browser.find_element(By.ID, "transactions-group")
    assert ledger.rect["y"] >= form.rect["y"] + form.rect["height"]
    assert browser.save_screenshot(str(shots / "wallet.png"))
    whole_page(browser, shots / "wallet-whole.png")


def whole_page(browser: WebDriver, shot: Path) -> None:
    """A screenshot of the whole page at 1280 px (the window made as tall as the page)."""
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(WIDTH, min(max(height + 140, HEIGHT), 4000))
    assert browser.save_screenshot(str(shot))
