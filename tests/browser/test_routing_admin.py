"""The upstream pages of the staff console in headless Chromium: the list with its
key, state and 24-hour columns, a cooldown ended from it, and an upstream's page
with its deployments. Screenshots go to SCREENSHOT_DIR when it is set, else to the
test's temporary folder (`shots/`)."""

import os
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.utils import timezone
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

from accounts.services import user_create
from chat.models import LLMCall
from routing.cooldown import failure_record, states
from routing.models import Deployment, Upstream
from tests.billing.factories import ModelPriceFactory
from tests.chat.factories import ChatSessionFactory
from tests.reporting.factories import CallSpec, record_turn

pytestmark = pytest.mark.browser

PASSWORD = "console-pass-4821"
SECRET = "sk-or-v1-BROWSER-SECRET-9931"
SCROLLS = "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    path = Path(os.environ.get("SCREENSHOT_DIR") or tmp_path / "shots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def whole_page(browser: WebDriver, shot: Path, width: int) -> None:
    """A screenshot of the whole page (the window made as tall as the page)."""
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(width, min(max(height + 140, 700), 4000))
    assert browser.save_screenshot(str(shot))


def routing_rows(monkeypatch) -> dict[str, Upstream]:  # noqa: ANN001
    monkeypatch.setenv("OPENROUTER_KEY", SECRET)
    monkeypatch.delenv("GROQ_KEY", raising=False)
    rows = {
        "openrouter": Upstream.objects.create(
            name="openrouter", kind="openai", base_url="https://openrouter.ai/api/v1", api_key_env="OPENROUTER_KEY",
            timeout_seconds=30, max_concurrent=16, headers={"X-Title": "Parley"},
        ),
        "groq": Upstream.objects.create(name="groq", kind="openai", base_url="https://api.groq.com/openai/v1",
                                        api_key_env="GROQ_KEY", max_concurrent=4),
        "anthropic": Upstream.objects.create(name="anthropic", kind="anthropic", api_key_env="ANTHROPIC_API_KEY"),
        "local": Upstream.objects.create(name="local", kind="local"),
    }  # fmt: skip
    ModelPriceFactory(alias="llama-70b")
    ModelPriceFactory(alias="fast")
    Deployment.objects.create(
        alias="llama-70b", upstream=rows["openrouter"], provider_model="meta-llama/llama-3.3-70b-instruct",
        cost_input_credits_per_mtok=Decimal("0.13"), cost_output_credits_per_mtok=Decimal("0.40"),
    )  # fmt: skip
    Deployment.objects.create(alias="llama-70b", upstream=rows["groq"], provider_model="llama-3.3-70b-versatile",
                              priority=1, cost_input_credits_per_mtok=Decimal("0.59"))  # fmt: skip
    Deployment.objects.create(alias="fast", upstream=rows["local"], provider_model="local-fast")
    customer = user_create(email="customer@example.com")
    hour_ago = timezone.now() - timedelta(hours=1)
    for upstream, cost, upstream_cost, status in [
        ("openrouter", "1.25", "0.80", "ok"), ("openrouter", "0.75", "0.50", "ok"), ("openrouter", "0.30", None, "ok"),
        ("groq", "0", None, "failed"), ("groq", "2.10", "2.40", "ok"), ("local", "0.02", "0", "ok"),
    ]:  # fmt: skip
        [call] = record_turn(session=ChatSessionFactory(user=customer), calls=[CallSpec("fast", hour_ago, 100, 10)])
        LLMCall.objects.filter(pk=call.pk).update(
            upstream=upstream, cost=Decimal(cost), status=status,
            upstream_cost=None if upstream_cost is None else Decimal(upstream_cost),
        )  # fmt: skip
    return rows


def test_the_upstream_list_and_page_show_keys_state_and_usage(
    live_server, browser, plain_http_cookies, transactional_db, monkeypatch, settings, shots
):
    staff = user_create(email="boss@example.com", password=PASSWORD, is_staff=True, is_superuser=True)
    rows = routing_rows(monkeypatch)
    settings.UPSTREAM_COOLDOWN_FAILURES = 1
    failure_record("groq", reason="rate_limited", message="429 Too Many Requests: rate limit reached for llama-3.3")

    browser.set_window_size(1400, 900)
    browser.get(f"{live_server.url}/admin/login/?next=/admin/routing/upstream/")
    browser.find_element(By.NAME, "username").send_keys(staff.email)
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "#login-form [type=submit]").click()
    table = WebDriverWait(browser, 20).until(EC.presence_of_element_located((By.ID, "result_list")))
    whole_page(browser, shots / "upstream-list.png", 1400)
    assert SECRET not in browser.page_source
    listed = " ".join(table.text.replace("\u00a0", " ").split())
    assert "OPENROUTER_KEY set" in listed and "GROQ_KEY not set" in listed
    assert "cooling down until" in listed and "(rate_limited)" in listed
    scroll_width, client_width = browser.execute_script(SCROLLS)
    assert scroll_width <= client_width, "the page scrolls sideways"
    # Every column in view beside the sidebar: the list does not scroll inside its box either.
    box = browser.execute_script(
        "const el = document.querySelector('#changelist .results'); return [el.scrollWidth, el.clientWidth]"
    )
    assert box[0] <= box[1], f"the list scrolls sideways in its box: {box}"

    # The cooling upstream's own page.
    browser.get(f"{live_server.url}/admin/routing/upstream/{rows['groq'].pk}/change/")
    state = WebDriverWait(browser, 20).until(EC.presence_of_element_located((By.CSS_SELECTOR, ".field-state")))
    assert "cooling down until" in state.text and "429 Too Many Requests" in state.text
    whole_page(browser, shots / "upstream-change-cooling.png", 1400)

    # End the cooldown from the list.
    browser.set_window_size(1400, 900)
    browser.get(f"{live_server.url}/admin/routing/upstream/")
    WebDriverWait(browser, 20).until(EC.presence_of_element_located((By.ID, "result_list")))
    browser.find_element(By.CSS_SELECTOR, f"input[name=_selected_action][value='{rows['groq'].pk}']").click()
    Select(browser.find_element(By.NAME, "action")).select_by_value("end_cooldown")
    browser.find_element(By.CSS_SELECTOR, "button[name=index]").click()
    message = WebDriverWait(browser, 20).until(EC.presence_of_element_located((By.CSS_SELECTOR, ".messagelist")))
    assert "Cooldown ended: groq." in message.text
    assert not states(["groq"])["groq"].cooling
    whole_page(browser, shots / "upstream-list-after-end-cooldown.png", 1400)

    browser.set_window_size(1400, 900)
    browser.get(f"{live_server.url}/admin/routing/upstream/{rows['openrouter'].pk}/change/")
    inline = WebDriverWait(browser, 20).until(EC.presence_of_element_located((By.ID, "deployments-group")))
    assert "meta-llama/llama-3.3-70b-instruct" in browser.page_source and inline.is_displayed()
    assert SECRET not in browser.page_source
    page = browser.find_element(By.ID, "content-main").text
    assert "never stored here nor shown" in page and "over 2 of 3 calls" in page and "set" in page
    whole_page(browser, shots / "upstream-change.png", 1400)

    browser.set_window_size(1400, 900)
    browser.get(f"{live_server.url}/admin/routing/deployment/")
    WebDriverWait(browser, 20).until(EC.presence_of_element_located((By.ID, "result_list")))
    scroll_width, client_width = browser.execute_script(SCROLLS)
    assert scroll_width <= client_width, "the page scrolls sideways"
    whole_page(browser, shots / "deployment-list.png", 1400)
