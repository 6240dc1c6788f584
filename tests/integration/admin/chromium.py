"""Headless Chromium (Debian's ``chromium`` + ``chromium-driver``) driven by Selenium, for one test.

``chromium_paths()`` finds the browser and its driver, installing the distribution packages
when they are missing and we are root on an apt-based machine (CI runs the suite that way on a
fresh machine), and skips loudly otherwise, like ``tests/acceptance/delivery/pgbouncer.py``.
Selenium is pointed at both binaries explicitly, so it never tries to download a browser or a
driver.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any

import pytest

from tests.debian import apt_get, find_executable

#: Longest the package install may take (apt-get install, then update + install once more).
INSTALL_TIMEOUT = 400.0
PACKAGES = ("chromium", "chromium-driver")
BROWSER_NAMES = ("chromium", "chromium-browser")
DRIVER_NAMES = ("chromedriver",)
#: The flags every run uses: headless, no sandbox (root in a container), nothing phoning home.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def _which(names: tuple[str, ...]) -> str | None:
    return find_executable(names, ("/usr/bin", "/usr/lib/chromium"))


def chromium_paths() -> tuple[str, str]:
    """(browser, driver) paths; installs the packages (root + apt-get) or skips with why."""
    browser, driver = _which(BROWSER_NAMES), _which(DRIVER_NAMES)
    if browser and driver:
        return browser, driver
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(
            "BROWSER TEST SKIPPED: chromium/chromedriver are not installed and cannot be "
            "installed here (needs root and apt-get); install the Debian packages "
            "'chromium' and 'chromium-driver' to run it"
        )
    deadline = time.monotonic() + INSTALL_TIMEOUT
    ok, log = apt_get("install", "-y", "-q", *PACKAGES, timeout=INSTALL_TIMEOUT)
    if not ok:  # a fresh machine may have empty package lists
        ok, log = apt_get("update", "-q", timeout=max(10.0, deadline - time.monotonic()))
        if ok:
            ok, log = apt_get(
                "install", "-y", "-q", *PACKAGES, timeout=max(10.0, deadline - time.monotonic())
            )
    browser, driver = _which(BROWSER_NAMES), _which(DRIVER_NAMES)
    if not ok or not browser or not driver:
        pytest.skip(
            f"BROWSER TEST SKIPPED: 'apt-get install -y -q {' '.join(PACKAGES)}' failed:\n{log}"
        )
    return browser, driver


def start_browser(width: int = 1600, height: int = 1000) -> Any:
    """A headless Chrome WebDriver on Debian's Chromium; the caller quits it."""
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="BROWSER TEST SKIPPED: pip install -e '.[dev]' (selenium)"
    )
    from selenium.webdriver.chrome.service import Service

    browser, driver = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='pg-queue-chromium-')}")
    options.add_argument(f"--window-size={width},{height}")
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never download
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)
