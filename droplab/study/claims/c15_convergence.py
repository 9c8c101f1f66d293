"""Claim 15: dropout slows convergence (more epochs to the best validation loss)."""

from __future__ import annotations

from ..claim import Claim, Effect
from ..data import classification
from ..fit import train_mlp


def setup(quick: bool) -> dict:
    return {"dataset": "mnist1d", "width": 128, "depth": 2, "rates": [0.0, 0.25, 0.5],
            "epochs": 15 if quick else 80}


def run(settings: dict, seed: int) -> dict:
    data = classification(settings["dataset"], seed)
    out = {}
    for p in settings["rates"]:
        result = train_mlp(data, seed, epochs=settings["epochs"],
                           mlp_args={"width": settings["width"], "depth": settings["depth"], "p": p})
        out[str(p)] = {"best_epoch": result.best_epoch, "val_loss": [row["val_loss"] for row in result.history]}
    return out


def measure(raw: dict, settings: dict) -> dict:
    base, mid, high = (raw[str(p)]["best_epoch"] for p in settings["rates"])
    return {"epochs_to_best_change": high - base, "epochs_to_best_change_mid": mid - base}


def plot(ax, raws: list[dict], settings: dict) -> None:
    for j, p in enumerate(settings["rates"]):
        for i, raw in enumerate(raws):
            curve = raw[str(p)]["val_loss"]
            ax.plot(range(1, len(curve) + 1), curve, color=f"C{j}", alpha=0.6, label=f"p = {p}" if i == 0 else None)
            ax.plot(raw[str(p)]["best_epoch"], curve[raw[str(p)]["best_epoch"] - 1], "o", color=f"C{j}")
    ax.set_yscale("log")
    ax.set(title="validation loss (dot: best epoch)", xlabel="epoch", ylabel="val cross-entropy")
    ax.legend(fontsize=8)


CLAIM = Claim(
    number=15, key="convergence", title="Dropout slows convergence",
    setup_text="MLP 40-128-128-10 on MNIST-1D, Adam 1e-3, 80 epochs, p in {0, 0.25, 0.5}: the epoch of the "
               "lowest validation loss (censored at 80).",
    expected="p = 0.5 needs more epochs to its best validation loss than p = 0 (> 0), and so does p = 0.25",
    source="Srivastava et al. 2014, JMLR 15, sec. 11 (training takes 2-3 times longer)",
    effects=(Effect("epochs_to_best_change", "epochs to best(p=0.5) - epochs to best(p=0)", +1),
             Effect("epochs_to_best_change_mid", "epochs to best(p=0.25) - epochs to best(p=0)", +1, primary=False)),
    seeds=5, setup=setup, run=run, measure=measure, plot=plot)
