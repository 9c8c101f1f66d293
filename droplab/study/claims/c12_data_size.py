"""Claim 12: dropout's gain over the training-set size is an inverted U: small at very small sizes, largest in
between, shrinking again with plenty of data."""

from __future__ import annotations

import math

from ..claim import Arm, Claim, Effect, Part
from .common import EPOCHS, LR_CANDIDATES, PATIENCE, mlp_arm, mnist1d_splits, summary

SIZES = (200, 800, 3200)
RATES = {"none": 0.0, "dropout": 0.5}


def settings(tier: str) -> dict:
    return {"tier": tier, "sizes": list(SIZES), "p": RATES["dropout"]}


def run(settings: dict, arm: str, seed: int, hp: dict) -> dict:
    from ..data import subsample

    size, kind = arm.split("-")
    n, full = int(size), mnist1d_splits(seed)
    splits = full if n == len(full.train) else subsample(full, n, seed)
    # the same number of optimizer steps (and patience in steps) at every size, so small sets are not trained less
    per_epoch = math.ceil(n / 100)
    steps, patience_steps = EPOCHS[settings["tier"]] * 32, PATIENCE[settings["tier"]] * 32
    trained = mlp_arm(seed, settings["tier"], lr=hp["lr"], p=RATES[kind], splits=splits,
                      max_epochs=math.ceil(steps / per_epoch), patience_epochs=math.ceil(patience_steps / per_epoch))
    out = summary(trained)
    out.pop("curve")  # thousands of epochs at 200 examples
    return out


def _gain(raws: dict, n: int) -> float:
    return raws[f"{n}-dropout"]["test_acc"] - raws[f"{n}-none"]["test_acc"]


def measure(raws: dict, settings: dict) -> dict:
    small, middle, large = (_gain(raws, n) for n in settings["sizes"])
    return {"rise": middle - small, "fall": middle - large, "gain_small": small, "gain_middle": middle,
            "gain_large": large}


def plot(ax, raws: list[dict], settings: dict) -> None:
    sizes = settings["sizes"]
    for i, raw in enumerate(raws):
        ax.plot(sizes, [_gain(raw, n) for n in sizes], marker="o", color="C0", alpha=0.5,
                label="one seed" if i == 0 else None)
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.set_xscale("log")
    ax.set(title="dropout's gain against training-set size", xlabel="training examples",
           ylabel="test acc(p=0.5) - test acc(p=0)")
    ax.legend(fontsize=7)


CLAIM = Claim(
    number=12, key="data-size", title="Dropout's gain over the data-set size is an inverted U",
    source="Srivastava et al. 2014, JMLR 15, sec. 7.4 (effect of data set size) and fig. 10",
    statement="'For extremely small data sets (100, 500) dropout does not give any improvements' (the model has "
              "enough parameters to overfit despite the noise); 'as the size of the data set is increased, the gain "
              "from doing dropout increases up to a point and then declines.'",
    regime="MNIST-1D training sets of 200, 800 and 3200 signals, the same validation and test signals, the same "
           "number of optimizer steps at every size.",
    mechanism="The gain at each size is reported (the curve in the figure), not only the two contrasts.",
    setup_text="MLP 40-256-256-10, p = 0 vs 0.5, on the first n signals of a seeded permutation of the seed's "
               "training split (n = 200, 800, 3200); at most 8000 steps, patience 480 steps; learning rate tuned per "
               "arm in {0.003, 0.001}; best-validation checkpoint; the 800 validation and 1000 test signals are the "
               "same for every n.",
    parts=(Part("a", "the gain rises from the smallest size to the middle one"),
           Part("b", "the gain declines from the middle size to the largest")),
    arms=tuple(Arm(f"{n}-{kind}", LR_CANDIDATES) for n in SIZES for kind in RATES),
    effects=(Effect("rise", "gain(800) - gain(200)", +1, 0.02, "2 points: a difference of two gains", part="a"),
             Effect("fall", "gain(800) - gain(3200)", +1, 0.02, "2 points: a difference of two gains", part="b"),
             Effect("gain_small", "gain at 200 examples", +1, 0.01, "1 accuracy point", primary=False, part="a"),
             Effect("gain_middle", "gain at 800 examples", +1, 0.01, "1 accuracy point", primary=False, part="a"),
             Effect("gain_large", "gain at 3200 examples", +1, 0.01, "1 accuracy point", primary=False, part="b")),
    settings=settings, run=run, measure=measure, plot=plot, baselines=("mnist1d-mlp",))
