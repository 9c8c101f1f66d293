"""The documentation site: ``mkdocs build --strict`` passes offline, the nav covers every page, every image a page
shows exists, ``docs/make_figures.py`` regenerates every committed figure as a valid, legible PNG, and the API
reference has an entry for every public name, with its math typeset, its source linked and its references linked."""

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
# every package whose __all__ is public API; each must be a package of docs/api/reference.yml
PUBLIC_PACKAGES = ("droplab", "droplab.functional", "droplab.nn", "droplab.mc", "droplab.diagnostics",
                   "droplab.schedules", "droplab.deploy", "droplab.guards", "droplab.integrations", "droplab.lab",
                   "droplab.study")


def docs_module(name: str):
    """A module of docs/hooks (the build's own code), imported as the tests see it."""
    import importlib

    sys.path.insert(0, str(DOCS / "hooks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(DOCS / "hooks"))


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


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built once for the tests of this module by ``mkdocs build --strict``."""
    destination = tmp_path_factory.mktemp("docs") / "site"
    result = build_site(destination)
    assert result.returncode == 0, result.stdout + result.stderr
    return destination


def built_page(site: Path, page: str) -> Path:
    return site / ("index.html" if page == "index.md" else
                   page.removesuffix("index.md").removesuffix(".md").rstrip("/") + "/index.html")


def test_mkdocs_build_strict_passes_offline(site):
    config = mkdocs_config()
    assert config["theme"]["font"] is False  # no Google Fonts request at view time
    for page in nav_pages(docs_module("api_pages").build().nav) + nav_pages(config["nav"]):
        assert built_page(site, page).exists(), f"{page} was not built"
    # nothing on any page is fetched from another host (fonts, scripts, styles)
    remote = re.compile(r"""<(?:script|link)[^>]+(?:src|href)=["']https?://""")
    offenders = [str(p.relative_to(site)) for p in site.rglob("*.html") if remote.search(p.read_text())]
    assert offenders == []
    api = (site / "api" / "nn" / "dropout" / "index.html").read_text()
    assert "DropBlock2d" in (site / "api" / "nn" / "index.html").read_text()  # generated from the docstrings
    # docs/hooks/docstring_rst.py rendered the docstrings' reStructuredText markers
    assert ":math:" not in api and ":class:" not in api and ".. warning::" not in api and "Example::" not in api


@pytest.mark.slow  # a second full build
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
    """Every page is in the nav once: the written ones (docs/**/*.md) and the generated API reference."""
    generated = docs_module("api_pages").build()
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    in_nav = nav_pages(mkdocs_config()["nav"])
    assert "api/index.md" in in_nav  # the hook expands this entry into the reference's pages
    in_nav = [page for page in in_nav if page != "api/index.md"] + nav_pages(generated.nav)
    assert len(in_nav) == len(set(in_nav)), "a page is in the nav twice"
    source_pages = {uri for uri in generated.pages if uri.startswith("api/source/")}  # linked from entries only
    assert pages | set(generated.pages) - source_pages == set(in_nav)


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


def test_docstring_rst_markers_become_markdown():
    """docs/hooks/docstring_rst.py: math for arithmatex, roles as optional cross-references, warnings as
    admonitions, ``Example::`` blocks as pycon code."""
    rst_to_markdown = docs_module("docstring_rst").rst_to_markdown
    resolve = {"Dropout": "droplab.nn.dropout.Dropout", "droplab.functional.dropout": "droplab.functional.dropout"}.get
    text = ("Keep with :math:`q = 1 - p`, see :class:`Dropout` and :func:`~droplab.functional.dropout`.\n"
            "\n"
            ".. math::\n"
            "    y = x \\odot m / q\n"
            "\n"
            "Example::\n"
            "\n"
            "    >>> m = Dropout(0.5)\n"
            "\n"
            ".. warning::\n"
            "    It surprises\n"
            "    on two lines.\n")
    assert rst_to_markdown(text, resolve) == (
        "Keep with \\(q = 1 - p\\), see "
        '<autoref identifier="droplab.nn.dropout.Dropout" optional><code>Dropout</code></autoref> and '
        '<autoref identifier="droplab.functional.dropout" optional><code>dropout()</code></autoref>.\n'
        "\n\n$$\ny = x \\odot m / q\n$$\n\n"
        "\n**Example:**\n\n```pycon\n>>> m = Dropout(0.5)\n```\n\n"
        "\n\n!!! warning\n    It surprises\n    on two lines.\n")
    # a one-line directive, and an indented block inside a section keeps its indentation
    assert rst_to_markdown("    .. math:: a = b\n") == "\n    $$\n    a = b\n    $$\n"
    # a name the docstring's scope cannot resolve is plain code: no link is guessed
    assert rst_to_markdown(":class:`Unknown`") == "<code>Unknown</code>"


# ---- the API reference --------------------------------------------------------------------------------------------

def test_every_public_name_has_an_entry_in_the_reference_data():
    """Each name in each public ``__all__`` is a member of docs/api/reference.yml, and each member exists; a new
    public name fails here with the package and the pages it can be added to."""
    api = docs_module("api_pages")
    packages = api.load_reference()
    assert api.undocumented(packages, PUBLIC_PACKAGES) == []
    assert api.stale(packages) == []


def test_a_public_name_without_an_entry_is_reported_with_its_pages():
    api = docs_module("api_pages")
    packages = api.load_reference()
    nn = next(package for package in packages if package.name == "droplab.nn")
    nn.groups[0].members = [m for m in nn.groups[0].members if m.name != "Dropout"]
    [message] = api.undocumented(packages, PUBLIC_PACKAGES)
    assert message.startswith("droplab.nn.Dropout is public (droplab.nn.__all__) but the API reference has no entry")
    assert "'Dropout layers' (api/nn/dropout.md)" in message and "docs/api/reference.yml" in message
    nn.groups[0].members.append(api.Member("droplab.nn", "NoSuchDropout"))
    assert "droplab.nn.NoSuchDropout" in " ".join(api.stale(packages))


def element_ids(site: Path) -> dict[str, Path]:
    """``{id: page}`` over the built API reference (not the source pages)."""
    ids = {}
    for page in (site / "api").rglob("index.html"):
        if "source" not in page.relative_to(site / "api").parts:
            for found in re.finditer(r'\bid="([^"]+)"', page.read_text(encoding="utf-8")):
                ids.setdefault(found[1], page)
    return ids


def test_the_built_reference_has_an_entry_for_every_public_name(site):
    import importlib

    ids = element_ids(site)
    missing = [f"{package}.{name}" for package in PUBLIC_PACKAGES
               for name in importlib.import_module(package).__all__ if f"{package}.{name}" not in ids]
    assert missing == []
    # the entries that modules named like their function used to hide, each with its docstring
    for path, summary in [("droplab.mc.predict", "Monte-Carlo dropout"),
                          ("droplab.functional.dropout", "Randomly zero elements of"),
                          ("droplab.diagnostics.lint", "Check where a model applies dropout")]:
        html = ids[path].read_text(encoding="utf-8")
        heading = re.search(rf'<h2 id="{re.escape(path)}" class="doc doc-heading">', html)
        assert heading, f"{path} is not an entry's heading"
        assert summary in html[heading.end():heading.end() + 6000]


@pytest.mark.parametrize("page, first", [("nn/dropout", "droplab.nn.Dropout"),
                                         ("functional/dropout", "droplab.functional.dropout"),
                                         ("mc/predict", "droplab.mc.predict"),
                                         ("diagnostics/lint", "droplab.diagnostics.lint")])
def test_the_most_important_entry_comes_first(site, page, first):
    package = page.split("/")[0]
    overview = (site / "api" / package / "index.html").read_text(encoding="utf-8")
    groups = re.findall(r'<h2 id="[^"]*"><a href="([^"]+)"', overview)
    assert groups[0].rstrip("/").endswith(page.split("/")[1]), groups  # the first group listed is this page
    html = (site / "api" / page / "index.html").read_text(encoding="utf-8")
    assert re.findall(r'<h2 id="([^"]+)" class="doc doc-heading">', html)[0] == first


def test_each_entry_links_to_the_line_of_its_source(site):
    from droplab import __file__ as droplab_init

    source_root = Path(droplab_init).resolve().parents[1]
    link = re.compile(r'<h2 id="([^"]+)" class="doc doc-heading">(?:(?!</h2>).)*'
                      r'<a class="doc-source-link" href="([^"]+)" title="([^"]+), line (\d+)">\[source\]</a></h2>',
                      re.DOTALL)
    checked = 0
    for page in (site / "api").rglob("index.html"):
        html = page.read_text(encoding="utf-8")
        if "source" in page.relative_to(site / "api").parts:
            continue
        headings = re.findall(r'<h2 id="([^"]+)" class="doc doc-heading">', html)
        linked = link.findall(html)
        assert [found[0] for found in linked] == headings, f"{page}: an entry has no [source] link"
        for path, href, file, line in linked:
            target, _, anchor = href.partition("#")
            target_page = (page.parent / target / "index.html").resolve()
            assert target_page.exists(), href
            assert f'id="{anchor}"' in target_page.read_text(encoding="utf-8"), href
            assert anchor == f"__codelineno-0-{line}"
            lines = (source_root / file).read_text(encoding="utf-8").splitlines()[int(line) - 1:]
            text = next(row for row in lines if not row.lstrip().startswith("@"))  # a decorated def: its decorator
            name = path.rsplit(".", 1)[-1]
            assert line == "1" or re.match(rf"\s*(class |def |async def )?{re.escape(name)}\b", text), (path, text)
            checked += 1
    assert checked > 100


def test_references_between_entries_are_links(site):
    dropout = (site / "api" / "nn" / "dropout" / "index.html").read_text(encoding="utf-8")
    # Dropout's warning names droplab.functional.InputDtypeError: a link to that entry
    assert re.search(r'<a class="autorefs autorefs-internal"[^>]* href="\.\./\.\./functional/seeds/'
                     r'#droplab\.functional\.InputDtypeError"', dropout)
    structured = (site / "api" / "nn" / "structured" / "index.html").read_text(encoding="utf-8")
    warning = structured[structured.index('class="admonition warning"'):]
    assert re.search(r'<a class="autorefs autorefs-internal"[^>]* href="\.\./\.\./schedules/', warning)


def test_math_is_marked_for_the_vendored_katex(site):
    uncertainty = (site / "api" / "mc" / "uncertainty" / "index.html").read_text(encoding="utf-8")
    assert uncertainty.count('<span class="arithmatex">') >= 6  # each metric's formula
    assert r"\(I[y; \omega] = H[\bar p]" in uncertainty  # the docstring's LaTeX, for KaTeX in the browser
    lstm = (site / "api" / "nn" / "sequences" / "index.html").read_text(encoding="utf-8")
    assert '<div class="arithmatex">\\[' in lstm  # VariationalLSTM's displayed equations
    for page in site.rglob("*.html"):
        assert ":math:" not in page.read_text(encoding="utf-8") or "source" in page.parts, page
    # the renderer and every font it asks for are part of the site
    katex = site / "assets" / "katex"
    css = (katex / "katex.min.css").read_text(encoding="utf-8")
    fonts = re.findall(r"url\(([^)]+)\)", css)
    assert len(fonts) >= 20 and all((katex / font).exists() for font in fonts)
    assert (katex / "katex.min.js").stat().st_size > 100_000
    assert 'src="../../../assets/katex/katex.min.js"' in uncertainty


def test_a_figure_with_text_too_small_for_the_page_is_refused(tmp_path):
    """make_figures.save refuses a figure whose smallest text would be under 10 px in the content column (the
    mask overview's panel titles were 4.5 px); every committed figure is saved through it."""
    sys.path.insert(0, str(DOCS))
    try:
        import make_figures
    finally:
        sys.path.remove(str(DOCS))
    plt = make_figures.pyplot()
    old_overview = plt.figure(figsize=(15, 6.8), dpi=100)  # the old mask overview: 1500 px wide, 9 pt titles
    old_overview.add_subplot().set_title("Dropout p=0.5", fontsize=9)
    assert make_figures.smallest_text_px(old_overview) == pytest.approx(9 * 100 / 72 * 680 / 1500)
    with pytest.raises(SystemExit, match="masks.png: text 5.7 px high"):
        make_figures.save(old_overview, tmp_path / "masks.png")
    assert not (tmp_path / "masks.png").exists()
    legible = plt.figure(figsize=(10, 5.8), dpi=150)
    legible.add_subplot().set_title("Dropout\np=0.5", fontsize=11.5)
    assert make_figures.smallest_text_px(legible) >= 10
    assert make_figures.save(legible, tmp_path / "ok.png").exists()
