"""The study report: one HTML page (a section and a figure per claim), a Markdown summary, the JSON results.

``<dir>/index.html`` loads only its own PNGs; every string is HTML-escaped. ``summary.md`` is the same
content as Markdown (what docs/guides/study.md quotes), ``results.json`` the numbers.
"""

from __future__ import annotations

import html
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
    rows = [("#", "claim", "verdict", "primary effect [95% CI]", "seeds", "time")]
    for r in results:
        rows.append((str(r.claim.number), r.claim.key, r.verdict, _effect_cell(r, _primary(r).key),
                     str(len(r.effects)), f"{r.seconds:.0f} s"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)


def _plt():
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise ModuleNotFoundError('the study report needs matplotlib: pip install "droplab[lab]"') from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def draw_figure(path: Path, result: ClaimResult) -> Path:
    """The claim's own panel (its ``plot``) beside the effects: per-seed values, mean and 95% interval."""
    plt = _plt()
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
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _md(text: str) -> str:
    """Text safe inside a Markdown table cell (``|acc|`` would end the cell)."""
    return text.replace("|", "\\|")


def markdown_summary(results: Sequence[ClaimResult], meta: dict, figure_dir: str | None = None) -> str:
    """The study as Markdown: a verdict table, then per claim its setup, expectation, effects and verdict."""
    lines = ["| # | claim | verdict | primary effect, mean [95% CI] | seeds | time |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.claim.number} | {r.claim.title} | **{r.verdict}** | "
                     f"{_md(_primary(r).label)}: {_effect_cell(r, _primary(r).key)} | {len(r.effects)} | "
                     f"{r.seconds:.0f} s |")
    lines += ["", f"Total: {meta.get('total_seconds', 0):.0f} s ({meta.get('total_seconds', 0) / 60:.1f} min); "
              f"{meta.get('date', '')}; load average before/after: {meta.get('load_before', '?')} / "
              f"{meta.get('load_after', '?')}; {meta.get('mode', '')}.", ""]
    for r in results:
        c = r.claim
        lines += [f"### {c.number}. {c.title}", "", f"- **Setup:** {c.setup_text}",
                  f"- **Expected:** {c.expected}. *Source:* {c.source}.",
                  f"- **Verdict:** **{r.verdict}** ({len(r.effects)} seeds, {r.seconds:.0f} s)"]
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


def _page(title: str, body: list[str]) -> str:
    style = ("body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1150px;color:#222}"
             "table{border-collapse:collapse;font-size:.85em}th,td{border:1px solid #ccc;padding:3px 7px}"
             ".reproduced{color:#176e2b}.contradicted{color:#a11}.inconclusive{color:#8a6d00}img{max-width:100%}")
    return "\n".join(["<!DOCTYPE html>", '<html lang="en">', '<head><meta charset="utf-8">',
                      '<link rel="icon" href="data:,">', f"<title>{html.escape(title)}</title>",
                      f"<style>{style}</style></head>", "<body>", f"<h1>{html.escape(title)}</h1>", *body,
                      "</body>", "</html>", ""])


def _html_section(r: ClaimResult, figure: str | None) -> list[str]:
    e, c = html.escape, r.claim
    css = r.verdict.split(" ")[0]
    rows = "".join(f"<tr><td>{e(x.label)}{'' if x.primary else ' (secondary)'}</td>"
                   f"<td>{'&gt; 0' if x.direction > 0 else '&lt; 0'}</td><td>{e(_effect_cell(r, x.key))}</td>"
                   f"<td>{e(r.verdicts.get(x.key, '-'))}</td></tr>" for x in c.effects)
    parts = [f'<h2 id="claim-{c.number}">{c.number}. {e(c.title)}: <span class="{e(css)}">{e(r.verdict)}</span></h2>',
             f"<p><b>Setup.</b> {e(c.setup_text)}</p>", f"<p><b>Expected.</b> {e(c.expected)}. "
             f"<i>Source:</i> {e(c.source)}.</p>",
             f"<p>{len(r.effects)} seeds, {r.seconds:.1f} s.</p>"]
    if r.error:
        parts.append(f"<p><b>Error:</b> {e(r.error)}</p>")
    parts.append("<table><tr><th>effect</th><th>expected</th><th>mean [95% CI]</th><th>verdict</th></tr>"
                 f"{rows}</table>")
    if figure:
        parts.append(f'<p><img src="{e(figure)}" alt="claim {c.number} figure"></p>')
    return parts


def write_study_report(directory: str | Path, results: Sequence[ClaimResult], meta: dict) -> Path:
    """Write ``index.html``, ``claim-NN.png``, ``summary.md`` and ``results.json`` into ``directory``."""
    from ..lab.files import write_json, write_text

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    body = ["<pre>" + html.escape(text_table(results)) + "</pre>",
            f"<p>{html.escape(str(meta))}</p>"]
    for r in results:
        figure = None
        if r.effects:
            figure = draw_figure(directory / f"claim-{r.claim.number:02d}.png", r).name
        body += _html_section(r, figure)
    write_text(directory / "summary.md", markdown_summary(results, meta, figure_dir="."))
    write_json(directory / "results.json", {"meta": meta, "claims": [r.as_dict() for r in results]})
    path = directory / "index.html"
    write_text(path, _page(meta.get("title", "droplab study"), body))
    return path
