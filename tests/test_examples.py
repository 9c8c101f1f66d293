"""Every documented example runs: the README's and the docs' ```python blocks, and every docstring ``>>>`` example.

The setup convention (what an example may assume):

* **Docstring examples** (``>>>`` in ``droplab/``) run with doctest, one test per docstring, in a copy of their
  module's globals plus four names: ``torch``, ``nn`` (``torch.nn``), ``F`` (``torch.nn.functional``) and
  ``dl`` (``droplab``). ``torch.manual_seed(0)`` runs before each docstring. Any other name an example needs
  (a model, an input ``x``) is defined in the example itself. Output is compared with ``ELLIPSIS`` and
  ``NORMALIZE_WHITESPACE``; an expected exception is written as doctest's ``Traceback (most recent call last):``.
* **Markdown blocks** (README.md and docs/**/*.md): every block fenced as ```` ```python ```` runs, in order, in
  one namespace per page (a later block may use what an earlier block of the same page defined, nothing else:
  imports are written out). The page runs in a fresh temporary directory (files it writes go there), after
  ``torch.manual_seed(0)``. A block that must not run is fenced as ```` ```text ```` or ```` ```bash ````, or is
  preceded (on the line right above its fence) by ``<!-- not-run: REASON -->``, where REASON says why, e.g.
  ``<!-- not-run: needs a CUDA device -->``; a marker without a reason is an error.

Keep examples small: the whole module runs in well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import ast
import doctest
import importlib
import re
from pathlib import Path

import pytest
import torch

import droplab

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)\s*(?P<info>[^\n`]*)$")
NOT_RUN = re.compile(r"^\s*<!--\s*not-run:(?P<reason>.*?)-->\s*$")
DOCTEST_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


# ---- Markdown ---------------------------------------------------------------------------------------------------

def python_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """``(line, source, not_run_reason)`` for every ```python block of a Markdown text, in order."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence[0] * len(fence)):
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        i += 1  # the closing fence
        if opening["info"].strip().split(" ")[0].lower() not in ("python", "py"):
            continue
        marker = NOT_RUN.match(lines[start - 2]) if start >= 2 else None
        reason = marker["reason"].strip() if marker else None
        if marker and not reason:
            raise ValueError(f"line {start - 1}: <!-- not-run: --> needs a reason after the colon")
        blocks.append((start + 1, "\n".join(body) + "\n", reason))
    return blocks


def markdown_pages() -> list[Path]:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [page for page in pages if page.exists()]


def run_page(text: str, label: str) -> int:
    """Run a page's ```python blocks in order in one namespace; return how many ran."""
    torch.manual_seed(0)
    namespace: dict = {"__name__": "__docs__"}
    ran = 0
    for line, source, reason in python_blocks(text):
        if reason is not None:
            continue
        try:
            exec(compile(source, f"{label}:{line}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"{label}: the ```python block at line {line} failed: "
                                 f"{type(error).__name__}: {error}") from error
        ran += 1
    return ran


@pytest.mark.parametrize("page", markdown_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_python_blocks_run(page, tmp_path, monkeypatch, registries_restored):
    monkeypatch.chdir(tmp_path)
    run_page(page.read_text(encoding="utf-8"), str(page.relative_to(ROOT)))


def test_block_parser_reads_fences_and_markers():
    text = ("intro\n```python\nx = 1\n```\n<!-- not-run: needs a GPU -->\n```python\ncuda()\n```\n"
            "```text\nnot python\n```\n- item\n\n    ```python\n    y = 2\n    ```\n")
    assert python_blocks(text) == [(3, "x = 1\n", None), (7, "cuda()\n", "needs a GPU"), (15, "y = 2\n", None)]
    with pytest.raises(ValueError, match="needs a reason"):
        python_blocks("<!-- not-run: -->\n```python\nx\n```\n")


def test_blocks_share_a_page_namespace_and_a_failure_names_its_line():
    assert run_page("```python\nx = 2\n```\ntext\n```python\nassert x == 2\n```\n", "ok.md") == 2
    with pytest.raises(AssertionError, match="bad.md: the ```python block at line 5 failed: RuntimeError: boom"):
        run_page("```python\nx = 1\n```\n```python\nraise RuntimeError('boom')\n```\n", "bad.md")


# ---- docstrings -------------------------------------------------------------------------------------------------

def docstrings(body: list, prefix: str) -> list[tuple[str, str]]:
    """``(doctest name, docstring)`` of the classes and functions in ``body`` and of their members, as
    ``doctest.DocTestFinder`` names them (``module.Class.method``)."""
    found = []
    for node in body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            name = f"{prefix}.{node.name}"
            found.append((name, ast.get_docstring(node, clean=False) or ""))
            if isinstance(node, ast.ClassDef):
                found += docstrings(node.body, name)
    return found


def docstring_tests() -> list:
    """``(module, doctest name)`` for every docstring with examples in droplab, read from the sources: collecting
    imports nothing (the integration modules import Lightning and transformers); each test imports its module."""
    tests = []
    for path in sorted((ROOT / "droplab").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if ">>>" not in text:
            continue
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(text)
        for name, doc in [(module, ast.get_docstring(tree, clean=False) or ""), *docstrings(tree.body, module)]:
            if ">>>" in doc:
                tests.append(pytest.param(module, name, id=name))
    return tests


def docstring_test(module: str, name: str) -> doctest.DocTest:
    try:
        imported = importlib.import_module(module)
    except ImportError as missing:  # an optional dependency (lightning, triton ...) absent: say which
        if (getattr(missing, "name", None) or "").startswith("droplab"):
            raise  # a broken droplab import is a failure, never a skip
        pytest.skip(f"{module}: {missing}")
    found = [test for test in doctest.DocTestFinder().find(imported, module) if test.name == name and test.examples]
    assert found, f"{name} has a >>> example in its source, but doctest does not find it"
    return found[0]


SETUP = {"torch": torch, "nn": torch.nn, "F": torch.nn.functional, "dl": droplab}


@pytest.fixture
def registries_restored():
    """An example may register a conversion (as users do); the registries are put back after it."""
    from droplab.conversion import CONVERSIONS, LIBRARY_RULES

    saved = dict(CONVERSIONS), dict(LIBRARY_RULES)
    yield
    for registry, before in zip((CONVERSIONS, LIBRARY_RULES), saved):
        registry.clear()
        registry.update(before)


@pytest.mark.parametrize("module, name", docstring_tests())
def test_docstring_examples_run(module, name, registries_restored):
    test = docstring_test(module, name)
    test.globs = {**test.globs, **SETUP}
    torch.manual_seed(0)
    report: list[str] = []
    runner = doctest.DocTestRunner(optionflags=DOCTEST_FLAGS)
    result = runner.run(test, out=report.append, clear_globs=True)
    assert result.failed == 0, "".join(report)
