"""The study report: one HTML page (a section and a figure per claim), a Markdown summary, the JSON results.

``<dir>/index.html`` is built from the lab's report parts (:func:`droplab.lab.report.page`,
``html_table``, ``save_figure``, ``write_page``): it loads only its own PNGs and every string is escaped.
``summary.md`` is the same content as Markdown (what docs/guides/study.md quotes), ``results.json`` the
numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from .runner import ClaimResult

__all__ = ["write_study_report", "markdown_summary", "text_table", "format_interval", "draw_figure"]


def format_interval(mean: float, low: float, high: float) -> str:
    """``+0.0123 [-0.0040, +0.0286]``; one seed gives the point estimate only.

    Example::

        >>> format_interval(0.5, float("nan"), float("nan"))
        '+0.5000 (one seed)'
    """
    if math.isnan(low):
        return f"{mean:+.4f} (one seed)"
    return f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]"


def _primary(result: ClaimResult):
    return next(e for e in result.claim.effects if e.primary)


def _effect_cell(result: ClaimResult, key: str) -> str:
    interval = result.intervals.get(key)
    return "-" if interval is None else format_interval(interval.mean, interval.low, interval.high)


def text_table(results: Sequence[ClaimResult]) -> str:
    """One line per claim: number, key, verdict, primary effect with its interval, seeds, seconds."""
    rows = [("#", "claim", "verdict", "primary effect [95% CI]", "seeds", "wall", "cpu")]
    for r in results:
        rows.append((str(r.claim.number), r.claim.key, r.verdict, _effect_cell(r, _primary(r).key),
                     str(len(r.effects)), f"{r.seconds:.0f} s", f"{r.cpu_seconds:.0f} s"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)


def draw_figure(directory: Path, result: ClaimResult) -> str:
    """The claim's own panel (its ``plot``) beside the effects: per-seed values, mean and 95% interval.

    Saved as ``directory/claim-NN.png``; returns the file name.
    """
    from ..lab.report import pyplot, save_figure

    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1.2, 1]})
    if result.claim.plot is not None and result.raws:
        result.claim.plot(left, result.raws, result.settings)
    else:
        left.axis("off")
    effects = result.claim.effects
    for y, effect in enumerate(effects):
        values = [row[effect.key] for row in result.effects]
        right.plot(values, [y] * len(values), "o", color="gray", alpha=0.6, markersize=4)
        interval = result.intervals.get(effect.key)
        if interval is not None:
            if not math.isnan(interval.low):
                right.plot([interval.low, interval.high], [y, y], color="C3", linewidth=2)
            right.plot([interval.mean], [y], "D", color="C3")
    right.axvline(0, color="black", linewidth=0.8)
    right.set_yticks(range(len(effects)), [f"{e.key} ({'> 0' if e.direction > 0 else '< 0'}"
                                           f"{'' if e.primary else ', secondary'})" for e in effects], fontsize=7)
    right.invert_yaxis()
    right.set(title="effects (expected sign): seeds, mean, 95% CI", xlabel="effect")
    fig.suptitle(f"claim {result.claim.number}: {result.claim.title} - {result.verdict}", fontsize=10)
    name, _ = save_figure(fig, directory, f"claim-{result.claim.number:02d}.png", result.claim.title, dpi=80)
    return name


def _md(text: str) -> str:
    """Text safe inside a Markdown table cell (``|acc|`` would end the cell)."""
    return text.replace("|", "\\|")


def _meta_line(meta: dict) -> str:
    total, cpu = meta.get("total_seconds", 0.0), meta.get("total_cpu_seconds", 0.0)
    return (f"Total: {total:.0f} s wall ({total / 60:.1f} min), {cpu:.0f} s CPU ({cpu / 60:.1f} min); "
            f"{meta.get('date', '')}; load average before/after: "
            f"{meta.get('load_before', '?')} / {meta.get('load_after', '?')}; {meta.get('mode', '')}.")


def markdown_summary(results: Sequence[ClaimResult], meta: dict, figure_dir: str | None = None) -> str:
    """The study as Markdown: a verdict table, then per claim its setup, expectation, effects and verdict."""
    lines = ["| # | claim | verdict | primary effect, mean [95% CI] | seeds | wall (CPU) |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.claim.number} | {r.claim.title} | **{r.verdict}** | "
                     f"{_md(_primary(r).label)}: {_effect_cell(r, _primary(r).key)} | {len(r.effects)} | "
                     f"{r.seconds:.0f} s ({r.cpu_seconds:.0f} s) |")
    lines += ["", _meta_line(meta), ""]
    for r in results:
        c = r.claim
        lines += [f"### {c.number}. {c.title}", "", f"- **Setup:** {c.setup_text}",
                  f"- **Expected:** {c.expected}. *Source:* {c.source}.",
                  f"- **Verdict:** **{r.verdict}** ({len(r.effects)} seeds, {r.seconds:.0f} s wall, "
                  f"{r.cpu_seconds:.0f} s CPU)"]
        if r.error:
            lines.append(f"- **Error:** `{r.error}`")
        lines += ["", "| effect | expected | mean [95% CI] | verdict |", "|---|---|---|---|"]
        for e in c.effects:
            sign = "> 0" if e.direction > 0 else "< 0"
            lines.append(f"| {_md(e.label)}{'' if e.primary else ' (secondary)'} | {sign} "
                         f"| {_effect_cell(r, e.key)} | {r.verdicts.get(e.key, '-')} |")
        if figure_dir is not None:
            lines += ["", f"![claim {c.number}]({figure_dir}/claim-{c.number:02d}.png)"]
        lines.append("")
    return "\n".join(lines)


def _html_section(r: ClaimResult, figure: str | None) -> list[str]:
    from ..lab.report import escape as e
    from ..lab.report import html_table

    c = r.claim
    rows = [[x.label + ("" if x.primary else " (secondary)"), "> 0" if x.direction > 0 else "< 0",
             _effect_cell(r, x.key), r.verdicts.get(x.key, "-")] for x in c.effects]
    parts = [f'<h2 id="claim-{c.number}">{c.number}. {e(c.title)}: {e(r.verdict)}</h2>',
             f"<p><b>Setup.</b> {e(c.setup_text)}</p>", f"<p><b>Expected.</b> {e(c.expected)}. "
             f"<i>Source:</i> {e(c.source)}.</p>",
             f"<p>{len(r.effects)} seeds, {r.seconds:.1f} s.</p>"]
    if r.error:
        parts.append(f'<p class="warn"><b>Error:</b> {e(r.error)}</p>')
    parts.append(html_table(["effect", "expected", "mean [95% CI]", "verdict"], rows))
    if figure:
        parts.append(f'<p><img src="{e(figure)}" alt="claim {c.number} figure"></p>')
    return parts


def write_study_report(directory: str | Path, results: Sequence[ClaimResult], meta: dict) -> Path:
    """Write ``index.html``, ``claim-NN.png``, ``summary.md`` and ``results.json`` into ``directory``."""
    from ..lab.files import write_json, write_text
    from ..lab.report import escape, write_page

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # the numbers first: a figure that fails to draw must not lose them
    write_json(directory / "results.json", {"meta": meta, "claims": [r.as_dict() for r in results]})
    write_text(directory / "summary.md", markdown_summary(results, meta, figure_dir="."))
    body = ["<pre>" + escape(text_table(results)) + "</pre>", f"<p>{escape(_meta_line(meta))}</p>"]
    for r in results:
        body += _html_section(r, draw_figure(directory, r) if r.effects else None)
    return write_page(directory, meta.get("title", "droplab study"), body)
