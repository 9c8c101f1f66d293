"""Claim 2: too much dropout underfits small networks; the best rate grows with the width."""

from __future__ import annotations

from ..claim import Claim, Effect
from ..data import classification
from ..fit import train_mlp


def setup(quick: bool) -> dict:
    return {"dataset": "mnist1d", "widths": [16, 64, 256], "rates": [0.0, 0.25, 0.5, 0.75], "depth": 2,
            "epochs": 10 if quick else 40}


def run(settings: dict, seed: int) -> dict:
    data = classification(settings["dataset"], seed)
    grid = {}
    for width in settings["widths"]:
        grid[str(width)] = [train_mlp(data, seed, epochs=settings["epochs"], eval_every=settings["epochs"],
                                      mlp_args={"width": width, "depth": settings["depth"], "p": p}).final()["val_acc"]
                            for p in settings["rates"]]
    return {"val_acc": grid}


def measure(raw: dict, settings: dict) -> dict:
    rates = settings["rates"]
    grid = raw["val_acc"]
    widths = sorted(grid, key=int)
    best = {w: rates[max(range(len(rates)), key=lambda i: grid[w][i])] for w in widths}
    narrow = grid[widths[0]]
    return {"best_rate_change": best[widths[-1]] - best[widths[0]],
            "narrow_high_rate_change": narrow[-1] - narrow[0]}


def plot(ax, raws: list[dict], settings: dict) -> None:
    for width, color in zip(settings["widths"], ("C0", "C1", "C2", "C3")):
        curves = [raw["val_acc"][str(width)] for raw in raws]
        mean = [sum(c[i] for c in curves) / len(curves) for i in range(len(settings["rates"]))]
        ax.plot(settings["rates"], mean, marker="o", color=color, label=f"width {width}")
    ax.set(title="validation accuracy (mean over seeds)", xlabel="dropout rate p", ylabel="val acc")
    ax.legend(fontsize=8)


CLAIM = Claim(
    number=2, key="capacity", title="Too much dropout underfits small networks; the best rate grows with width",
    setup_text="MLP with 2 hidden layers of width 16, 64 or 256 on MNIST-1D, p in {0, 0.25, 0.5, 0.75}, "
               "40 epochs; best rate per width by final validation accuracy.",
    expected="the best rate of the widest net exceeds that of the narrowest (> 0); p = 0.75 makes the "
             "narrow net worse than no dropout (< 0)",
    source="Srivastava et al. 2014, JMLR 15, sec. 7.3 and appendix A.4 (a layer of n units with dropout p "
           "should have about n/(1-p) units)",
    effects=(Effect("best_rate_change", "best p(width 256) - best p(width 16)", +1),
             Effect("narrow_high_rate_change", "val acc(width 16, p=0.75) - val acc(width 16, p=0)", -1)),
    seeds=3, setup=setup, run=run, measure=measure, plot=plot)
