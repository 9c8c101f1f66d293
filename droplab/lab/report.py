"""The comparison report: one self-contained HTML page with PNG figures beside it.

``reports/<id>/index.html`` holds the summary table, the verdict and four figures (matplotlib, Agg):
training vs validation accuracy and loss for every run on shared axes, the generalization gap over
epochs, and a reliability diagram. The page loads nothing from the network; every user-provided string
(run names, dataset paths, the verdict) is HTML-escaped.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

__all__ = ["TABLE_COLUMNS", "COADAPTATION_COLUMNS", "table_rows", "format_table", "write_report"]

# (key in the run summary, column title, format)
TABLE_COLUMNS = (
    ("train_acc", "train acc", "{:.3f}"), ("best_train_acc", "best train acc", "{:.3f}"),
    ("val_acc", "val acc", "{:.3f}"), ("best_val_acc", "best val acc", "{:.3f}"),
    ("test_acc", "test acc", "{:.3f}"),
    ("train_loss", "train loss", "{:.3f}"), ("best_train_loss", "best train loss", "{:.3f}"),
    ("val_loss", "val loss", "{:.3f}"), ("best_val_loss", "best val loss", "{:.3f}"),
    ("gap", "gap", "{:.3f}"), ("ece", "ECE", "{:.3f}"), ("best_epoch", "epochs to best", "{:d}"),
    ("wall_time_s", "wall s", "{:.1f}"),
)

# co-adaptation measures on the validation split (droplab.diagnostics.coadaptation_summary), averaged
# over the hidden layers: dropout should lower the correlation, raise the effective rank and make the
# network less fragile when units are removed
COADAPTATION_COLUMNS = (
    ("correlation", "unit |corr|", "{:.3f}"), ("effective_rank", "effective rank", "{:.1f}"),
    ("mean_activation", "mean activation", "{:.3f}"), ("near_zero", "near-zero frac", "{:.3f}"),
    ("single_unit_drop", "1-unit ablation drop", "{:.4f}"), ("drop_10pct", "10% ablation drop", "{:.3f}"),
    ("drop_50pct", "50% ablation drop", "{:.3f}"),
)


def table_rows(runs: Sequence[dict], columns: Sequence[tuple[str, str, str]] = TABLE_COLUMNS) -> list[list[str]]:
    """One row per run summary (``label`` then ``columns``); missing values print as ``-``."""
    rows = []
    for run in runs:
        row = [str(run.get("label", ""))]
        for key, _, fmt in columns:
            value = run.get(key)
            row.append("-" if value is None else fmt.format(int(value) if fmt == "{:d}" else value))
        rows.append(row)
    return rows


def format_table(runs: Sequence[dict], columns: Sequence[tuple[str, str, str]] = TABLE_COLUMNS) -> str:
    """The summary table as aligned plain text (what ``droplab compare`` prints)."""
    header = ["run", *(title for _, title, _ in columns)]
    rows = [header, *table_rows(runs, columns)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _pyplot():
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise ModuleNotFoundError('the report needs matplotlib: pip install "droplab[lab]"') from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _figures(directory: Path, runs: Sequence[dict]) -> list[tuple[str, str]]:
    plt = _pyplot()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    figures = []

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    for i, run in enumerate(runs):
        epochs = [m["epoch"] for m in run["history"]]
        color = colors[i % len(colors)]
        for ax, key in zip(axes, ("acc", "loss")):
            ax.plot(epochs, [m[f"train_{key}"] for m in run["history"]], color=color, label=f"{run['label']} train")
            ax.plot(epochs, [m[f"val_{key}"] for m in run["history"]], color=color, linestyle="--",
                    label=f"{run['label']} val")
    axes[0].set(title="accuracy (solid: train, dashed: validation)", xlabel="epoch", ylabel="accuracy")
    axes[1].set(title="loss (solid: train, dashed: validation)", xlabel="epoch", ylabel="cross-entropy")
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(directory / "curves.png", dpi=90)
    plt.close(fig)
    figures.append(("curves.png", "Training vs validation accuracy and loss for every run"))

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, run in enumerate(runs):
        ax.plot([m["epoch"] for m in run["history"]], [m["gap"] for m in run["history"]],
                color=colors[i % len(colors)], label=run["label"])
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.set(title="generalization gap (train - val accuracy)", xlabel="epoch", ylabel="gap")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(directory / "gap.png", dpi=90)
    plt.close(fig)
    figures.append(("gap.png", "Generalization gap over epochs"))

    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot([0, 1], [0, 1], color="gray", linestyle=":", label="perfect calibration")
    for i, run in enumerate(runs):
        rel = run.get("reliability")
        if not rel:
            continue
        points = [(c, a) for c, a, n in zip(rel["confidence"], rel["accuracy"], rel["count"]) if n > 0]
        if points:
            ax.plot(*zip(*points), marker="o", color=colors[i % len(colors)],
                    label=f"{run['label']} (ECE {run.get('ece', float('nan')):.3f})")
    ax.set(title="reliability diagram (test set)", xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(directory / "reliability.png", dpi=90)
    plt.close(fig)
    figures.append(("reliability.png", "Reliability diagram: accuracy against confidence on the test set"))
    return figures


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.verdict { background: #f4f7fb; border-left: 4px solid #3572b0; padding: 0.6em 1em; }
figure { display: inline-block; margin: 0.5em; }
img { max-width: 100%; }
"""


def write_report(directory: str | Path, runs: Sequence[dict], *, title: str, verdict: dict | None = None,
                 config: dict | None = None) -> Path:
    """Write ``index.html`` and its PNGs into ``directory``; returns the HTML path.

    ``runs``: dicts with ``label``, ``history`` (per-epoch metrics) and the summary keys of
    :data:`TABLE_COLUMNS` (plus ``reliability`` for the reliability diagram).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    figures = _figures(directory, runs)
    e = html.escape

    def html_table(columns):
        header = "".join(f"<th>{e(t)}</th>" for t in ["run", *(title for _, title, _ in columns)])
        body = "".join("<tr>" + "".join(f"<td>{e(cell)}</td>" for cell in row) + "</tr>"
                       for row in table_rows(runs, columns))
        return f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"

    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',  # no favicon request: the page loads only its own PNGs
        f"<title>{e(title)}</title>", f"<style>{_STYLE}</style>", "</head>", "<body>",
        f"<h1>{e(title)}</h1>",
    ]
    if verdict:
        parts.append('<div class="verdict">')
        parts.append(f"<p><strong>{e(verdict.get('headline', ''))}</strong></p>")
        if verdict.get("reasons"):
            parts.append("<ul>" + "".join(f"<li>{e(r)}</li>" for r in verdict["reasons"]) + "</ul>")
        if verdict.get("recommended"):
            parts.append(f"<p>Best validation accuracy: {e(verdict['recommended'])}</p>")
        parts.append("</div>")
    parts += ["<h2>Summary</h2>", html_table(TABLE_COLUMNS)]
    if any("correlation" in run for run in runs):
        parts += ["<h2>Co-adaptation</h2>",
                  "<p>Measured on the validation split, averaged over the hidden layers: mean absolute "
                  "correlation between units, effective rank of the representation, activation sparsity, "
                  "and the accuracy lost when one unit or a random 10% / 50% of the units are removed at "
                  "inference. A co-adapted network has correlated units and is fragile.</p>",
                  html_table(COADAPTATION_COLUMNS)]
    parts.append("<h2>Curves</h2>")
    for filename, caption in figures:
        parts.append(f'<figure><img src="{e(filename)}" alt="{e(caption)}"><figcaption>{e(caption)}</figcaption>'
                     "</figure>")
    if config:
        rows = "".join(f"<tr><td>{e(str(k))}</td><td>{e(str(v))}</td></tr>" for k, v in config.items())
        parts += ["<h2>Configuration</h2>", f"<table><tbody>{rows}</tbody></table>"]
    parts += ["</body>", "</html>"]
    path = directory / "index.html"
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path
