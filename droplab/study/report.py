"""The study's reports, all built from the ``results.json`` data (:mod:`.results`): the table printed at the end
of a run, the per-claim figures, the HTML report, and the Markdown the study page is made of (:mod:`.page`).

Every primary effect is a row of the summary table, with its interval, its smallest effect of interest, the
adjusted p-values and the verdict; an "underpowered" or "inconclusive" verdict carries the minimum detectable
effect at 80% power. A claim's figure shows its own panel beside the effects: every seed's value as a point,
the mean with its 95% interval, zero and the smallest effect of interest.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["verdict_text", "interval_text", "summary_rows", "text_table", "baseline_rows", "epochs_text",
           "draw_figure", "write_report"]

SUMMARY_HEADERS = ("#", "claim", "part", "effect", "n", "mean [95% CI]", "SESOI", "p adj (diff / equiv)",
                   "verdict")


def _num(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:+.{digits}f}"


def interval_text(entry: dict | None) -> str:
    """``+0.0123 [-0.0040, +0.0286]``; one seed gives the value alone.

    Example::

        >>> interval_text({"mean": 0.5, "low": None, "high": None})
        '+0.5000 (one seed)'
    """
    if not entry:
        return "-"
    if entry.get("low") is None:
        return f"{_num(entry['mean'])} (one seed)"
    return f"{_num(entry['mean'])} [{_num(entry['low'])}, {_num(entry['high'])}]"


def verdict_text(claim: dict, effect: dict, tier: dict) -> str:
    """The verdict of one effect as the reports print it (with the MDE when the seeds decided nothing)."""
    entry = claim["results"].get(effect["key"])
    if claim["errors"]:
        return "failed"
    if not tier["judged"] or entry is None or entry.get("low") is None:
        return "not judged (one seed)" if entry is not None and entry.get("low") is None else "not judged"
    if not effect["primary"]:
        return "secondary (not judged)"
    if claim["withheld"]:
        return f"withheld ({claim['withheld']})"
    verdict = entry.get("verdict") or "-"
    if verdict in ("underpowered", "inconclusive"):
        scale = "smallest margin shown" if effect["kind"] == "equivalence" else "MDE"
        return f"{verdict} ({scale} at 80% power {entry['mde']:.4f}; SESOI {effect['sesoi']:.4f})"
    return verdict


def _p(entry: dict | None) -> str:
    if not entry or entry.get("p_difference_adjusted") is None:
        return "-"
    return f"{entry['p_difference_adjusted']:.3g} / {entry['p_equivalence_adjusted']:.3g}"


def summary_rows(data: dict, short: bool = False) -> list[list[str]]:
    """One row per primary effect of the study (see :data:`SUMMARY_HEADERS`); ``short`` names claims by key."""
    rows = []
    for claim in data["claims"]:
        for effect in claim["effects"]:
            if not effect["primary"]:
                continue
            entry = claim["results"].get(effect["key"])
            sesoi = f"{'±' if effect['kind'] == 'equivalence' else ''}{effect['sesoi']:.4g}"
            name = claim["key"] if short else claim["title"]
            rows.append([str(claim["number"]), name, effect["part"], effect["label"], str(len(claim["per_seed"])),
                         interval_text(entry), sesoi, _p(entry), verdict_text(claim, effect, data["meta"]["tier"])])
    return rows


def _align(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    return "\n".join("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)) for row in [headers, *rows])


def baseline_rows(data: dict) -> list[list[str]]:
    """The baseline table: what, the published value, ours (mean and per seed), the tolerance, pass/off."""
    rows = []
    for b in data["baselines"].values():
        ours = "-" if b["mean"] is None else f"{b['mean']:.3f} (" + ", ".join(f"{v:.3f}" for v in b["values"]) + ")"
        status = {True: "ok", False: "OFF", None: "not judged"}[b["ok"]]
        rows.append([b["what"], f"{b['published']:.3f}", ours, f"±{b['tolerance']:.3f}", status, b["citation"]])
    return rows


BASELINE_HEADERS = ("baseline", "published", "this run (per seed)", "tolerance", "status", "source")


def epochs_text(claim: dict) -> str:
    """``none: 41-58 epochs (best 21-38), dropout: 150-199 (best 130-179), 1 censored`` for one claim."""
    parts = []
    for arm, info in claim["epochs"].items():
        run = [e for e in info["epochs_run"] if e is not None]
        best = [e for e in info["best_epoch"] if e is not None]
        if not run:
            continue
        text = f"{arm}: {min(run)}-{max(run)} epochs" if min(run) != max(run) else f"{arm}: {run[0]} epochs"
        if best:
            text += f" (best {min(best)}-{max(best)})"
        if info["censored"]:
            text += f", {info['censored']} censored"
        parts.append(text)
    return "; ".join(parts) or "-"


def text_table(data: dict) -> str:
    """What a run prints at the end: the baselines, every primary effect, and the time of each claim."""
    meta = data["meta"]
    lines = ["baselines:", _align(BASELINE_HEADERS[:-1], [row[:-1] for row in baseline_rows(data)]), "",
             f"primary effects ({meta['family']} adjusted together, {meta['adjust'].upper()}, alpha {meta['alpha']}):",
             _align(SUMMARY_HEADERS, summary_rows(data, short=True)), "", "time per claim:"]
    timing = [[c["name"] if "name" in c else f"{c['number']:02d}-{c['key']}", f"{c['cpu_seconds']:.0f} s",
               f"{c['wall_seconds']:.0f} s", str(len(c["per_seed"])), str(c["n_required"] or "-"), epochs_text(c)]
              for c in data["claims"]]
    lines.append(_align(("claim", "CPU", "wall (units)", "seeds", "power asks", "epochs run"), timing))
    return "\n".join(lines)


def _effects_panel(ax, claim: dict) -> None:
    """Every effect in units of its own SESOI (so effects of different scales share one axis): the seeds'
    values, the mean with its 95% interval, and the SESOI (±1 for equivalence claims)."""
    effects = claim["effects"]
    for y, effect in enumerate(effects):
        entry = claim["results"].get(effect["key"])
        if entry is None:
            continue
        s = effect["sesoi"]
        values = [v / s for v in entry["values"]]
        ax.plot(values, [y] * len(values), "o", color="gray", alpha=0.6, markersize=4)
        if entry.get("low") is not None:
            ax.plot([entry["low"] / s, entry["high"] / s], [y, y], color="C3", linewidth=2)
        ax.plot([entry["mean"] / s], [y], "D", color="C3", markersize=5)
        if effect["kind"] == "equivalence":
            ax.plot([-1, 1], [y + 0.3, y + 0.3], color="C2", linewidth=3, alpha=0.5)
        else:
            ax.plot([effect["direction"]] * 2, [y - 0.3, y + 0.3], color="C2", linewidth=1.5)
    ax.axvline(0, color="black", linewidth=0.8)
    labels = [f"{e['key']} ({'equiv.' if e['kind'] == 'equivalence' else ('> 0' if e['direction'] > 0 else '< 0')}"
              f"{'' if e['primary'] else ', secondary'}; SESOI {e['sesoi']:.3g})" for e in effects]
    ax.set_yticks(range(len(effects)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set(title="effect / SESOI: seeds (gray), mean and 95% CI (red), SESOI (green)",
           xlabel="effect in units of its smallest effect of interest")
    ax.title.set_fontsize(8)


def draw_figure(directory: Path, claim: dict) -> str | None:
    """``directory/claim-NN.png``: the claim's own panel beside its effects; returns the file name (None: no data)."""
    from ..lab.report import mpl_text, pyplot, save_figure
    from .registry import all_claims

    if not claim["per_seed"]:
        return None
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1.15, 1]})
    code = {c.number: c for c in all_claims()}.get(claim["number"])
    raws = [row["arms"] for row in claim["raws"]]
    if code is not None and code.plot is not None and raws:
        code.plot(left, raws, claim["settings"])
        left.title.set_fontsize(8)
    else:
        left.axis("off")
    _effects_panel(right, claim)
    fig.suptitle(mpl_text(f"claim {claim['number']}: {claim['title']} ({len(claim['per_seed'])} seeds)"),
                 fontsize=10)
    fig.tight_layout()
    name, _ = save_figure(fig, directory, f"claim-{claim['number']:02d}.png", claim["title"], dpi=80)
    return name


def _html_claim(claim: dict, figure: str | None, tier: dict) -> list[str]:
    from ..lab.report import escape as e
    from ..lab.report import html_table

    rows = [[f"{x['part']}: {x['label']}" + ("" if x["primary"] else " (secondary)"),
             interval_text(claim["results"].get(x["key"])), f"{x['sesoi']:.4g}", _p(claim["results"].get(x["key"])),
             verdict_text(claim, x, tier)] for x in claim["effects"]]
    parts = [f'<h2 id="claim-{claim["number"]}">{claim["number"]}. {e(claim["title"])}</h2>',
             f"<p><b>Source.</b> {e(claim['source'])}</p>", f"<p><b>Statement.</b> {e(claim['statement'])}</p>",
             f"<p><b>Regime.</b> {e(claim['regime'])}</p>", f"<p><b>Mechanism.</b> {e(claim['mechanism'])}</p>",
             f"<p><b>Setup.</b> {e(claim['setup'])}</p>",
             f"<p>{len(claim['per_seed'])} seeds; epochs: {e(epochs_text(claim))}</p>"]
    for err in claim["errors"]:
        parts.append(f'<pre class="warn">{e(err)}</pre>')
    parts.append(html_table(["effect", "mean [95% CI]", "SESOI", "p adj (diff / equiv)", "verdict"], rows))
    if figure:
        parts.append(f'<p><img src="{e(figure)}" alt="claim {claim["number"]} figure"></p>')
    return parts


def write_report(directory: str | Path, data: dict) -> Path:
    """Write ``results.json`` (first: a figure that fails to draw must not lose the numbers), the figures,
    ``summary.md`` and ``index.html`` into ``directory``; returns the HTML page's path."""
    from ..lab.files import write_json, write_text
    from ..lab.report import escape, write_page
    from .page import markdown

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / "results.json", data, allow_nan=False)
    figures = {c["number"]: draw_figure(directory, c) for c in data["claims"]}
    write_text(directory / "summary.md", markdown(data, figure_dir="."))
    body = ["<pre>" + escape(text_table(data)) + "</pre>"]
    for claim in data["claims"]:
        body += _html_claim(claim, figures[claim["number"]], data["meta"]["tier"])
    return write_page(directory, f"droplab study {data['meta']['id']}", body)
