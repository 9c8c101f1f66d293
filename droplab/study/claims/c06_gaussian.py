"""Claim 6: Gaussian dropout with noise variance p/(1-p) matches Bernoulli dropout."""

from __future__ import annotations

from ..claim import Claim, Effect
from ..data import classification
from ..fit import train_kinds

MARGIN = 0.01  # accuracy points within which the two count as matching


def setup(quick: bool) -> dict:
    # digits and width 64: Gaussian noise costs a normal draw per unit, regenerated in backward
    return {"dataset": "digits", "width": 64, "depth": 2, "p": 0.5, "epochs": 10 if quick else 40,
            "margin": MARGIN}


def run(settings: dict, seed: int) -> dict:
    return train_kinds(classification(settings["dataset"], seed), seed, settings, ("bernoulli", "gaussian"))


def measure(raw: dict, settings: dict) -> dict:
    change = raw["gaussian"]["test_acc"] - raw["bernoulli"]["test_acc"]
    return {"abs_change_minus_margin": abs(change) - settings["margin"], "test_acc_change": change}


def plot(ax, raws: list[dict], settings: dict) -> None:
    for kind, color in (("bernoulli", "C0"), ("gaussian", "C1")):
        for i, raw in enumerate(raws):
            ax.plot(range(1, len(raw[kind]["val_curve"]) + 1), raw[kind]["val_curve"], color=color, alpha=0.7,
                    label=f"{kind} dropout" if i == 0 else None)
    ax.set(title="validation accuracy per seed", xlabel="epoch", ylabel="val acc")
    ax.legend(fontsize=8)


CLAIM = Claim(
    number=6, key="gaussian", title="Gaussian dropout (variance p/(1-p)) matches Bernoulli dropout",
    setup_text="MLP 64-64-64-10 on scikit-learn digits (1079 training images), 40 epochs: Bernoulli dropout "
               "p = 0.5 vs multiplicative Gaussian noise N(1, p/(1-p)) = N(1, 1) at the same sites "
               "(droplab.nn.GaussianDropout).",
    expected="test accuracies within 1 point (|difference| - 0.01 < 0); the paper finds Gaussian slightly "
             "better (difference > 0)",
    source="Srivastava et al. 2014, JMLR 15, sec. 10 and table 10; Wang & Manning 2013 (fast dropout)",
    effects=(Effect("abs_change_minus_margin", "|acc(Gaussian) - acc(Bernoulli)| - 0.01", -1),
             Effect("test_acc_change", "test acc(Gaussian) - test acc(Bernoulli)", +1, primary=False)),
    seeds=3, setup=setup, run=run, measure=measure, plot=plot)
