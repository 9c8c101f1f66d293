"""The study page (``docs/guides/study.md``), generated from a run's ``results.json``.

``droplab study --confirm --write-page docs/guides/study.md`` runs the powered study and writes the page;
``droplab study --page RESULTS.json --write-page docs/guides/study.md`` (or ``python -m droplab.study.page
RESULTS.json docs/guides/study.md``) regenerates it from a stored run. The figures go beside the page, in a
folder named like it (``docs/guides/study/claim-NN.png``). Everything on the page comes from the results file:
the commit it names is the commit the run measured.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .report import (
    BASELINE_HEADERS,
    SUMMARY_HEADERS,
    baseline_rows,
    draw_figure,
    epochs_text,
    interval_text,
    summary_rows,
    verdict_text,
)

__all__ = ["markdown", "write_page", "main"]

INTRO = """# The study: what dropout does, claim by claim

The dropout literature makes specific, testable claims. `droplab study` tests fifteen of them as their sources
state them, each as a controlled experiment over seeds on the lab's trainer, and says what it found. This page
is generated from a run's `results.json`; the run it shows is named [below](#results), with the commit it
measured.

## Running it

```bash
droplab study --list                      # the claims, their parts and arms
droplab study --quick                     # smoke test: one seed, default hyper-parameters, nothing judged (< 5 min)
droplab study                             # tuned arms, 3 confirmatory seeds, verdicts with that power (< 25 min)
droplab study --confirm --write-page docs/guides/study.md   # the powered run, and this page (< 90 min)
droplab study 1 weight-scaling            # some claims, by number or name
droplab study --page reports/<id>/results.json --write-page docs/guides/study.md   # the page, from a stored run
```

The budgets are wall time on an idle 2-core machine; each tier prints its budget first and its time last. The
default and `--confirm` tiers run two trainings at a time (`--jobs`, one thread each). Each training is a run in
the lab's store (`--db`, study `study/<claim>`); the report goes to `reports/<study id>/`: `results.json` (every
number, strict JSON), `summary.md`, `index.html` and one figure per claim.

## How a claim is tested

* **As the source states it.** Each claim names its source, quotes or paraphrases its statement, says in which
  regime the effect can show (and checks the experiment is there), and measures the mechanism beside the outcome.
  A claim with several parts judges each part on its own.
* **One training stack.** Every arm trains on the lab's trainer (`droplab.lab.trainer.train`) with the lab's
  models, optimizer, `max_norm` and callbacks: AdamW (SGD where a claim needs it), batch 100, evaluation after
  each epoch, the **best-validation checkpoint** (`BestWeights`), and a patience so each arm stops when its own
  validation curve turns; a run that hits the epoch cap while still improving is counted as censored.
* **Paired seeds, fresh data.** Every seed is a fresh MNIST-1D draw (the `mnist1d` generator seeded per seed),
  split 3200 / 800 / 1000; the arms of a seed share the draw, the initial weights where shapes agree, and the
  batch order, so each effect is a paired difference.
* **Tuned per arm, on other seeds.** Each arm's hyper-parameters (learning rate, rate, strength: its
  *candidates*) are chosen by mean validation score on tuning seeds (1000, 1001, ...) that the confirmatory
  seeds (0, 1, ...) never include.
* **Baselines first.** The pipeline first reproduces the MNIST-1D paper's table and OLS on diabetes; a claim
  relying on a baseline that is off, or whose regime check fails, gets its verdicts withheld.
* **Seeds from a power analysis.** In `--confirm` the three tuning seeds are the pilot: each primary effect's
  standard deviation there gives the seeds for 80% power at its smallest effect of interest (SESOI) at the
  Bonferroni level alpha/m over the study's m primary effects (Holm is never less powerful), between 3 and 40,
  within the tier's budget (a run shared by several claims is counted once). The default tier runs 3 seeds and
  reports the seeds its confirmatory seeds' spread asks for.
* **The verdict.** Each primary effect gets a two-sided paired t-test and a TOST against its SESOI; both families
  of p-values are adjusted across all primary effects of the study ({adjust_name}), at alpha = 0.05:

{verdict_table}

  Secondary effects (mechanisms, other outcomes) are reported with their unadjusted intervals and not judged.
"""

ADDING = """## Adding a claim

A claim is one file in `droplab/study/claims/` defining `CLAIM = Claim(...)` (the registry finds it): its
source, statement, regime, mechanism and setup; its parts; its arms, each with the hyper-parameter candidates
tuned for it; its effects, each with the predicted sign, SESOI and reason (`kind="equivalence"` for claims of
no difference); and the functions `settings(tier)`, `run(settings, arm, seed, hp) -> raw` (JSON; with a
`val_score`), `measure(raws_by_arm, settings) -> {effect: value}`, optionally `checks(raws, settings)` and
`plot(ax, raws, settings)`. Train through `droplab.study.training.fit` (the lab's trainer) and the lab's models;
`droplab.study.claims.common.mlp_arm` is the shared MLP arm.
"""


def _md(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(headers, rows) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *("| " + " | ".join(_md(c) for c in row) + " |" for row in rows)]


def _results_header(data: dict) -> list[str]:
    meta, tier = data["meta"], data["meta"]["tier"]
    commit = meta.get("commit") or "unknown"
    dirty = " (with uncommitted changes)" if meta.get("dirty") else ""
    minutes = meta.get("total_seconds", 0) / 60
    cpu = meta.get("cpu_seconds", 0) / 60
    return ["## Results", "",
            f"Run `{meta['id']}`: tier **{tier['name']}** ({tier['description']}), commit `{commit[:12]}`{dirty}, "
            f"{meta.get('date', '')}, command `{meta.get('command') or 'droplab study'}`.", "",
            f"Time: **{minutes:.1f} min wall** against a budget of {tier['budget_minutes']:.0f} min, "
            f"{cpu:.1f} min of CPU in the trainings ({meta.get('jobs')} at a time, {meta.get('threads')} thread each, "
            f"{meta.get('cpu_count')} CPUs); load average {meta.get('load_before')} at the start, "
            f"{meta.get('load_after')} at the end. {meta['family']} primary effects adjusted together "
            f"({meta['adjust'].upper()}).", "", f"**Verdicts of the primary effects:** {_tally(data)}.", ""]


def _tally(data: dict) -> str:
    from collections import Counter

    counts = Counter(verdict_text(c, e, data["meta"]["tier"]).split(" (")[0] for c in data["claims"]
                     for e in c["effects"] if e["primary"])
    return ", ".join(f"{n} {verdict}" for verdict, n in counts.most_common()) or "none"


def _claim_section(claim: dict, tier: dict, figure_dir: str | None) -> list[str]:
    lines = [f"### {claim['number']}. {claim['title']}", "", f"- **Source:** {claim['source']}.",
             f"- **Statement:** {claim['statement']}", f"- **Regime:** {claim['regime']}",
             f"- **Mechanism:** {claim['mechanism']}", f"- **Setup:** {claim['setup']}"]
    for part in claim["parts"]:
        lines.append(f"- **Part {part['key']}:** {part['statement']}.")
    chosen = "; ".join(f"{arm}: {info['candidates'][info['chosen']] or 'no knob'}"
                       for arm, info in claim["tuning"].items())
    lines.append(f"- **Tuned:** {chosen}.")
    after = [claim["results"][e["key"]].get("seeds_for_power") for e in claim["effects"]
             if e["primary"] and e["key"] in claim["results"]]
    after = max((n for n in after if n is not None), default=None)
    lines.append(f"- **Seeds:** {len(claim['per_seed'])} (the power analysis on the pilot asked for "
                 f"{claim['n_required'] or '-'}; the confirmatory seeds' spread asks for {after or '-'}); "
                 f"epochs run: {epochs_text(claim)}.")
    for name, check in claim["checks"].items():
        lines.append(f"- **Check** {name}: {'passed' if check['passed'] else 'FAILED'} ({check['detail']}).")
    for error in claim["errors"]:
        lines.append(f"- **Error:** `{_md(error.strip().splitlines()[-1])}`")
    rows = []
    for e in claim["effects"]:
        entry = claim["results"].get(e["key"])
        sesoi = f"{'±' if e['kind'] == 'equivalence' else ''}{e['sesoi']:.4g}: {e['reason']}"
        rows.append([e["part"], e["label"] + ("" if e["primary"] else " (secondary)"), interval_text(entry), sesoi,
                     verdict_text(claim, e, tier)])
    lines += ["", *_table(("part", "effect", "mean [95% CI]", "SESOI (reason)", "verdict"), rows)]
    if figure_dir is not None and claim["per_seed"]:
        lines += ["", f"![claim {claim['number']}]({figure_dir}/claim-{claim['number']:02d}.png)"]
    return lines + [""]


def markdown(data: dict, figure_dir: str | None = None) -> str:
    """The study page for ``data`` (a loaded ``results.json``); figures linked from ``figure_dir``."""
    adjust = {"holm": "Holm's step-down method", "bh": "Benjamini-Hochberg"}[data["meta"]["adjust"]]
    from .stats import VERDICTS

    verdicts = "\n".join("  " + line for line in _table(("verdict", "when"), list(VERDICTS.items())))
    lines = [INTRO.replace("{adjust_name}", adjust).replace("{verdict_table}", verdicts), *_results_header(data),
             "### Baselines: the MNIST-1D paper's table and OLS on diabetes", "",
             *_table(BASELINE_HEADERS, baseline_rows(data)), "", "### Every primary effect", "",
             *_table(SUMMARY_HEADERS, summary_rows(data)), ""]
    timing = [[f"{c['number']}. {c['title']}", f"{c['cpu_seconds']:.0f}", f"{c['wall_seconds']:.0f}",
               str(len(c["per_seed"])), str(c["n_required"] or "-")] for c in data["claims"]]
    lines += ["### Time per claim", "", "CPU seconds of the claim's trainings (about the wall time on an idle core; "
              "a run shared with an earlier claim costs the later one nothing) and the wall time of its units.", "",
              *_table(("claim", "CPU s", "wall s", "seeds", "power analysis asks"), timing), ""]
    for claim in data["claims"]:
        lines += _claim_section(claim, data["meta"]["tier"], figure_dir)
    return "\n".join([*lines, ADDING])


def write_page(data: dict, path: str | Path) -> Path:
    """Write the page to ``path`` and its figures to the folder named like it (``study.md`` -> ``study/``)."""
    from ..lab.files import write_text

    path = Path(path)
    figures = path.with_suffix("")
    figures.mkdir(parents=True, exist_ok=True)
    for claim in data["claims"]:
        draw_figure(figures, claim)
    return write_text(path, markdown(data, figure_dir=figures.name))


def main(argv: list[str] | None = None) -> int:
    """``python -m droplab.study.page RESULTS.json PAGE.md``."""
    from .results import load

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m droplab.study.page RESULTS.json PAGE.md", file=sys.stderr)
        return 2
    print(write_page(load(argv[0]), argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
