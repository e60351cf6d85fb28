"""The dashboard in a real browser: headless Debian Chromium driven by selenium against a real embedded server
(API key set): key → upload → job → live status and curves → activate → recommendations.

Skipped only where chromium / chromedriver are missing (``.ci/run`` installs them). With
``RECDISTILL_SCREENSHOT_DIR`` set, the screenshots are written there (``docs/dashboard-*.png``).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.db.migrate import upgrade_head
from core.db.session import dispose_engines
from core.settings import Settings
from tests.factories import two_taste_csv
from tests.worker.jobkit import Server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver; .ci/run does)",
)
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the dev extra)")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

KEY = "browser-test-key"


@pytest.fixture()
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    monkeypatch.setenv("RECDISTILL_API_KEY", KEY)  # the server process reads it from the environment
    settings = Settings(RECDISTILL_HOME=str(tmp_path / "home"), RECDISTILL_DEVICE="cpu", RECDISTILL_API_KEY=KEY)
    settings.ensure_dirs()
    upgrade_head(settings.database_url)
    srv = Server(settings, tmp_path / "serve.log")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
        dispose_engines()


@pytest.fixture()
def browser() -> Iterator[webdriver.Chrome]:
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def _shot(driver: webdriver.Chrome, tmp_path: Path, name: str) -> None:
    """A screenshot of the whole page (the viewport set to the page's height), kept in ``tmp_path`` and, when
    asked, in ``RECDISTILL_SCREENSHOT_DIR``."""
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    metrics = {"width": 1280, "height": max(600, min(height, 1600)), "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    folder = Path(os.environ.get("RECDISTILL_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(folder / f"dashboard-{name}.png"))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_upload_train_activate_and_recommend_in_a_browser(server: Server, browser: webdriver.Chrome,
                                                          tmp_path: Path) -> None:
    # The jobs table is redrawn every 2 s while a job runs: an element read between two redraws goes stale,
    # so every wait looks it up again instead of failing.
    wait = WebDriverWait(browser, 20, ignored_exceptions=(StaleElementReferenceException,))
    csv = tmp_path / "ratings.csv"
    csv.write_text(two_taste_csv(n_users=60, n_items=40, per_user=10))
    browser.get(server.url + "/")

    # Without a key the page says what is wrong (the static page itself is public).
    wait.until(EC.visibility_of_element_located((By.ID, "error")))
    assert "missing_api_key" in browser.find_element(By.ID, "error").text
    browser.find_element(By.ID, "key").send_keys(KEY)
    browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "key-state"), "key set"))
    assert not browser.find_element(By.ID, "error").is_displayed()

    # Upload: progress, then the data set's stats in the message and the table.
    browser.find_element(By.ID, "upload-file").send_keys(str(csv))
    browser.find_element(By.ID, "upload-name").send_keys("two-tastes")
    for field, value in (("upload-user-col", "user"), ("upload-item-col", "item")):
        box = browser.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    browser.find_element(By.CSS_SELECTOR, "#upload-form button").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "upload-state"), "uploaded two-tastes"))
    assert "60 users, 40 items, 600 interactions" in browser.find_element(By.ID, "upload-state").text
    row = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#datasets-table tbody tr")))
    assert [c.text for c in row.find_elements(By.TAG_NAME, "td")][2:6] == ["60", "40", "600", "0.2500"]
    _shot(browser, tmp_path, "datasets")

    # A tiny DCD job: live status until it succeeds, then both curves for teacher and student.
    browser.find_element(By.CSS_SELECTOR, "#tabs button[data-tab=jobs]").click()
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#job-dataset option")))
    Select(browser.find_element(By.ID, "job-method")).select_by_visible_text("dcd")
    for field, value in (("job-teacher-dim", "16"), ("job-student-dim", "4"), ("job-epochs", "12"),
                         ("job-hp", '{"m": 20, "p": 5, "batch_size": 64, "lr": 0.01}')):
        box = browser.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    browser.find_element(By.CSS_SELECTOR, "#job-form button").click()
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#jobs-table tbody tr")))
    status = WebDriverWait(browser, 240, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: (s := d.find_element(By.CSS_SELECTOR, "#jobs-table tbody tr").get_attribute("data-status"))
        in ("succeeded", "failed", "cancelled") and s)
    assert status == "succeeded", browser.find_element(By.ID, "job-detail").text
    wait.until(lambda d: "100 %" in d.find_element(By.CSS_SELECTOR, "#jobs-table tbody tr").text)
    for chart in ("loss-chart", "ndcg-chart"):
        for series in ("teacher", "student"):
            path = browser.find_element(By.CSS_SELECTOR, f"svg#{chart} path.line.{series}")
            assert path.get_attribute("d").count("L") >= 1  # one segment per epoch after the first
    _shot(browser, tmp_path, "jobs")

    # The student beside its teacher; activate it.
    browser.find_element(By.CSS_SELECTOR, "#tabs button[data-tab=models]").click()
    card = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#models-list .card")))
    assert "smaller than its teacher" in card.text and "ndcg@10" in card.text
    card.find_element(By.CSS_SELECTOR, "button.activate").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "active-model"), "Serving"))
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#models-list .card.active")))
    _shot(browser, tmp_path, "models")

    # Recommendations for a known user: ten items, personalised, with the user's seen items.
    browser.find_element(By.CSS_SELECTOR, "#tabs button[data-tab=try]").click()
    browser.find_element(By.ID, "try-user").send_keys("u0")
    browser.find_element(By.CSS_SELECTOR, "#try-form button").click()
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#rec-table tbody tr")))
    items = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#rec-table td.item")]
    assert len(items) == 10 and all(i.startswith("i") for i in items)
    assert browser.find_element(By.ID, "rec-source").text == "personalised"
    seen = browser.find_element(By.ID, "seen").text
    assert seen.startswith("Seen items (10): ") and not set(items) & set(seen.split(": ", 1)[1].split(", "))
    _shot(browser, tmp_path, "try")

    # A new user's items go to POST /recommend: its answer (folded-in items) or its error is shown as is.
    browser.find_element(By.ID, "try-items").send_keys("i0, i2, i4")
    browser.find_element(By.CSS_SELECTOR, "#try-form button").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#try-result p.err")
               or "Given items (3)" in d.find_element(By.ID, "try-result").text)
    shown = browser.find_element(By.ID, "try-result").text
    assert "Given items (3): i0, i2, i4" in shown or re.search(r"\b(404|405|422)\b", shown), shown
