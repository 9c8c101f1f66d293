"""The documentation site: ``mkdocs build --strict`` passes offline, the nav covers every page, every image a page
shows exists, and ``docs/make_figures.py`` regenerates every committed figure as a valid PNG."""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import missing_service

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FIGURES = DOCS / "figures"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def mkdocs_config() -> dict:
    # mkdocs.yml may use !!python tags in principle; it does not, so the safe loader reads it
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))


def nav_pages(nav) -> list[str]:
    pages = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG, read from its IHDR chunk; raises if the file is not a PNG."""
    head = path.read_bytes()[:24]
    if head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise AssertionError(f"{path} is not a PNG file")
    return struct.unpack(">II", head[16:24])


def build_site(destination: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(destination)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


def test_mkdocs_build_strict_passes_offline(tmp_path):
    result = build_site(tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    config = mkdocs_config()
    assert config["theme"]["font"] is False  # no Google Fonts request at view time
    for page in nav_pages(config["nav"]):
        built = tmp_path / "site" / ("index.html" if page == "index.md" else page.removesuffix(".md") + "/index.html")
        assert built.exists(), f"{page} was not built"
    # nothing on any page is fetched from another host (fonts, scripts, styles)
    remote = re.compile(r"""<(?:script|link)[^>]+(?:src|href)=["']https?://""")
    offenders = [str(p.relative_to(tmp_path)) for p in (tmp_path / "site").rglob("*.html")
                 if remote.search(p.read_text())]
    assert offenders == []
    api = (tmp_path / "site" / "api" / "nn" / "index.html").read_text()
    assert "DropBlock2d" in api and "drop_path_rates" in api  # generated from the docstrings
    # docs/hooks/docstring_rst.py rendered the docstrings' reStructuredText markers
    assert ":math:" not in api and ":class:" not in api and ".. warning::" not in api


def test_a_broken_link_fails_the_strict_build(tmp_path):
    """The strict build can fail: a copy of the docs with one link to a missing page does not build."""
    import shutil

    shutil.copytree(DOCS, tmp_path / "docs", ignore=shutil.ignore_patterns("figures"))
    shutil.copytree(FIGURES, tmp_path / "docs" / "figures")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    index = tmp_path / "docs" / "index.md"
    index.write_text(index.read_text() + "\nSee [the missing page](guides/no-such-page.md).\n")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "s")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode != 0
    assert "no-such-page.md" in result.stdout + result.stderr


def test_nav_covers_every_page():
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    in_nav = nav_pages(mkdocs_config()["nav"])
    assert len(in_nav) == len(set(in_nav)), "a page is in the nav twice"
    assert pages == set(in_nav)


def test_every_image_a_page_shows_exists_and_is_a_png():
    image = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
    shown = []
    for page in DOCS.rglob("*.md"):
        for target in image.findall(page.read_text(encoding="utf-8")):
            path = (page.parent / target).resolve()
            assert path.exists(), f"{page.relative_to(ROOT)} shows {target}, which does not exist"
            shown.append(path)
            width, height = png_size(path)
            assert width > 100 and height > 100
    assert (FIGURES / "masks.png").resolve() in shown


def chromium_available() -> bool:
    sys.path.insert(0, str(DOCS))
    try:
        import make_figures
    finally:
        sys.path.remove(str(DOCS))
    return make_figures.chromium() is not None


@pytest.mark.slow
def test_make_figures_regenerates_every_committed_figure(tmp_path):
    groups = ["masks", "schedules", "benchmarks"]
    if chromium_available():
        groups.append("report")  # trains a 6-epoch comparison and screenshots its report
    elif os.environ.get("CI", "").lower() == "true":
        missing_service("headless Chromium is not installed, so the report screenshot cannot be regenerated: "
                        "apt-get install chromium chromium-driver")
    command = [sys.executable, str(DOCS / "make_figures.py"), "--out", str(tmp_path)]
    for group in groups:
        command += ["--only", group]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    made = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.png"))
    assert made == sorted(result.stdout.split())  # it prints what it wrote
    committed = sorted(str(p.relative_to(FIGURES)) for p in FIGURES.rglob("*.png"))
    expected = committed if "report" in groups else [name for name in committed if name != "compare-report.png"]
    assert made == expected  # every committed figure is regenerated, and nothing else is made
    for name in made:
        width, height = png_size(tmp_path / name)
        assert width >= 200 and height >= 200, name
    # the variants' pictures are masks drawn by droplab: more than one grey level, and not all dropped
    import matplotlib.image

    pixels = matplotlib.image.imread(tmp_path / "masks" / "dropout.png")
    assert len({round(float(v), 2) for v in pixels[..., 0].flatten()[::7]}) > 2


def test_docstring_rst_markers_are_rendered():
    sys.path.insert(0, str(DOCS / "hooks"))
    try:
        from docstring_rst import rst_to_html
    finally:
        sys.path.remove(str(DOCS / "hooks"))
    html = ("<p>keep :math:<code>1/q</code> :func:<code>f</code></p><p>.. warning::\n    it surprises</p>"
            "<p>Example::</p>")
    assert rst_to_html(html) == ('<p>keep <code>1/q</code> <code>f</code></p><div class="admonition warning">'
                                 '<p class="admonition-title">Warning</p><p>it surprises</p></div>'
                                 '<p><strong>Example:</strong></p>')
