"""``droplab sweep show NAME``: the best configuration, the rate curve, importances and an HTML report.

The report page (``reports/sweep-<name>/index.html``, self-contained but for PNGs next to it) plots
the searched rate against validation loss, validation accuracy and the generalization gap, the
per-layer rates, a batch size x rate heat map of validation loss, and the parameter importances
(fANOVA). All values come from the study's storage, so any machine with access to it can render it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

__all__ = ["trial_rows", "summarize", "rate_curve", "importances", "write_report", "show"]

_METRIC_KEYS = {
    "val_loss": ("val_loss",),
    "val_acc": ("val_acc", "val_accuracy"),
    # the objective is the best epoch's validation loss, so the matching test accuracy is the best epoch's
    "test_acc": ("test_acc_at_best", "test_acc", "test_accuracy"),
    "train_acc": ("train_acc", "train_accuracy"),
    "gap": ("gap", "generalization_gap"),
}


def _metric(final: dict, key: str) -> float | None:
    for name in _METRIC_KEYS[key]:
        value = final.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    if key == "gap":  # train minus validation accuracy when the run did not store it
        train, val = _metric(final, "train_acc"), _metric(final, "val_acc")
        if train is not None and val is not None:
            return train - val
    return None


def _trial_rates(config: dict) -> tuple[list[float], float | None]:
    """A trial config's rates of the sites but the input site, and the input site's rate (None without one).

    Trials stored before ``rates`` was the one rate field carry ``dropout``/``layer_rates``/``input_dropout``.
    """
    if "rates" in config and "dropout" not in config:
        rates = list(config.get("rates") or [])
        return (rates[1:], rates[0]) if config.get("input_site") and rates else (rates, None)
    rates = config.get("rates") or config.get("layer_rates") or ([config["dropout"]] * int(config.get("depth", 1))
                                                                 if "dropout" in config else [])
    return list(rates), config.get("input_dropout")


def trial_rows(study) -> list[dict[str, Any]]:
    """One row per finished trial: number, state, objective, the hidden rate(s), batch size and metrics."""
    from optuna.trial import TrialState

    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        config = t.user_attrs.get("config", {})
        final = t.user_attrs.get("final", {})
        rates, input_rate = _trial_rates(config)
        rows.append({
            "number": t.number,
            "state": t.state.name.lower(),
            "value": t.value if t.value is not None else (min(t.intermediate_values.values())
                                                          if t.intermediate_values else None),
            "params": dict(t.params),
            "rate": sum(rates) / len(rates) if rates else None,
            "layer_rates": list(rates),
            "input_dropout": input_rate,
            "batch_size": config.get("batch_size"),
            "run_id": t.user_attrs.get("run_id"),
            "retry_of": t.system_attrs.get("failed_trial"),
            **{key: _metric(final, key) for key in _METRIC_KEYS},
        })
    return rows


def rate_curve(rows: list[dict], bins: int = 8) -> list[tuple[float, float, float, int]]:
    """Completed trials' validation loss against the (mean hidden) rate: ``(lo, hi, mean loss, n)`` per bin."""
    points = [(r["rate"], r["value"]) for r in rows if r["state"] == "complete" and r["rate"] is not None
              and r["value"] is not None]
    if not points:
        return []
    lo, hi = min(p for p, _ in points), max(p for p, _ in points)
    width = (hi - lo) / bins or 1.0
    out = []
    for b in range(bins):
        last = b == bins - 1
        # the last edge is the maximum itself: lo + bins * width can round a hair below it
        a, z = lo + b * width, (max(hi, lo + bins * width) if last else lo + (b + 1) * width)
        inside = [v for p, v in points if a <= p < z or (last and p == z)]
        if inside:
            out.append((a, z, sum(inside) / len(inside), len(inside)))
    return out


def importances(study) -> dict[str, float]:
    """fANOVA parameter importances for validation loss (empty with fewer than two completed trials)."""
    import warnings

    import optuna
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(optuna.importance.get_param_importances(study))
    except (ValueError, RuntimeError):
        return {}  # e.g. a single distinct value per parameter


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def summarize(study) -> str:
    """Plain-text summary: counts, best trial and configuration, the rate curve and importances."""
    from optuna.trial import TrialState

    rows = trial_rows(study)
    complete = [r for r in rows if r["state"] == "complete" and r["value"] is not None]
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    from .files import terminal_safe

    lines = [f"sweep {terminal_safe(study.study_name)}: {len(complete)} complete, "
             f"{sum(r['state'] == 'pruned' for r in rows)} pruned, {len(failed)} failed"]
    if not complete:
        lines.append("no completed trial yet")
        return "\n".join(lines)
    best = min(complete, key=lambda r: r["value"])
    lines.append(f"best: trial {best['number']} (run {best['run_id']}), validation loss {best['value']:.4f}, "
                 f"validation accuracy {_fmt(best['val_acc'])}, test accuracy {_fmt(best['test_acc'])}")
    lines.append("  " + ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(best["params"].items())))
    curve = rate_curve(rows)
    if curve:
        lines.append("validation loss by rate (completed trials):")
        losses = [c[2] for c in curve]
        lo, hi = min(losses), max(losses)
        for a, z, loss, n in curve:
            bar = "#" * (1 + round(29 * (loss - lo) / (hi - lo))) if hi > lo else "#"
            lines.append(f"  p {a:4.2f}-{z:4.2f}  {loss:7.4f}  {bar:<30} n={n}")
    imp = importances(study)
    if imp:
        lines.append("parameter importances (fANOVA): " + ", ".join(f"{k} {v:.2f}" for k, v in imp.items()))
    return "\n".join(lines)


def _rate_plot(plt, done: list[dict]):
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, label in zip(axes, ("value", "val_acc", "gap"),
                              ("validation loss", "validation accuracy", "generalization gap (train - val acc)")):
        for state, marker, color in (("complete", "o", "C0"), ("pruned", "x", "C3")):
            pts = [(r["rate"], r[key]) for r in done if r["state"] == state and r[key] is not None]
            if pts:
                ax.scatter(*zip(*pts), marker=marker, color=color, label=state, alpha=0.8)
        ax.set_xlabel("hidden dropout rate (mean over layers)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:  # no trial yet: nothing to name
        axes[0].legend()
    return fig, "rate.png", "Rate against validation loss, validation accuracy and generalization gap"


def _layers_plot(plt, done: list[dict], depth: int):
    fig, axes = plt.subplots(1, depth, figsize=(4 * depth, 3.5), squeeze=False)
    for i, ax in enumerate(axes[0]):
        pts = [(r["layer_rates"][i], r["value"]) for r in done
               if len(r["layer_rates"]) > i and r["value"] is not None and r["state"] == "complete"]
        if pts:
            ax.scatter(*zip(*pts), color="C2")
        ax.set_xlabel(f"layer {i} rate")
        ax.set_ylabel("validation loss")
        ax.grid(alpha=0.3)
    return fig, "layers.png", "Per-layer rates against validation loss"


def _batch_rate_plot(plt, cells: list[tuple]):
    import numpy as np

    sizes = sorted({c[0] for c in cells})
    edges = np.linspace(0.0, max(0.8, max(c[1] for c in cells)) + 1e-9, 6)
    grid = np.full((len(sizes), len(edges) - 1), np.nan)
    for i, size in enumerate(sizes):
        for j in range(len(edges) - 1):
            vals = [v for s, p, v in cells if s == size and edges[j] <= p < edges[j + 1]]
            if vals:
                grid[i, j] = float(np.mean(vals))
    fig, ax = plt.subplots(figsize=(6.5, 1.2 + 0.6 * len(sizes)))
    image = ax.imshow(grid, aspect="auto", cmap="viridis_r")
    ax.set_xticks(range(len(edges) - 1), [f"{a:.2f}-{b:.2f}" for a, b in zip(edges[:-1], edges[1:])])
    ax.set_yticks(range(len(sizes)), [str(s) for s in sizes])
    ax.set_xlabel("hidden dropout rate")
    ax.set_ylabel("batch size")
    fig.colorbar(image, ax=ax, label="mean validation loss")
    return fig, "batch_rate.png", "Batch size x rate: mean validation loss (blank: no trial)"


def _importance_plot(plt, imp: dict[str, float]):
    fig, ax = plt.subplots(figsize=(6, 0.6 + 0.45 * len(imp)))
    names = list(imp)[::-1]
    ax.barh(names, [imp[n] for n in names], color="C1")
    ax.set_xlabel("importance for validation loss (fANOVA)")
    return fig, "importance.png", "Parameter importances"


def _plots(rows: list[dict], imp: dict[str, float], out: Path) -> list[tuple[str, str]]:
    """Write the PNGs; returns (file name, caption) pairs."""
    from .report import pyplot, save_figure

    plt = pyplot()
    done = [r for r in rows if r["rate"] is not None]
    made = [_rate_plot(plt, done)]
    depth = max((len(r["layer_rates"]) for r in done), default=0)
    if depth:
        made.append(_layers_plot(plt, done, depth))
    cells = [(r["batch_size"], r["rate"], r["value"]) for r in done
             if r["state"] == "complete" and r["batch_size"] is not None and r["value"] is not None]
    if cells:
        made.append(_batch_rate_plot(plt, cells))
    if imp:
        made.append(_importance_plot(plt, imp))
    return [save_figure(fig, out, name, caption, dpi=110) for fig, name, caption in made]


def write_report(study, out_dir: str | os.PathLike = "reports") -> Path:
    """Write ``<out_dir>/sweep-<name>/index.html`` and its PNGs; returns the page's path.

    The directory is one sanitized path component inside ``out_dir``, whatever the study's name.
    """
    from .files import confined_path
    from .report import escape, figures_html, html_table, write_page

    rows = trial_rows(study)
    imp = importances(study)
    out = confined_path(out_dir, f"sweep-{study.study_name}")
    out.mkdir(parents=True, exist_ok=True)
    figures = _plots(rows, imp, out)
    header = ["trial", "state", "val loss", "rate", "layer rates", "input", "batch", "val acc", "test acc", "gap",
              "run", "retry of"]
    body = [[r["number"], r["state"], _fmt(r["value"]), _fmt(r["rate"], 3),
             ", ".join(f"{x:.2f}" for x in r["layer_rates"]), _fmt(r["input_dropout"], 3), _fmt(r["batch_size"]),
             _fmt(r["val_acc"]), _fmt(r["test_acc"]), _fmt(r["gap"]), _fmt(r["run_id"]), _fmt(r["retry_of"])]
            for r in sorted(rows, key=lambda r: (r["value"] is None, r["value"] if r["value"] is not None else 0))]
    return write_page(out, f"Sweep {study.study_name}", [f"<pre>{escape(summarize(study))}</pre>",
                                                         figures_html(figures), "<h2>Trials</h2>",
                                                         html_table(header, body)])


def show(study, *, out_dir: str | os.PathLike = "reports") -> int:
    """Print the summary of a loaded sweep ``study`` and write its report; returns a process exit code."""
    from .files import terminal_safe

    print(summarize(study))
    path = write_report(study, out_dir)
    print(f"report: {terminal_safe(path)}")
    return 0
