"""A study as plain data: ``results.json`` (strict JSON: no NaN, no infinities), the one source the reports and the
study page are built from, so the page can be regenerated from a stored run.

:func:`to_dict` turns a :class:`~droplab.study.runner.Study` into it; :func:`load` reads a file back (and refuses
one that is not a droplab study's). Everything a report shows is in it: the claims' text and design, the tuning
scores and the chosen hyper-parameters, the pilot and the power analysis, every seed's raw measurements per arm
(the figures are redrawn from them), each effect's statistics and verdict, the baselines, and the timings.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

__all__ = ["FORMAT", "to_dict", "load", "strict", "commit"]

FORMAT = "droplab-study/2"


def strict(value):
    """``value`` with every non-finite float replaced by None (strict JSON), tuples as lists.

    Example::

        >>> strict({"a": float("nan"), "b": [1.0, float("inf")], "c": (2, 3)})
        {'a': None, 'b': [1.0, None], 'c': [2, 3]}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def commit() -> dict:
    """The git commit of the droplab source tree (and whether it has uncommitted changes), if it is a checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    if head.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def _claim(result) -> dict:
    tuning = {arm.name: {"candidates": list(arm.candidates), "chosen": result.chosen.get(arm.name, 0),
                         "scores": {str(c): v for c, v in sorted(result.tuning.get(arm.name, {}).items())}}
              for arm in result.claim.arms}
    return {**result.claim.describe(), "settings": result.settings, "tuning": tuning, "pilot": result.pilot,
            "n_required": result.n_required, "seeds": result.seeds,
            "raws": [{"seed": seed, "arms": result.raws.get(seed, {})} for seed in result.seeds],
            "per_seed": result.per_seed, "checks": result.checks, "withheld": result.withheld,
            "results": result.effects, "epochs": result.epochs(), "wall_seconds": result.wall,
            "cpu_seconds": result.cpu, "cpu_per_seed": result.cpu_per_seed, "errors": result.errors}


def to_dict(study, *, command: str = "") -> dict:
    """``study`` as strict-JSON-ready data (see the module docstring)."""
    import platform

    import torch

    from .stats import ALPHA

    meta = {**study.meta, "id": study.id, "tier": study.tier.as_dict(), "adjust": study.adjust, "alpha": ALPHA,
            "family": study.family, "command": command, "python": platform.python_version(),
            "torch": torch.__version__, "machine": platform.machine(), **commit()}
    return strict({"format": FORMAT, "meta": meta, "baselines": study.baselines,
                   "claims": [_claim(r) for r in study.results]})


def load(path: str | Path) -> dict:
    """Read a ``results.json`` written by ``droplab study``.

    Raises:
        droplab.lab.errors.UserError: the file is missing, not JSON, or not a droplab study's results.
    """
    from ..lab.errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"results file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not JSON: {error}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{path} is not a droplab study's results.json (format {FORMAT})")
    return data
