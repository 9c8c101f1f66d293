"""Render a comparison report in headless Chromium: every image loads, no console error, keep a screenshot."""

import os
import shutil
from pathlib import Path

import pytest
from conftest import missing_service

from droplab.lab.report import write_report

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def fake_run(label, acc):
    history = [{"epoch": e, "train_acc": min(1.0, acc + 0.1 * e), "val_acc": acc + 0.01 * e, "train_loss": 1.0 / e,
                "val_loss": 1.0 + 0.1 * e, "gap": min(1.0, acc + 0.1 * e) - acc - 0.01 * e} for e in range(1, 6)]
    return {"label": label, "history": history, "train_acc": 0.95, "val_acc": acc, "best_val_acc": acc,
            "test_acc": acc, "train_loss": 0.2, "val_loss": 1.2, "best_val_loss": 1.1, "best_train_acc": 0.95,
            "best_train_loss": 0.2, "gap": 0.95 - acc, "ece": 0.1, "best_epoch": 1, "wall_time_s": 2.0,
            "reliability": {"confidence": [0.2, 0.5, 0.9], "accuracy": [0.1, 0.5, 0.8], "count": [3, 5, 9]}}


def test_report_renders_in_headless_chromium(tmp_path):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        missing_service(f"headless Chromium is not installed ({CHROMIUM}, {CHROMEDRIVER}): "
                        "as root, '. tests/services.sh' installs it (apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ModuleNotFoundError:
        pytest.fail("selenium is required: pip install -e '.[dev]'")

    verdict = {"headline": "Dropout helps <b>not bold</b>", "reasons": ["gap 0.3 -> 0.2"], "recommended": "p=0.5"}
    page = write_report(tmp_path / "report", [fake_run("p=0 <i>&</i>", 0.6), fake_run("p=0.5", 0.7)],
                        title="browser test <script>", verdict=verdict, config={"dataset": "mnist1d"})
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
                 "--window-size=1280,2400"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(page.as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth]);")
        assert sorted(src for src, _, _ in images) == ["curves.png", "gap.png", "reliability.png"]
        assert all(complete and width > 0 for _, complete, width in images), images
        assert driver.title == "browser test <script>"  # escaped in the source, shown literally
        assert driver.execute_script("return document.querySelectorAll('script, b, i').length") == 0
        errors = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
        assert errors == []
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "compare-report.png"))
        shutil.copy(page, ARTIFACTS / "compare-report.html")
        # the checks can fail: a missing PNG shows up as a broken image and a console error
        (page.parent / "gap.png").unlink()
        driver.get(page.as_uri())
        broken = driver.execute_script("return Array.from(document.images).filter(i => i.naturalWidth === 0).length")
        assert broken == 1
        assert any(entry["level"] == "SEVERE" for entry in driver.get_log("browser"))
    finally:
        driver.quit()
    assert (ARTIFACTS / "compare-report.png").stat().st_size > 10_000
