"""Claim 11: dropout makes hidden units less co-adapted (less correlated, less fragile to ablation)."""

from __future__ import annotations

from ..claim import Claim, Effect
from ..data import classification
from ..fit import train_mlp

MEASURES = ("correlation", "effective_rank", "drop_10pct")


def setup(quick: bool) -> dict:
    return {"dataset": "mnist1d", "width": 256, "depth": 2, "rates": [0.0, 0.5], "epochs": 15 if quick else 60}


def run(settings: dict, seed: int) -> dict:
    from ...diagnostics import coadaptation_summary

    data = classification(settings["dataset"], seed)
    val = [(data.val.x[i:i + 400], data.val.y[i:i + 400]) for i in range(0, len(data.val.y), 400)]
    out = {}
    for p in settings["rates"]:
        model = train_mlp(data, seed, epochs=settings["epochs"],
                          mlp_args={"width": settings["width"], "depth": settings["depth"], "p": p}).model
        summary = coadaptation_summary(model, val, max_units=32, subsets=5, fractions=(0.1, 0.5))
        out[str(p)] = {key: float(summary[key]) for key in MEASURES}
    return out


def measure(raw: dict, settings: dict) -> dict:
    base, drop = raw[str(settings["rates"][0])], raw[str(settings["rates"][1])]
    return {f"{key}_change": drop[key] - base[key] for key in MEASURES}


def plot(ax, raws: list[dict], settings: dict) -> None:
    for i, key in enumerate(MEASURES):
        base = [raw[str(settings["rates"][0])][key] for raw in raws]
        drop = [raw[str(settings["rates"][1])][key] for raw in raws]
        scale = max(max(base), max(drop), 1e-12)  # each measure on its own scale, so all fit one axis
        ax.plot([i - 0.15] * len(base), [b / scale for b in base], "o", color="C0",
                label="p = 0" if i == 0 else None)
        ax.plot([i + 0.15] * len(drop), [d / scale for d in drop], "o", color="C1",
                label="p = 0.5" if i == 0 else None)
    ax.set_xticks(range(len(MEASURES)), ["unit |corr|", "effective rank", "10% ablation drop"], fontsize=8)
    ax.set(title="co-adaptation measures (each / its max)", ylabel="relative value")
    ax.legend(fontsize=8)


CLAIM = Claim(
    number=11, key="coadaptation", title="Dropout makes units less co-adapted",
    setup_text="MLP 40-256-256-10 on MNIST-1D, 60 epochs, p = 0 vs 0.5; on the validation split "
               "(droplab.diagnostics.coadaptation_summary, mean over hidden layers): mean |correlation| between "
               "units, effective rank, accuracy lost when a random 10% of units is removed.",
    expected="with dropout, lower unit correlation (< 0) and a smaller ablation loss (< 0); higher effective "
             "rank (> 0)",
    source="Hinton et al. 2012, arXiv:1207.0580; Srivastava et al. 2014, JMLR 15, sec. 7.1",
    effects=(Effect("correlation_change", "|corr|(p=0.5) - |corr|(p=0)", -1),
             Effect("drop_10pct_change", "10% ablation loss(p=0.5) - (p=0)", -1),
             Effect("effective_rank_change", "effective rank(p=0.5) - (p=0)", +1, primary=False)),
    seeds=5, setup=setup, run=run, measure=measure, plot=plot)
