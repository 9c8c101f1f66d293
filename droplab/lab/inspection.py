"""What ``droplab inspect MODEL`` reports: a model's dropout sites and what :func:`droplab.diagnostics.lint` finds.

``MODEL`` is ``package.module:factory``, ``path/to/file.py:factory`` or a checkpoint saved by the lab
(``droplab compare --save``). A factory is called without arguments and returns the model, or
``(model, example_input)``; ``--input-shape`` gives a random example input instead. With an example
input the runtime checks run too (missing test-time scale, stochastic at eval); a lab checkpoint uses
a batch of its own test data. Anything the user's file, factory or forward raises is a
:class:`~droplab.lab.errors.UserCodeError`; a model that cannot be loaded is a
:class:`~droplab.lab.errors.UserError`. The command is :mod:`droplab.commands.inspect`.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import pickle
import sys
from pathlib import Path

import torch
from torch import nn

from .errors import MissingFileError, UserCodeError, UserError, user_errors

__all__ = ["load_model", "inspect_model", "print_report"]


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        shape = ()
    if not shape or any(n < 1 for n in shape):
        raise UserError(f"--input-shape must be positive integers separated by commas (e.g. 8,40), but got {text!r}")
    return shape


#: the largest random example input ``--input-shape`` may ask for: 2**28 float32 elements (1 GiB)
MAX_EXAMPLE_ELEMENTS = 2**28


def _example_input(shape: tuple[int, ...]) -> torch.Tensor:
    """A seeded random input of ``shape``; a shape too large for memory is the user's error, not the allocator's."""
    elements = math.prod(shape)
    if elements > MAX_EXAMPLE_ELEMENTS:
        raise UserError(f"--input-shape {','.join(map(str, shape))} asks for {elements:,} elements "
                        f"({4 * elements / 2**30:,.1f} GiB of float32); a lint example needs a small batch "
                        f"(at most {MAX_EXAMPLE_ELEMENTS:,} elements), e.g. 8,{','.join(map(str, shape[1:])) or '40'}")
    try:
        return torch.randn(shape, generator=torch.Generator().manual_seed(0))
    except RuntimeError as error:  # the allocator's "can't allocate memory"
        raise UserError(f"--input-shape {','.join(map(str, shape))} does not fit in memory here ({error}); give a "
                        "smaller batch") from None


def _import_target(target: str):
    """The module ``target`` names (a file or a dotted module); an exception its code raises is the user's."""
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target)
        if not path.is_file():
            raise MissingFileError(f"no such file: {path}" + (" (a directory)" if path.is_dir() else ""))
        from .factories import importable_beside

        module_spec = importlib.util.spec_from_file_location(f"_droplab_inspect_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_spec.name] = module
        importable_beside(path)
        try:
            module_spec.loader.exec_module(module)
        except Exception as error:  # anything the user's file raises while it is imported
            sys.modules.pop(module_spec.name, None)
            raise UserCodeError(f"importing {path}", error, (str(path.resolve()),)) from None
        return module
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as error:
        if error.name and target.startswith(error.name):  # the module itself is missing, not one it imports
            raise UserError(f"cannot import {target}: no module named {error.name} (is it installed, or on "
                            "PYTHONPATH? a file path needs .py)") from None
        raise UserCodeError(f"importing {target}", error) from None
    except Exception as error:
        raise UserCodeError(f"importing {target}", error) from None


def _load_factory(spec: str) -> object:
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise UserError(f"MODEL must be package.module:factory, path/to/file.py:factory or a checkpoint file, "
                        f"but got {spec!r}")
    module = _import_target(target)
    factory = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise UserError(f"{target} has no attribute {attr!r}")
        factory = getattr(factory, part)
    if not callable(factory) or isinstance(factory, nn.Module):
        return factory
    try:
        return factory()
    except Exception as error:  # the user's factory failed
        raise UserCodeError(f"{spec}()", error, (str(getattr(module, "__file__", "") or ""),)) from None


def _load_checkpoint(path: Path) -> tuple[nn.Module, torch.Tensor]:
    from .config import ExperimentConfig
    from .models import build_model
    from .preflight import check_datasets, dataset_key
    from .trainer import load_checkpoint

    with user_errors(f"checkpoint {path} cannot be inspected (corrupt, truncated, or not a lab checkpoint)",
                     (RuntimeError, ValueError, KeyError, TypeError, EOFError, OSError, pickle.UnpicklingError)):
        state = load_checkpoint(path)
        config = ExperimentConfig.from_dict(state["config"]).replace(device="cpu")
    splits = check_datasets([config])[dataset_key(config)]
    model = build_model(config, splits.n_features, splits.n_classes)
    with user_errors(f"checkpoint {path} does not match its stored config (corrupt or edited)",
                     (RuntimeError, KeyError)):
        model.load_state_dict(state["model"])
    return model.eval(), splits.test.x[:64]


def load_model(spec: str, input_shape: str | None = None) -> tuple[nn.Module, object, str]:
    """``(model, example_input or None, description)`` for a MODEL argument."""
    path = Path(spec)
    if path.is_file() and ":" not in spec.replace("\\", "/").split("/")[-1]:
        model, example = _load_checkpoint(path)
        how = f"lab checkpoint {path}"
    else:
        loaded = _load_factory(spec)
        example = None
        if isinstance(loaded, tuple) and len(loaded) == 2 and isinstance(loaded[0], nn.Module):
            loaded, example = loaded
        if not isinstance(loaded, nn.Module):
            raise UserError(f"{spec} must give a torch.nn.Module (or a (model, example_input) pair), "
                            f"but gave {type(loaded).__name__}")
        model = loaded
        example = example if example is not None else getattr(model, "example_input", None)
        how = f"factory {spec}"
    if input_shape is not None:
        example = _example_input(_parse_shape(input_shape))
    return model, example, how


def inspect_model(model: nn.Module, example_input: object = None, *, for_inference: bool = False,
                  probe_samples: int = 200) -> dict:
    """Sites and lint findings of ``model`` as plain data (what ``--json`` prints)."""
    from .. import sites
    from ..diagnostics import lint

    findings = lint(model, example_input, for_inference=for_inference, probe_samples=probe_samples)
    found = sites(model, example_input)
    return {"model": type(model).__name__, "training": model.training,
            "parameters": sum(p.numel() for p in model.parameters()),
            "sites": [site.as_row() for site in found if site.is_dropout],
            "random_ops": [{"name": site.name, "note": site.note} for site in found if not site.is_dropout],
            "findings": [f.as_row() for f in findings],
            "errors": len(findings.errors), "traced_with": findings.traced_with, "note": findings.note,
            "skipped": findings.skipped, "example_input": example_input is not None}


def _print_plain(report: dict, source: str, out) -> None:
    print(f"{report['model']} from {source}: {report['parameters']:,} parameters, "
          f"{'train' if report['training'] else 'eval'} mode, analysed with {report['traced_with']}", file=out)
    print(f"\ndropout sites ({len(report['sites'])}):", file=out)
    if report["sites"]:
        columns = ["name", "kind", "p", "scaling", "library", "training"]
        rows = [[str(site[c]) for c in columns] for site in report["sites"]]
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
        print("  " + "  ".join(c.ljust(w) for c, w in zip(columns, widths)), file=out)
        for row in rows:
            print("  " + "  ".join(v.ljust(w) for v, w in zip(row, widths)), file=out)
    else:
        print("  none", file=out)
    _print_site_notes(report, out)
    print(f"\nfindings ({len(report['findings'])}):", file=out)
    for f in report["findings"]:
        print(f"  [{f['severity']}] {f['rule']} at {f['path']}: {f['message']}", file=out)
        print(f"      why: {f['why']}", file=out)
        print(f"      fix: {f['fix']}", file=out)
    if not report["findings"]:
        print("  none", file=out)
    _print_notes(report, out)


def _print_site_notes(report: dict, out) -> None:
    """Why a library site is left unconverted, and the random ops that are not dropout."""
    for site in report["sites"]:
        if site.get("note"):
            print(f"  {site['name']}: {site['note']}", file=out)
    if report["random_ops"]:
        print(f"\nrandom ops, not converted ({len(report['random_ops'])}):", file=out)
        for op in report["random_ops"]:
            print(f"  {op['name']}: {op['note']}", file=out)


def _print_notes(report: dict, out) -> None:
    if report["note"]:
        print(f"\nnote: {report['note']}", file=out)
    for skipped in report["skipped"]:
        print(f"not checked: {skipped}", file=out)


def _print_rich(report: dict, source: str, out) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out)
    console.print(f"[bold]{report['model']}[/] from {source}: {report['parameters']:,} parameters, "
                  f"{'train' if report['training'] else 'eval'} mode, analysed with {report['traced_with']}")
    sites_table = Table(title=f"dropout sites ({len(report['sites'])})", title_justify="left")
    for column in ("name", "kind", "p", "scaling", "library", "training"):
        sites_table.add_column(column)
    for site in report["sites"]:
        sites_table.add_row(*(str(site[c]) for c in ("name", "kind", "p", "scaling", "library", "training")))
    console.print(sites_table)
    _print_site_notes(report, out)
    colours = {"error": "red", "warning": "yellow", "info": "cyan"}
    findings = Table(title=f"findings ({len(report['findings'])})", title_justify="left", show_lines=True)
    for column in ("severity", "rule", "path"):
        findings.add_column(column, no_wrap=True)
    for column in ("message", "fix"):
        findings.add_column(column, overflow="fold")
    for f in report["findings"]:
        findings.add_row(f"[{colours[f['severity']]}]{f['severity']}[/]", f["rule"], f["path"], f["message"],
                         f["fix"])
    console.print(findings)
    _print_notes(report, out)


def print_report(report: dict, source: str, out, *, plain: bool = False) -> None:
    """Print ``report`` (:func:`inspect_model`) as tables: rich's when installed and ``plain`` is False."""
    if not plain:
        try:
            _print_rich(report, source, out)
            return
        except ModuleNotFoundError:
            pass
    _print_plain(report, source, out)
