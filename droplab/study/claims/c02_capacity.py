"""Claim 2: dropout needs capacity: it hurts a network too narrow for it, and its gain grows with the width."""

from __future__ import annotations

from ..claim import Arm, Claim, Effect, Part
from .common import ACCURACY_REASON, LR_CANDIDATES, accuracy_sesoi, mlp_arm, summary

WIDTHS = {"narrow": 16, "wide": 256}
P = 0.5


def _arm(name: str) -> tuple[int, float]:
    size, rate = name.split("-")
    return WIDTHS[size], (P if rate == "dropout" else 0.0)


def settings(tier: str) -> dict:
    return {"tier": tier, "widths": WIDTHS, "p": P, "depth": 2}


def run(settings: dict, arm: str, seed: int, hp: dict) -> dict:
    width, p = _arm(arm)
    return summary(mlp_arm(seed, settings["tier"], lr=hp["lr"], p=p, width=width))


def measure(raws: dict, settings: dict) -> dict:
    gain = {size: raws[f"{size}-dropout"]["test_acc"] - raws[f"{size}-none"]["test_acc"] for size in WIDTHS}
    return {"narrow_gain": gain["narrow"], "gain_growth": gain["wide"] - gain["narrow"],
            "narrow_train_change": raws["narrow-dropout"]["train_acc"] - raws["narrow-none"]["train_acc"],
            "wide_gain": gain["wide"]}


def plot(ax, raws: list[dict], settings: dict) -> None:
    for size, color in (("narrow", "C0"), ("wide", "C1")):
        gains = [raw[f"{size}-dropout"]["test_acc"] - raw[f"{size}-none"]["test_acc"] for raw in raws]
        ax.plot([WIDTHS[size]] * len(gains), gains, "o", color=color, alpha=0.7)
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set(title="test acc(p=0.5) - test acc(p=0), per seed", xlabel="hidden units per layer", ylabel="dropout gain")


CLAIM = Claim(
    number=2, key="capacity", title="Dropout needs capacity: it hurts narrow networks and helps wide ones",
    source="Srivastava et al. 2014, JMLR 15, appendix A.1 (network size) and sec. 7.3 (effect of the dropout rate)",
    statement="'If an n-sized layer is optimal for a standard neural net on any given task, a good dropout net "
              "should have at least n/p units' (p the retention probability): dropout thins the network, so a "
              "layer too narrow for it underfits, and the benefit of dropout appears once the layer is wide "
              "enough.",
    regime="Two widths an order of magnitude apart: 16 units per layer (too few to fit MNIST-1D even without "
           "dropout, so halving them underfits) and 256 (ample: the unregularized net overfits).",
    mechanism="Training accuracy of the narrow net with and without dropout: underfitting shows as lost "
              "training accuracy, not only test accuracy.",
    setup_text="MLP 40-w-w-10 with w = 16 or 256 on the seed's MNIST-1D draw, p = 0 or 0.5 after each hidden layer "
               "(4 arms), learning rate tuned per arm in {0.003, 0.001}, best-validation checkpoint.",
    parts=(Part("a", "dropout with p = 0.5 lowers the test accuracy of the 16-unit network"),
           Part("b", "the dropout gain is larger at 256 units than at 16")),
    arms=tuple(Arm(f"{size}-{rate}", LR_CANDIDATES) for size in WIDTHS for rate in ("none", "dropout")),
    effects=(Effect("narrow_gain", "test acc(16 units, p=0.5) - test acc(16 units, p=0)", -1, accuracy_sesoi,
                    ACCURACY_REASON, part="a"),
             Effect("gain_growth", "gain(256 units) - gain(16 units)", +1, 0.02,
                    "2 points: a difference of two gains, each a difference of accuracies", part="b"),
             Effect("narrow_train_change", "train acc(16, p=0.5) - train acc(16, p=0) (mechanism)", -1,
                    accuracy_sesoi, ACCURACY_REASON, primary=False, part="a"),
             Effect("wide_gain", "test acc(256, p=0.5) - test acc(256, p=0)", +1, accuracy_sesoi, ACCURACY_REASON,
                    primary=False, part="b")),
    settings=settings, run=run, measure=measure, plot=plot, baselines=("mnist1d-mlp",))
