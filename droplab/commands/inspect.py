"""``droplab inspect MODEL``: the dropout sites of a model and what :func:`droplab.diagnostics.lint` finds.

``MODEL`` is ``package.module:factory``, ``path/to/file.py:factory`` or a checkpoint saved by the lab
(``droplab compare --save``); see :mod:`droplab.lab.inspection`. Exit status: 0 when no finding has
severity ``error``, 1 when one does (so CI pipelines can gate on it), 2 when anything stopped the
inspection (the model cannot be loaded, the user's code raised, the input shape does not fit).
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL",
                        help="package.module:factory, path/to/file.py:factory, or a lab checkpoint (.pt)")
    parser.add_argument("--input-shape", default=None, metavar="N,D,...",
                        help="shape of a random example input (enables the runtime checks)")
    parser.add_argument("--for-inference", action="store_true",
                        help="the model is meant for deterministic inference: train mode is an error")
    parser.add_argument("--probe-samples", type=int, default=200,
                        help="training passes per custom module in the test-time-scale probe (default: 200)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--plain", action="store_true", help="plain text even when rich is installed")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..lab.errors import UserCodeError, UserError, raised_by_the_model
    from ..lab.inspection import inspect_model, load_model, print_report

    if args.probe_samples < 1:
        raise UserError(f"--probe-samples must be a positive integer, but got {args.probe_samples}")
    model, example, source = load_model(args.model, args.input_shape)
    try:
        report = inspect_model(model, example, for_inference=args.for_inference, probe_samples=args.probe_samples)
    except Exception as error:
        if not raised_by_the_model(error):
            raise  # a droplab bug: keep its traceback
        shape = f" on an input of shape {tuple(example.shape)}" if isinstance(example, torch.Tensor) else ""
        hint = "check --input-shape" if args.input_shape else ""
        raise UserCodeError(f"the forward of {args.model}{shape}", error, hint=hint) from None
    if args.json:
        print(json.dumps({"source": source, **report}, indent=2, default=str))
    else:
        print_report(report, source, sys.stdout, plain=args.plain)
    return 1 if report["errors"] else 0
