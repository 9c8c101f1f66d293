"""The built documentation site in headless Chromium, served over local HTTP: the home page, a guide and an API page
render, the search finds "DropBlock", and no page logs a console error.

Needs Chromium and chromedriver at /usr/bin (``apt-get install chromium chromium-driver``): skipped with that reason
when they are missing, except under ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import missing_service

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def require_chromium() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    if missing:  # tests/services.sh installs them where it can
        missing_service(f"headless Chromium is not installed ({', '.join(missing)}): "
                        "apt-get install chromium chromium-driver")
    try:
        import selenium  # noqa: F401
    except ModuleNotFoundError:
        pytest.fail("selenium is required: pip install -e '.[dev]'")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site built with ``mkdocs build --strict`` and served on a free local port; yields its base URL."""
    require_chromium()
    directory = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(directory)],
                           cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert built.returncode == 0, built.stdout + built.stderr

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser(site, tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update", "--window-size=1280,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]


def open_page(driver, url: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")


def broken_images(driver) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src);")


@pytest.mark.parametrize("path, heading, text", [
    ("/", "droplab", "Dropout regularization for PyTorch"),
    ("/guides/contract/", "The dropout contract and the two scaling conventions", "E[ y_train ] = y_inference"),
    ("/api/nn/", "droplab.nn", "DropBlock2d"),
])
def test_page_renders_without_console_errors(browser, site, path, heading, text):
    open_page(browser, site + path)
    title = browser.execute_script("return document.querySelector('article h1').textContent")
    assert title.replace("\u00b6", "").strip() == heading  # without the permalink sign
    assert text in browser.execute_script("return document.querySelector('article').innerText")
    assert "droplab" in browser.title
    assert broken_images(browser) == []
    # Material's own stylesheet applied (a bare, unstyled page would still contain the text)
    assert browser.execute_script("return getComputedStyle(document.querySelector('.md-header')).position") in (
        "sticky", "fixed")
    assert console_errors(browser) == []


def test_search_finds_dropblock(browser, site):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(browser, site + "/")
    box = browser.find_element(By.CSS_SELECTOR, "input.md-search__input")  # in the header at this window width
    WebDriverWait(browser, 10).until(lambda d: box.is_displayed())
    box.click()
    box.send_keys("DropBlock")

    def results(driver):
        items = driver.find_elements(By.CSS_SELECTOR, ".md-search-result__item")
        return items if items else False

    items = WebDriverWait(browser, 30).until(results)
    text = " ".join(item.text for item in items)
    assert "DropBlock" in text
    links = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, ".md-search-result__link")]
    assert any("/api/" in link for link in links), links  # the generated API reference is indexed too
    # a nonsense query finds nothing: the check above is not satisfied by any text at all
    box.clear()
    box.send_keys("zzqxjv")
    WebDriverWait(browser, 30).until(
        lambda d: "No matching" in d.find_element(By.CSS_SELECTOR, ".md-search-result__meta").text)
    assert console_errors(browser) == []


def reference_and_guide_paths() -> list[str]:
    """The URL path of every API reference page (not the source pages) and every guide."""
    sys.path.insert(0, str(ROOT / "docs" / "hooks"))
    try:
        import api_pages
    finally:
        sys.path.remove(str(ROOT / "docs" / "hooks"))
    pages = [uri for uri in api_pages.build().pages if not uri.startswith("api/source/")]
    pages += [str(p.relative_to(ROOT / "docs")) for p in sorted((ROOT / "docs" / "guides").rglob("*.md"))]
    return ["/" + page.removesuffix("index.md").removesuffix(".md").rstrip("/") + "/" for page in pages]


MATH_AND_CODE = """
const blocks = Array.from(document.querySelectorAll('article pre > code'))
    .filter(code => !code.closest('.highlighttable'));  // a source page's numbered lines scroll instead
return {
  marked: document.querySelectorAll('article .arithmatex').length,
  typeset: document.querySelectorAll('article .arithmatex .katex').length,
  errors: Array.from(document.querySelectorAll('.katex-error')).map(e => e.title || e.textContent),
  cut: blocks.filter(code => code.scrollWidth > code.clientWidth + 1).map(code => code.textContent.slice(0, 80)),
  blocks: blocks.length,
};
"""


def test_every_formula_is_typeset_and_no_code_block_is_cut(browser, site):
    """On every API page and guide: each formula typeset by the vendored KaTeX (no parse error), and every code
    block shown whole at a laptop's window width (wrapped, not hidden behind a scrollbar)."""
    formulas = blocks = 0
    for path in reference_and_guide_paths():
        open_page(browser, site + path)
        page = browser.execute_script(MATH_AND_CODE)
        assert page["typeset"] == page["marked"] and page["errors"] == [], (path, page)
        assert page["cut"] == [], (path, page["cut"])
        formulas, blocks = formulas + page["marked"], blocks + page["blocks"]
        assert console_errors(browser) == [], path
    assert formulas > 150 and blocks > 100
    # KaTeX's fonts came from the site itself
    open_page(browser, site + "/api/mc/uncertainty/")
    fonts = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name).filter(n => n.includes('KaTeX_'))")
    assert fonts and all(font.startswith(site) for font in fonts), fonts
