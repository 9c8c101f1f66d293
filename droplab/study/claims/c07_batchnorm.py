"""Claim 7: dropout right before BatchNorm hurts (variance shift), and recalibrating BN statistics recovers it."""

from __future__ import annotations

from ..claim import Claim, Effect
from ..data import classification
from ..fit import evaluate, train_mlp


def setup(quick: bool) -> dict:
    return {"dataset": "mnist1d", "width": 256, "depth": 2, "p": 0.5, "epochs": 10 if quick else 40}


def _batches(split, size: int = 256) -> list:
    return [(split.x[i:i + size], split.y[i:i + size]) for i in range(0, len(split.y), size)]


def run(settings: dict, seed: int) -> dict:
    from ...diagnostics import recalibrate_bn

    data = classification(settings["dataset"], seed)
    args = {"width": settings["width"], "depth": settings["depth"], "p": settings["p"]}
    shifted = train_mlp(data, seed, epochs=settings["epochs"], mlp_args={**args, "batchnorm": "after_dropout"}).model
    placed = train_mlp(data, seed, epochs=settings["epochs"], mlp_args={**args, "batchnorm": "before_dropout"}).model
    before = evaluate(shifted, data.test.x, data.test.y)
    recalibrate_bn(shifted, _batches(data.train))
    after = evaluate(shifted, data.test.x, data.test.y)
    good = evaluate(placed, data.test.x, data.test.y)
    return {"dropout_then_bn": before, "dropout_then_bn_recalibrated": after, "bn_then_dropout": good}


def measure(raw: dict, settings: dict) -> dict:
    return {"placement_change": raw["dropout_then_bn"]["acc"] - raw["bn_then_dropout"]["acc"],
            "recalibration_gain": raw["dropout_then_bn_recalibrated"]["acc"] - raw["dropout_then_bn"]["acc"]}


def plot(ax, raws: list[dict], settings: dict) -> None:
    names = ["bn_then_dropout", "dropout_then_bn", "dropout_then_bn_recalibrated"]
    labels = ["BN, then dropout", "dropout, then BN", "dropout, then BN,\nrecalibrated"]
    for raw in raws:
        ax.plot(range(3), [raw[n]["acc"] for n in names], marker="o", color="C0", alpha=0.7)
    ax.set_xticks(range(3), labels, fontsize=8)
    ax.set(title="test accuracy per seed", ylabel="test acc")


CLAIM = Claim(
    number=7, key="batchnorm", title="Dropout before BatchNorm hurts; recalibrating BN recovers it",
    setup_text="MLP 40-256-256-10 on MNIST-1D, p = 0.5, 40 epochs: Linear-ReLU-Dropout-BatchNorm blocks (BN "
               "fed by dropout) vs Linear-BN-ReLU-Dropout; then the first model's BN statistics re-estimated "
               "on the training set with dropout off (droplab.diagnostics.recalibrate_bn).",
    expected="BN fed by dropout tests worse than BN before dropout (< 0); recalibration raises its accuracy (> 0)",
    source="Li, Chen, Hu, Yang 2019, CVPR, 'Understanding the Disharmony between Dropout and Batch "
           "Normalization by Variance Shift'",
    effects=(Effect("placement_change", "acc(dropout -> BN) - acc(BN -> dropout)", -1),
             Effect("recalibration_gain", "acc(dropout -> BN, recalibrated) - acc(dropout -> BN)", +1)),
    seeds=5, setup=setup, run=run, measure=measure, plot=plot)
