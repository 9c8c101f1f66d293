"""The suite's own rules (tests/conftest.py), run on small test files in a scratch directory with a copy of it:
``importorskip`` skips, but fails under ``CI=true``; the quick run deselects slow tests, ``--all`` runs them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")

MISSING_PACKAGE = '''
import pytest

missing = pytest.importorskip("droplab_no_such_package")


def test_never_runs():
    pass
'''

MISSING_IN_A_TEST = '''
import pytest
from conftest import LazyModule

absent = LazyModule("droplab_no_such_package")


def test_needs_a_missing_package():
    pytest.importorskip("droplab_no_such_package")


def test_uses_a_lazy_module():
    absent.anything


def test_present_package():
    assert pytest.importorskip("json").dumps(1) == "1"
'''

MARKED = '''
import pytest


def test_quick():
    pass


@pytest.mark.slow
def test_slow():
    pass


@pytest.mark.browser
def test_browser():
    pass
'''


def run_pytest(tmp_path: Path, files: dict[str, str], *args: str, ci: bool = False) -> tuple[dict[str, int], str]:
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    if ci:
        env["CI"] = "true"
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", *args],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    summary = result.stdout.strip().splitlines()[-1]
    counts = {word: int(number) for number, word in re.findall(r"(\d+) (passed|failed|skipped|deselected|error)",
                                                             summary)}
    return counts, result.stdout


FILES = {"test_module_level.py": MISSING_PACKAGE, "test_in_tests.py": MISSING_IN_A_TEST, "test_marked.py": MARKED}


@pytest.mark.parametrize("args, ci, expected", [
    # the quick run: importorskip skips (3), the slow and browser tests are deselected
    ((), False, {"passed": 2, "skipped": 3, "deselected": 2}),
    # --all: every test runs; a missing package still skips outside CI
    (("--all",), False, {"passed": 4, "skipped": 3}),
    # CI=true: every test runs, and a missing package fails (its module's collection, and the two tests)
    (("--continue-on-collection-errors",), True, {"passed": 4, "failed": 2, "error": 1}),
    # a file named on the command line runs whole
    (("test_marked.py",), False, {"passed": 3}),
])
def test_quick_run_and_missing_packages(tmp_path, args, ci, expected):
    (tmp_path / "pyproject.toml").write_text('[tool.pytest.ini_options]\nmarkers = ["slow: s", "browser: b"]\n')
    counts, out = run_pytest(tmp_path, FILES, *args, ci=ci)
    assert counts == expected, out
    if expected.get("skipped"):
        assert "could not import 'droplab_no_such_package'" in out
    if ci:
        assert out.count("CI=true: every test must run") >= 3, out
    if expected.get("deselected"):
        assert "quick run: 2 slow, browser or postgres tests deselected; python -m pytest --all runs every test" in out
