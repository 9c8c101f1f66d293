"""Claim 6: Gaussian dropout with the same variance (p/(1-p)) works as well as Bernoulli dropout (TOST)."""

from __future__ import annotations

from ..claim import Arm, Claim, Effect, Part
from .common import ACCURACY_REASON, LR_CANDIDATES, accuracy_sesoi, mlp_arm, summary

P = 0.5
VARIANTS = {"bernoulli": "dropout", "gaussian": "gaussian"}


def settings(tier: str) -> dict:
    return {"tier": tier, "p": P}


def run(settings: dict, arm: str, seed: int, hp: dict) -> dict:
    return summary(mlp_arm(seed, settings["tier"], lr=hp["lr"], p=settings["p"], variant=VARIANTS[arm]))


def measure(raws: dict, settings: dict) -> dict:
    return {"gaussian_minus_bernoulli": raws["gaussian"]["test_acc"] - raws["bernoulli"]["test_acc"],
            "gap_gaussian_minus_bernoulli": raws["gaussian"]["gap"] - raws["bernoulli"]["gap"]}


def plot(ax, raws: list[dict], settings: dict) -> None:
    ax.scatter([raw["bernoulli"]["test_acc"] for raw in raws], [raw["gaussian"]["test_acc"] for raw in raws],
               color="C0", label="one seed")
    lo = min(min(r["bernoulli"]["test_acc"], r["gaussian"]["test_acc"]) for r in raws) - 0.01
    hi = max(max(r["bernoulli"]["test_acc"], r["gaussian"]["test_acc"]) for r in raws) + 0.01
    ax.plot([lo, hi], [lo, hi], color="gray", linewidth=0.8)
    ax.set(title="test accuracy per seed", xlabel="Bernoulli dropout", ylabel="Gaussian dropout")
    ax.legend(fontsize=7)


CLAIM = Claim(
    number=6, key="gaussian", title="Gaussian dropout (variance p/(1-p)) works as well as Bernoulli dropout",
    source="Srivastava et al. 2014, JMLR 15, sec. 10 (multiplicative Gaussian noise) and table 10",
    statement="Multiplying each unit by noise drawn from N(1, p/(1-p)), the mean and variance of Bernoulli "
              "dropout with drop rate p, works as well as Bernoulli dropout, perhaps slightly better (table 10: "
              "slightly lower error on MNIST and CIFAR-10).",
    regime="The claim-1 network, which dropout regularizes strongly at p = 0.5, so the two noises have something "
           "to match.",
    mechanism="The generalization gap of each noise (the claim is that the regularization, not only the accuracy, "
              "is the same).",
    setup_text="MLP 40-256-256-10 on the seed's MNIST-1D draw with droplab.nn.Dropout(0.5) or "
               "droplab.nn.GaussianDropout(0.5) (noise N(1, 1)) after each hidden layer, learning rate tuned per arm "
               "in {0.003, 0.001}, best-validation checkpoint, patience 15.",
    parts=(Part("a", "Gaussian and Bernoulli dropout reach the same test accuracy (within 1 point)"),),
    arms=(Arm("bernoulli", LR_CANDIDATES), Arm("gaussian", LR_CANDIDATES)),
    effects=(Effect("gaussian_minus_bernoulli", "test acc(Gaussian) - test acc(Bernoulli)", +1, accuracy_sesoi,
                    "equivalence margin: " + ACCURACY_REASON, kind="equivalence"),
             Effect("gap_gaussian_minus_bernoulli", "gap(Gaussian) - gap(Bernoulli) (mechanism)", +1, 0.02,
                    "2 points: a difference of two accuracies", kind="equivalence", primary=False)),
    settings=settings, run=run, measure=measure, plot=plot, baselines=("mnist1d-mlp",))
