r"""The lab's one HTML report module: the page shell, tables, figures and escaping for every command.

``droplab compare`` (:func:`write_report`), ``droplab sweep show`` and ``droplab uncertainty`` build
their pages from the same parts: :func:`page` (one self-contained HTML shell that loads nothing from
the network), :func:`html_table`, :func:`save_figure` (matplotlib, Agg, PNGs beside the page) and
:func:`write_page` (atomic). Every user-provided string (run names, dataset paths, the verdict) is
HTML-escaped with :func:`escape`, and escaped for matplotlib's mathtext with :func:`mpl_text` before it
reaches a plot, so a run named ``$\x{$`` draws as written.

Example::

    >>> mpl_text("p=$0.5$ 100%")
    'p=\\$0.5\\$ 100%'
    >>> "<b>" in page("a <b> run", ["<p>hi</p>"])
    False
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

from .tasks.classification import TABLE_COLUMNS

__all__ = ["TABLE_COLUMNS", "COADAPTATION_COLUMNS", "coadaptation_columns",
           "table_rows", "format_table", "write_report", "escape",
           "mpl_text", "pyplot", "html_table", "page", "write_page", "save_figure", "STYLE"]

# co-adaptation measures on the validation split (droplab.diagnostics.coadaptation_summary), averaged
# over the hidden layers: dropout should lower the correlation, raise the effective rank and make the
# network less fragile when units are removed
COADAPTATION_COLUMNS = (
    ("correlation", "unit |corr|", "{:.3f}"), ("effective_rank", "effective rank", "{:.1f}"),
    ("mean_activation", "mean activation", "{:.3f}"), ("near_zero", "near-zero frac", "{:.3f}"),
    ("single_unit_drop", "1-unit ablation drop", "{:.4f}"), ("drop_10pct", "10% ablation drop", "{:.3f}"),
    ("drop_50pct", "50% ablation drop", "{:.3f}"), ("coadaptation_s", "measure s", "{:.1f}"),
)
_ABLATION_KEYS = ("single_unit_drop", "drop_10pct", "drop_50pct")


def coadaptation_columns(task: str = "classification") -> tuple[tuple[str, str, str], ...]:
    """The co-adaptation table's columns: regression has no ablation (it measures the accuracy lost)."""
    if task == "regression":
        return tuple(column for column in COADAPTATION_COLUMNS if column[0] not in _ABLATION_KEYS)
    return COADAPTATION_COLUMNS


def escape(text: object) -> str:
    """``text`` for HTML (quotes included)."""
    return html.escape(str(text))


def mpl_text(text: object) -> str:
    """``text`` for a matplotlib label: control characters dropped, ``$`` escaped (mathtext never parses it)."""
    from .files import terminal_safe

    return terminal_safe(text).replace("$", "\\$")


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
    from .files import terminal_safe

    header = ["run", *(title for _, title, _ in columns)]
    rows = [header, *([terminal_safe(cell) for cell in row] for row in table_rows(runs, columns))]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def pyplot():
    """matplotlib's pyplot on the Agg backend (asks for the lab extra when missing)."""
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise ModuleNotFoundError('the report needs matplotlib: pip install "droplab[lab]"') from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, directory: Path, filename: str, caption: str, dpi: int = 90) -> tuple[str, str]:
    """Save ``fig`` as ``directory/filename``, close it; returns ``(filename, caption)`` for :func:`page`."""
    plt = pyplot()
    try:
        fig.tight_layout()
        from .files import save_figure_file

        save_figure_file(fig, Path(directory) / filename, dpi=dpi)  # atomic: no partial PNG on a full disk
    finally:
        plt.close(fig)
    return filename, caption


def html_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """An HTML table; cells are escaped, floats printed with 4 decimals."""
    def cell(value: object) -> str:
        return escape(f"{value:.4f}" if isinstance(value, float) else value)

    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figures_html(figures: Sequence[tuple[str, str]]) -> str:
    return "\n".join(f'<figure><img src="{escape(name)}" alt="{escape(caption)}"><figcaption>{escape(caption)}'
                     "</figcaption></figure>" for name, caption in figures)


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; padding: 0 1em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f3f3f3; }
th:first-child, td:first-child { text-align: left; }
.verdict { background: #f4f7fb; border-left: 4px solid #3572b0; padding: 0.6em 1em; }
.warn { background: #fff4e5; border-left: 4px solid #f0a020; padding: 0.6em; }
pre { background: #f4f7fb; padding: 1em; overflow-x: auto; }
figure { display: inline-block; margin: 0.5em; }
img { max-width: 100%; }
"""


def page(title: str, body: Sequence[str]) -> str:
    """The shared page shell around ``body`` (trusted HTML parts); ``title`` is escaped."""
    head = ['<!DOCTYPE html>', '<html lang="en">', "<head>", '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            '<link rel="icon" href="data:,">',  # no favicon request: the page loads only its own PNGs
            f"<title>{escape(title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
            f"<h1>{escape(title)}</h1>"]
    return "\n".join([*head, *body, "</body>", "</html>"]) + "\n"


def write_page(directory: str | Path, title: str, body: Sequence[str]) -> Path:
    """Write ``directory/index.html`` atomically; returns its path."""
    from .files import write_text

    return write_text(Path(directory) / "index.html", page(title, body))


def _curves(directory: Path, runs: Sequence[dict], keys: tuple[str, str], titles: tuple[str, str]):
    plt = pyplot()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    for i, run in enumerate(runs):
        epochs = [m["epoch"] for m in run["history"]]
        label, color = mpl_text(run["label"]), colors[i % len(colors)]
        for ax, key in zip(axes, keys):
            ax.plot(epochs, [m[f"train_{key}"] for m in run["history"]], color=color, label=f"{label} train")
            ax.plot(epochs, [m[f"val_{key}"] for m in run["history"]], color=color, linestyle="--",
                    label=f"{label} val")
    for ax, title in zip(axes, titles):
        ax.set(title=f"{title} (solid: train, dashed: validation)", xlabel="epoch", ylabel=title)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7)
    return save_figure(fig, directory, "curves.png", f"Training vs validation {titles[0]} and {titles[1]} per run")


def _gap(directory: Path, runs: Sequence[dict], ylabel: str):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for run in runs:
        ax.plot([m["epoch"] for m in run["history"]], [m["gap"] for m in run["history"]], label=mpl_text(run["label"]))
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.set(title=f"generalization gap ({ylabel})", xlabel="epoch", ylabel="gap")
    ax.legend(fontsize=8)
    return save_figure(fig, directory, "gap.png", "Generalization gap over epochs")


def _reliability(directory: Path, runs: Sequence[dict]):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot([0, 1], [0, 1], color="gray", linestyle=":", label="perfect calibration")
    for run in runs:
        rel = run.get("reliability")
        points = [(c, a) for c, a, n in zip(rel["confidence"], rel["accuracy"], rel["count"]) if n > 0] if rel else []
        if points:
            ece = run.get("ece", float("nan"))
            ax.plot(*zip(*points), marker="o", label=f"{mpl_text(run['label'])} (ECE {ece:.3f})")
    ax.set(title="reliability diagram (test set)", xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8)
    return save_figure(fig, directory, "reliability.png", "Reliability diagram: accuracy against confidence (test set)")


def _coverage(directory: Path, runs: Sequence[dict]):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot([0, 1], [0, 1], color="gray", linestyle=":", label="calibrated")
    for run in runs:
        if run.get("calibration_mc"):
            ax.plot(run["levels"], run["calibration_mc"], marker="o", label=f"{mpl_text(run['label'])} MC")
            ax.plot(run["levels"], run["calibration_ws"], linestyle="--", label=f"{mpl_text(run['label'])} weight sc.")
    ax.set(title="interval calibration (test set)", xlabel="nominal coverage", ylabel="observed coverage",
           xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=7)
    return save_figure(fig, directory, "calibration.png",
                       "Share of test targets inside the central predictive interval, against its nominal level")


def _figures(directory: Path, runs: Sequence[dict], task: str) -> list[tuple[str, str]]:
    if task == "regression":
        return [_curves(directory, runs, ("rmse", "loss"), ("RMSE", "loss")),
                _gap(directory, runs, "val - train RMSE"), _coverage(directory, runs)]
    return [_curves(directory, runs, ("acc", "loss"), ("accuracy", "cross-entropy")),
            _gap(directory, runs, "train - val accuracy"), _reliability(directory, runs)]


def _verdict_html(verdict: dict) -> list[str]:
    parts = ['<div class="verdict">', f"<p><strong>{escape(verdict.get('headline', ''))}</strong></p>"]
    if verdict.get("reasons"):
        parts.append("<ul>" + "".join(f"<li>{escape(r)}</li>" for r in verdict["reasons"]) + "</ul>")
    if verdict.get("recommended"):
        parts.append(f"<p>Best on validation: {escape(verdict['recommended'])}</p>")
    return [*parts, "</div>"]


def _run_table(runs: Sequence[dict], columns) -> str:
    return html_table(["run", *(title for _, title, _ in columns)], table_rows(runs, columns))


_COADAPTATION_TEXT = {
    "classification": "Measured on (a sample of) the validation split, averaged over the hidden layers: mean absolute "
                      "correlation between units, effective rank of the representation, activation sparsity, and the "
                      "accuracy lost when one unit or a random 10% / 50% of the units are removed at inference. A "
                      "co-adapted network has correlated units and is fragile.",
    "regression": "Measured on (a sample of) the validation split, averaged over the hidden layers: mean absolute "
                  "correlation between units, effective rank of the representation and activation sparsity. A "
                  "co-adapted network has correlated units. (Unit ablation is a classification measure; a "
                  "regression comparison does not run it.)",
}


def write_report(directory: str | Path, runs: Sequence[dict], *, title: str, verdict: dict | None = None,
                 config: dict | None = None, task: str = "classification") -> Path:
    """Write ``index.html`` and its PNGs into ``directory``; returns the HTML path.

    ``runs``: dicts with ``label``, ``history`` (per-epoch metrics) and the summary keys of the task's
    table (:data:`TABLE_COLUMNS`, or regression's), plus ``reliability`` (classification) or
    ``calibration_mc``/``calibration_ws`` (regression) for the calibration figure.
    """
    from .tasks import task_of

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    figures = _figures(directory, runs, task)
    body = _verdict_html(verdict) if verdict else []
    body += ["<h2>Summary</h2>", _run_table(runs, task_of(task).TABLE_COLUMNS)]
    if any("correlation" in run for run in runs):
        body += ["<h2>Co-adaptation</h2>", f"<p>{_COADAPTATION_TEXT[task]}</p>",
                 _run_table(runs, coadaptation_columns(task))]
    body += ["<h2>Curves</h2>", figures_html(figures)]
    if config:
        body += ["<h2>Configuration</h2>", html_table(["key", "value"], [[k, str(v)] for k, v in config.items()])]
    return write_page(directory, title, body)
