"""Claim 1: dropout reduces overfitting; split into a smaller generalization gap and better held-out accuracy."""

from __future__ import annotations

from ..claim import Arm, Claim, Effect, Part
from .common import ACCURACY_REASON, LR_CANDIDATES, accuracy_sesoi, mlp_arm, summary

RATES = {"none": 0.0, "dropout": 0.5}


def settings(tier: str) -> dict:
    return {"tier": tier, "width": 256, "depth": 2, "rates": RATES}


def run(settings: dict, arm: str, seed: int, hp: dict) -> dict:
    return summary(mlp_arm(seed, settings["tier"], lr=hp["lr"], p=RATES[arm]))


def measure(raws: dict, settings: dict) -> dict:
    none, drop = raws["none"], raws["dropout"]
    return {"gap_change": drop["gap"] - none["gap"], "test_acc_change": drop["test_acc"] - none["test_acc"],
            "train_acc_change": drop["train_acc"] - none["train_acc"]}


def checks(raws: list[dict], settings: dict) -> dict:
    gap = sum(raw["none"]["gap"] for raw in raws) / len(raws)
    return {"the network without dropout overfits": (gap >= 0.05, f"mean train-validation gap {gap:.3f} "
                                                                  "(needs >= 0.05)")}


def plot(ax, raws: list[dict], settings: dict) -> None:
    for arm, color in (("none", "C0"), ("dropout", "C1")):
        ax.scatter([raw[arm]["gap"] for raw in raws], [raw[arm]["test_acc"] for raw in raws], color=color,
                   label=f"{arm} (one point per seed)")
    ax.set(title="gap and test accuracy at each arm's best checkpoint", xlabel="train acc - val acc",
           ylabel="test acc")
    ax.legend(fontsize=7)


CLAIM = Claim(
    number=1, key="overfitting", title="Dropout reduces overfitting",
    source="Srivastava, Hinton, Krizhevsky, Sutskever, Salakhutdinov 2014, JMLR 15, abstract and sec. 6; "
           "Hinton et al. 2012, arXiv:1207.0580",
    statement="Randomly dropping units during training 'prevents units from co-adapting too much' and "
              "'significantly reduces overfitting and gives major improvements over other regularization "
              "methods': a dropout network generalizes better than the same network trained without it.",
    regime="A network large enough to overfit its training set: the 40-256-256-10 MLP reaches ~100% training "
           "accuracy on 3200 MNIST-1D signals while validation accuracy stays near 62% (checked: the gap without "
           "dropout must be at least 5 points, or the claim cannot show).",
    mechanism="The generalization gap itself (training minus validation accuracy at the best checkpoint) is the "
              "overfitting the claim says dropout removes; the training accuracy it gives up is reported beside it.",
    setup_text="MLP 40-256-256-10 (ReLU) on a fresh MNIST-1D draw per seed (3200 train / 800 validation / 1000 "
               "test), AdamW, batch 100, learning rate tuned per arm in {0.003, 0.001}; p = 0 vs p = 0.5 after "
               "each hidden layer; each arm's best-validation checkpoint, patience 15 epochs.",
    parts=(Part("a", "dropout shrinks the gap between training and held-out accuracy"),
           Part("b", "dropout raises held-out (test) accuracy")),
    arms=(Arm("none", LR_CANDIDATES), Arm("dropout", LR_CANDIDATES)),
    effects=(Effect("gap_change", "gap(p=0.5) - gap(p=0)", -1, 0.02,
                    "2 points: the gap is a difference of two accuracies, so twice the 1-point accuracy SESOI",
                    part="a"),
             Effect("test_acc_change", "test acc(p=0.5) - test acc(p=0)", +1, accuracy_sesoi, ACCURACY_REASON,
                    part="b"),
             Effect("train_acc_change", "train acc(p=0.5) - train acc(p=0) (mechanism)", -1, accuracy_sesoi,
                    ACCURACY_REASON, primary=False, part="a")),
    settings=settings, run=run, measure=measure, checks=checks, plot=plot, baselines=("mnist1d-mlp",))
