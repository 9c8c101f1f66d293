"""Suite-wide rules: the quick default run, ``--all``, and services or packages missing under ``CI=true``.

* ``python -m pytest`` is the contributor's quick run: tests marked ``slow``, ``browser`` or ``postgres`` are
  deselected (the summary says how many). ``python -m pytest --all`` (the README's test command, so CI) runs
  every test; so does any run under ``CI=true``. An explicit ``-m`` expression chooses for itself, and a test
  file or test named on the command line runs whole (``python -m pytest tests/test_distributed.py``).
* A missing service (:func:`missing_service`) or a missing package (``pytest.importorskip``) skips with its
  reason, but under ``CI=true`` it fails: CI must run every test, so a skip there would hide a gap.
"""

import os
import sys

import pytest

# contract.py is imported as a plain module by the test files
sys.path.insert(0, os.path.dirname(__file__))

# the marks that take a quick run past five minutes or need a service; --all (and CI) runs them
OPT_IN_MARKS = ("slow", "browser", "postgres")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def missing_service(reason: str) -> None:
    """A test's outside service (Chromium, PostgreSQL, a mount) is absent: skip with the reason, fail under CI=true.

    ``tests/services.sh`` (run by the README's test command) installs and starts them where it can;
    CI must run every test, so there a missing service is a failure, not a skip.
    """
    if in_ci():
        pytest.fail(f"{reason} (CI=true: every test must run)")
    pytest.skip(reason)


_importorskip = pytest.importorskip


def importorskip(modname: str, *args, **kwargs):
    """``pytest.importorskip``, except that under ``CI=true`` a missing package fails the test (or its module)."""
    try:
        return _importorskip(modname, *args, **kwargs)
    except pytest.skip.Exception as skipped:
        if not in_ci():
            raise
        reason = skipped.msg
    pytest.fail(f"{reason} (CI=true: every test must run; install the extras of the README's test command)",
                pytrace=False)


# the rule holds for every test module, whether it calls importorskip at module level or inside a test
pytest.importorskip = importorskip


class LazyModule:
    """A module a test file needs, imported on first use inside a test rather than when the file is collected.

    ``transformers = LazyModule("transformers")`` at the top of a test file: collecting the file imports nothing
    (transformers or Lightning take seconds), and the first ``transformers.BertConfig`` inside a test imports it
    with ``pytest.importorskip``: a missing package skips that test, or fails it under ``CI=true``.
    """

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str):
        if attribute.startswith("_"):  # pytest's collection probes attributes such as __test__: import nothing
            raise AttributeError(attribute)
        return getattr(importorskip(self._name), attribute)

    def __repr__(self) -> str:
        return f"LazyModule({self._name!r})"


def pytest_addoption(parser):
    parser.addoption("--all", action="store_true", dest="run_all",
                     help=f"also run the tests marked {', '.join(OPT_IN_MARKS)} (the README's full test command)")


def runs_everything(config) -> bool:
    return config.getoption("run_all") or in_ci() or bool(config.getoption("markexpr"))


def named_files(config) -> set[str]:
    """The test files named on the command line (a directory, or the default ``testpaths``, names none)."""
    files = set()
    for arg in config.args:
        path = os.path.abspath(os.path.join(config.invocation_params.dir, arg.split("::")[0]))
        if os.path.isfile(path):
            files.add(path)
    return files


def pytest_collection_modifyitems(config, items):
    if runs_everything(config):
        return
    named = named_files(config)
    opt_in = [item for item in items if str(item.path) not in named
              and any(item.get_closest_marker(mark) for mark in OPT_IN_MARKS)]
    if opt_in:
        kept = set(map(id, items)) - set(map(id, opt_in))
        items[:] = [item for item in items if id(item) in kept]
        config.hook.pytest_deselected(items=opt_in)
        config._droplab_opt_in = len(opt_in)


def pytest_report_header(config):
    if runs_everything(config):
        return None
    return (f"quick run: tests marked {', '.join(OPT_IN_MARKS)} are deselected "
            "(python -m pytest --all runs them; see CONTRIBUTING.md)")


def pytest_terminal_summary(terminalreporter, config):
    count = getattr(config, "_droplab_opt_in", 0)
    if count:
        terminalreporter.write_line(f"quick run: {count} slow, browser or postgres tests deselected; "
                                    "python -m pytest --all runs every test")
