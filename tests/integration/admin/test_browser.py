"""A real browser: log into the admin with headless Chromium and look at the queues overview.

Skips loudly (with the reason) only where Chromium cannot be found or installed. Set
``PG_QUEUE_ADMIN_SCREENSHOT=/path/file.png`` to keep a copy of the screenshot.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.integration.admin import factory
from tests.integration.admin.chromium import start_browser

#: Longest any page may take to show what the test waits for.
PAGE_TIMEOUT = 20.0


@pytest.mark.django_db(transaction=True)
def test_overview_in_a_real_browser_shows_stuck_queues_in_red(live_server, tmp_path):
    from django.contrib.auth.models import User
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    User.objects.create_superuser("browser-admin", "admin@example.com", "browser-pw")
    factory.busy_queues()
    browser = start_browser()
    try:
        wait = WebDriverWait(browser, PAGE_TIMEOUT)
        browser.get(f"{live_server.url}/admin/login/?next=/admin/pg_queue/")
        browser.find_element(By.NAME, "username").send_keys("browser-admin")
        browser.find_element(By.NAME, "password").send_keys("browser-pw")
        browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
        wait.until(lambda b: b.current_url.endswith("/admin/pg_queue/"))

        # Chromium may take longer to start than a lease: the live workers renew their
        # heartbeats and leases, as they would while someone looks.
        factory.keep_alive(*factory.LIVE_WORKERS)
        # The app index links the overview; follow the link as a person would.
        browser.find_element(By.LINK_TEXT, "Queues overview").click()
        wait.until(lambda b: b.find_elements(By.ID, "pgq-queues"))
        assert browser.title.startswith("Queues overview")

        email = browser.find_element(By.CSS_SELECTOR, 'tr[data-queue="email"]')
        assert "pgq-stuck-row" in email.get_attribute("class")
        oldest = email.find_elements(By.CSS_SELECTOR, "td")[1]
        assert "pgq-stuck" in oldest.get_attribute("class")
        red, green, blue = _rgb(oldest.value_of_css_property("color"))
        assert red > 150, "a stuck cell is drawn in red"
        assert max(green, blue) < 80, "a stuck cell is drawn in red"
        default = browser.find_element(By.CSS_SELECTOR, 'tr[data-queue="default"]')
        assert "pgq-stuck" not in default.get_attribute("innerHTML")
        stale = browser.find_element(By.CSS_SELECTOR, "tr.pgq-worker.pgq-stuck")
        assert "mail-1-777-dead" in stale.text

        height = browser.execute_script("return document.body.scrollHeight")
        browser.set_window_size(1600, max(700, min(int(height) + 40, 2400)))
        shot = tmp_path / "admin_overview.png"
        assert browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        keep = os.environ.get("PG_QUEUE_ADMIN_SCREENSHOT")
        if keep:
            shutil.copyfile(shot, keep)
    finally:
        browser.quit()


def _rgb(css: str) -> tuple[int, int, int]:
    """``rgba(186, 33, 33, 1)`` -> (186, 33, 33)."""
    inside = css[css.index("(") + 1 : css.index(")")]
    r, g, b = (int(float(p)) for p in inside.split(",")[:3])
    return r, g, b
