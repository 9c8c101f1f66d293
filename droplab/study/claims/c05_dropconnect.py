"""Claim 5: DropConnect (dropping weights) versus dropout (dropping units) at the same rate."""

from __future__ import annotations

from ..claim import Claim, Effect
from ..data import classification
from ..fit import train_kinds


def setup(quick: bool) -> dict:
    # width 64: droplab's DropConnect draws one mask entry per weight per step, so cost grows with width^2
    return {"dataset": "mnist1d", "width": 64, "depth": 2, "p": 0.5, "epochs": 10 if quick else 40}


def run(settings: dict, seed: int) -> dict:
    return train_kinds(classification(settings["dataset"], seed), seed, settings, ("bernoulli", "dropconnect"))


def measure(raw: dict, settings: dict) -> dict:
    return {"test_acc_change": raw["dropconnect"]["test_acc"] - raw["bernoulli"]["test_acc"]}


def plot(ax, raws: list[dict], settings: dict) -> None:
    for kind, color in (("bernoulli", "C0"), ("dropconnect", "C1")):
        for i, raw in enumerate(raws):
            ax.plot(range(1, len(raw[kind]["val_curve"]) + 1), raw[kind]["val_curve"], color=color, alpha=0.7,
                    label=("dropout" if kind == "bernoulli" else "DropConnect") if i == 0 else None)
    ax.set(title="validation accuracy per seed", xlabel="epoch", ylabel="val acc")
    ax.legend(fontsize=8)


CLAIM = Claim(
    number=5, key="dropconnect", title="DropConnect versus dropout at a matched rate",
    setup_text="MLP 40-64-64-10 on MNIST-1D, 40 epochs, p = 0.5: dropout on the two hidden layers' units vs "
               "DropConnect (droplab.nn.DropConnect, one weight mask per step) on the two Linear layers they feed.",
    expected="DropConnect generalizes at least as well as dropout; the paper reports it slightly better (> 0)",
    source="Wan, Zeiler, Zhang, LeCun, Fergus 2013, ICML, 'Regularization of Neural Networks using DropConnect'",
    effects=(Effect("test_acc_change", "test acc(DropConnect) - test acc(dropout)", +1),),
    seeds=5, setup=setup, run=run, measure=measure, plot=plot)
