"""Claim 1: dropout reduces overfitting (a smaller generalization gap, better held-out accuracy)."""

from __future__ import annotations

from ..claim import Claim, Effect
from ..data import classification
from ..fit import evaluate, train_mlp


def setup(quick: bool) -> dict:
    return {"dataset": "mnist1d", "width": 256, "depth": 2, "rates": [0.0, 0.5], "epochs": 15 if quick else 60}


def run(settings: dict, seed: int) -> dict:
    data = classification(settings["dataset"], seed)
    out = {}
    for p in settings["rates"]:
        result = train_mlp(data, seed, epochs=settings["epochs"],
                           mlp_args={"width": settings["width"], "depth": settings["depth"], "p": p})
        final = result.final()
        out[str(p)] = {"train_acc": final["train_eval_acc"], "val_acc": final["val_acc"],
                       "test_acc": evaluate(result.model, data.test.x, data.test.y)["acc"],
                       "gap_curve": [row["train_eval_acc"] - row["val_acc"] for row in result.history]}
    return out


def measure(raw: dict, settings: dict) -> dict:
    base, drop = raw["0.0"], raw["0.5"]
    return {"gap_change": (drop["train_acc"] - drop["val_acc"]) - (base["train_acc"] - base["val_acc"]),
            "test_acc_change": drop["test_acc"] - base["test_acc"]}


def plot(ax, raws: list[dict], settings: dict) -> None:
    for p, color in zip(settings["rates"], ("C0", "C1")):
        for i, raw in enumerate(raws):
            ax.plot(range(1, settings["epochs"] + 1), raw[str(p)]["gap_curve"], color=color, alpha=0.6,
                    label=f"p = {p}" if i == 0 else None)
    ax.set(title="generalization gap per seed", xlabel="epoch", ylabel="train acc - val acc")
    ax.legend(fontsize=8)


CLAIM = Claim(
    number=1, key="overfitting", title="Dropout reduces overfitting",
    setup_text="MLP 40-256-256-10 on MNIST-1D, Adam 1e-3, 60 epochs; p = 0 vs p = 0.5 after each hidden layer, "
               "same init and data order per seed.",
    expected="the train-validation accuracy gap shrinks with dropout (gap change < 0) and test accuracy rises",
    source="Hinton et al. 2012, arXiv:1207.0580; Srivastava et al. 2014, JMLR 15, sec. 6-7",
    effects=(Effect("gap_change", "gap(p=0.5) - gap(p=0), accuracy", -1),
             Effect("test_acc_change", "test acc(p=0.5) - test acc(p=0)", +1)),
    seeds=5, setup=setup, run=run, measure=measure, plot=plot)
