"""Claim 7: dropout before BatchNorm shifts BN's variance between training and inference, and that costs accuracy."""

from __future__ import annotations

import math

from ..claim import Arm, Claim, Effect, Part
from .common import ACCURACY_REASON, LR_CANDIDATES, accuracy_sesoi, mlp_arm, mnist1d_splits, summary

ORDERS = {"dropout-bn": "after_dropout", "bn-dropout": "before_dropout"}
WIDTH, DEPTH, P = 128, 3, 0.5


def settings(tier: str) -> dict:
    return {"tier": tier, "width": WIDTH, "depth": DEPTH, "p": P}


def _batches(split, size: int = 500) -> list:
    return [(split.x[i:i + size], split.y[i:i + size]) for i in range(0, len(split.y), size)]


def _test(model, split) -> tuple[float, float]:
    import torch

    with torch.no_grad():
        logits = model.eval()(split.x)
    return (float((logits.argmax(-1) == split.y).float().mean()),
            float(torch.nn.functional.cross_entropy(logits, split.y)))


def run(settings: dict, arm: str, seed: int, hp: dict) -> dict:
    from ...diagnostics import recalibrate_bn, variance_shift

    trained = mlp_arm(seed, settings["tier"], lr=hp["lr"], p=settings["p"], width=settings["width"],
                      depth=settings["depth"], batchnorm=ORDERS[arm])
    splits, model = mnist1d_splits(seed), trained.model
    shifts = variance_shift(model, _batches(splits.train))
    out = summary(trained)
    out["log_shift"] = [math.log(s.shift) for s in shifts]
    out["test_acc"], out["test_nll"] = _test(model, splits.test)
    recalibrate_bn(model, _batches(splits.train))
    out["recalibrated_acc"], out["recalibrated_nll"] = _test(model, splits.test)
    return out


def measure(raws: dict, settings: dict) -> dict:
    shifted, placed = raws["dropout-bn"], raws["bn-dropout"]
    mean = lambda values: sum(values) / len(values) if values else 0.0  # noqa: E731
    return {"log_variance_shift": mean(shifted["log_shift"]),
            "order_acc_change": shifted["test_acc"] - placed["test_acc"],
            "recalibration_nll_change": shifted["recalibrated_nll"] - shifted["test_nll"],
            "recalibration_acc_change": shifted["recalibrated_acc"] - shifted["test_acc"],
            "order_nll_change": shifted["test_nll"] - placed["test_nll"],
            "log_variance_shift_bn_first": mean(placed["log_shift"])}


def plot(ax, raws: list[dict], settings: dict) -> None:
    shift = [sum(r["dropout-bn"]["log_shift"]) / max(len(r["dropout-bn"]["log_shift"]), 1) for r in raws]
    cost = [r["dropout-bn"]["test_acc"] - r["bn-dropout"]["test_acc"] for r in raws]
    gain = [r["dropout-bn"]["recalibrated_acc"] - r["dropout-bn"]["test_acc"] for r in raws]
    ax.scatter(shift, cost, color="C0", label="acc(dropout->BN) - acc(BN->dropout)")
    ax.scatter(shift, gain, color="C1", marker="x", label="accuracy gained by recalibrating BN")
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.set(title="per seed, against the measured variance shift", xlabel="mean log(running var / inference var)",
           ylabel="accuracy difference")
    ax.legend(fontsize=7)


CLAIM = Claim(
    number=7, key="batchnorm", title="Dropout before BatchNorm: a variance shift that costs accuracy",
    source="Li, Chen, Hu, Yang 2019, CVPR, 'Understanding the Disharmony between Dropout and Batch Normalization by "
           "Variance Shift', sec. 3 (the shift) and sec. 4 (its effect)",
    statement="Dropout changes a unit's variance between training and inference; a BatchNorm after it keeps the "
              "training-time variance as its population statistic, so at inference it normalizes with the wrong "
              "variance ('variance shift'), and the inconsistency lowers accuracy. The shift is larger with a "
              "higher drop rate; it is avoided by placing dropout after the last BN.",
    regime="A 3-hidden-layer MLP (128 units, p = 0.5) with Linear-ReLU-Dropout-BN blocks: the shift passes through "
           "every block. Li et al. find little harm in wide shallow networks, so a small or absent accuracy cost is "
           "a possible, legitimate outcome (judged against the SESOI: 'no effect' is a verdict).",
    mechanism="The variance shift itself (droplab.diagnostics.variance_shift): BN's running variance over the "
              "variance its input has at inference, per unit, averaged over the BN layers fed by dropout. If the "
              "accuracy cost comes from it, re-estimating BN's statistics with dropout off "
              "(droplab.diagnostics.recalibrate_bn) must remove it: the test NLL after recalibration is measured.",
    setup_text="MLP 40-128-128-128-10 on the seed's MNIST-1D draw, p = 0.5: Linear-ReLU-Dropout-BatchNorm blocks "
               "(BN fed by dropout) vs Linear-BatchNorm-ReLU-Dropout; learning rate tuned per arm in {0.003, 0.001}, "
               "best-validation checkpoint, patience 15; then the first model's BN statistics re-estimated on the "
               "training split with dropout off.",
    parts=(Part("a", "dropout before BN makes BN's running variance exceed the variance it sees at inference"),
           Part("b", "dropout before BN tests worse than BN before dropout"),
           Part("c", "re-estimating BN's statistics with dropout off lowers the test NLL of the dropout-then-BN "
                     "network")),
    arms=(Arm("dropout-bn", LR_CANDIDATES), Arm("bn-dropout", LR_CANDIDATES)),
    effects=(Effect("log_variance_shift", "mean log(BN running var / inference var), dropout -> BN", +1,
                    math.log(1.1), "a 10% variance mismatch (log 1.1): smaller ones are within BN's own estimation "
                                   "noise over a training epoch", part="a"),
             Effect("order_acc_change", "test acc(dropout -> BN) - test acc(BN -> dropout)", -1, accuracy_sesoi,
                    ACCURACY_REASON, part="b"),
             Effect("recalibration_nll_change", "test NLL after recalibrating BN - before", -1, 0.02,
                    "0.02 nats per example: about 2% of the test NLL, the size of a 1-point accuracy change", part="c"),
             Effect("recalibration_acc_change", "test acc after recalibrating BN - before", +1, accuracy_sesoi,
                    ACCURACY_REASON, primary=False, part="c"),
             Effect("order_nll_change", "test NLL(dropout -> BN) - test NLL(BN -> dropout)", +1, 0.02,
                    "0.02 nats per example", primary=False, part="b"),
             Effect("log_variance_shift_bn_first", "mean log variance shift, BN -> dropout (BN fed through a Linear)",
                    +1, math.log(1.1), "as the dropout -> BN shift", primary=False, part="a")),
    settings=settings, run=run, measure=measure, plot=plot, baselines=("mnist1d-mlp",))
