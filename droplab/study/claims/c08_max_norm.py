"""Claim 8: a max-norm constraint helps dropout networks (the original paper's pairing, with large steps)."""

from __future__ import annotations

from ..claim import Claim, Effect
from ..data import classification
from ..fit import evaluate, train_mlp


def setup(quick: bool) -> dict:
    return {"dataset": "mnist1d", "width": 256, "depth": 2, "p": 0.5, "optimizer": "sgd", "lr": 0.1,
            "max_norm": 3.0, "epochs": 15 if quick else 60}


def run(settings: dict, seed: int) -> dict:
    data = classification(settings["dataset"], seed)
    out = {}
    for name, radius in (("plain", None), ("max_norm", settings["max_norm"])):
        result = train_mlp(data, seed, epochs=settings["epochs"], optimizer=settings["optimizer"], lr=settings["lr"],
                           max_norm=radius,
                           mlp_args={"width": settings["width"], "depth": settings["depth"], "p": settings["p"]})
        out[name] = {"test_acc": evaluate(result.model, data.test.x, data.test.y)["acc"],
                     "val_curve": [row["val_acc"] for row in result.history]}
    return out


def measure(raw: dict, settings: dict) -> dict:
    return {"test_acc_change": raw["max_norm"]["test_acc"] - raw["plain"]["test_acc"]}


def plot(ax, raws: list[dict], settings: dict) -> None:
    for name, color in (("plain", "C0"), ("max_norm", "C1")):
        for i, raw in enumerate(raws):
            ax.plot(range(1, len(raw[name]["val_curve"]) + 1), raw[name]["val_curve"], color=color, alpha=0.7,
                    label=("no constraint" if name == "plain" else f"max-norm {settings['max_norm']}")
                    if i == 0 else None)
    ax.set(title="validation accuracy per seed", xlabel="epoch", ylabel="val acc")
    ax.legend(fontsize=8)


CLAIM = Claim(
    number=8, key="max-norm", title="Max-norm constraints help dropout networks",
    setup_text="MLP 40-256-256-10 on MNIST-1D, p = 0.5, SGD with momentum 0.9 and a large step (lr 0.1), "
               "60 epochs; with vs without projecting each unit's incoming weights onto ||w|| <= 3 after every step.",
    expected="max-norm raises test accuracy (> 0)",
    source="Srivastava et al. 2014, JMLR 15, sec. 5.1 and table 9; Hinton et al. 2012",
    effects=(Effect("test_acc_change", "test acc(max-norm) - test acc(no constraint)", +1),),
    seeds=5, setup=setup, run=run, measure=measure, plot=plot)
