"""Headless Chromium for the admin console tests: Debian's chromium and chromedriver
(never a download by selenium-manager), a throwaway profile and a download folder."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver

from tests.services import CHROMEDRIVER, CHROMIUM, require_browser

CHROME_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1000",
]


@pytest.fixture
def download_dir(tmp_path: Path) -> Path:
    path = tmp_path / "downloads"
    path.mkdir()
    return path


@pytest.fixture
def browser(tmp_path: Path, download_dir: Path) -> Iterator[WebDriver]:
    require_browser()
    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in [*CHROME_ARGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(arg)
    options.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(download_dir),
            "download.prompt_for_download": False,
            "download.directory_upgrade": True,
        },
    )
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)})
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def plain_http_cookies(settings) -> None:  # noqa: ANN001
    """With DEBUG off the settings mark session and CSRF cookies Secure, which a browser
    never sends back over the live server's plain http."""
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False
