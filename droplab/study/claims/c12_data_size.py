"""Claim 12: dropout helps most when data is scarce; its gain shrinks as the training set grows."""

from __future__ import annotations

import math

from ..claim import Claim, Effect
from ..data import classification, subsample
from ..fit import evaluate, train_mlp


def setup(quick: bool) -> dict:
    return {"dataset": "mnist1d", "sizes": [200, 800, 3200], "rates": [0.0, 0.5], "width": 256, "depth": 2,
            "steps": 300 if quick else 1500, "batch_size": 128}


def run(settings: dict, seed: int) -> dict:
    data = classification(settings["dataset"], seed)
    acc = {}
    for n in settings["sizes"]:
        train = subsample(data.train.x, data.train.y, n, seed)
        # the same number of gradient steps at every size, so small sets are not simply trained less
        epochs = max(1, math.ceil(settings["steps"] / math.ceil(n / settings["batch_size"])))
        acc[str(n)] = [evaluate(train_mlp(data, seed, epochs=epochs, train=train, eval_every=epochs,
                                          batch_size=settings["batch_size"],
                                          mlp_args={"width": settings["width"], "depth": settings["depth"],
                                                    "p": p}).model, data.test.x, data.test.y)["acc"]
                       for p in settings["rates"]]
    return {"test_acc": acc}


def measure(raw: dict, settings: dict) -> dict:
    gains = {n: raw["test_acc"][str(n)][1] - raw["test_acc"][str(n)][0] for n in settings["sizes"]}
    small, large = settings["sizes"][0], settings["sizes"][-1]
    return {"gain_shrink": gains[small] - gains[large], "gain_small": gains[small]}


def plot(ax, raws: list[dict], settings: dict) -> None:
    sizes = settings["sizes"]
    for i, raw in enumerate(raws):
        ax.plot(sizes, [raw["test_acc"][str(n)][1] - raw["test_acc"][str(n)][0] for n in sizes], marker="o",
                color="C0", alpha=0.7, label="per seed" if i == 0 else None)
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.set_xscale("log")
    ax.set(title="dropout's gain against training-set size", xlabel="training examples",
           ylabel="test acc(p=0.5) - test acc(p=0)")
    ax.legend(fontsize=8)


CLAIM = Claim(
    number=12, key="data-size", title="Dropout helps most when data is scarce",
    setup_text="MLP 40-256-256-10 on MNIST-1D subsets of 200, 800 and 3200 training examples, p = 0 vs 0.5, "
               "1500 Adam steps at every size (batch 128), test accuracy on the full 1000-example test set.",
    expected="the gain of p = 0.5 over p = 0 is larger at 200 examples than at 3200 (> 0), and positive at 200",
    source="Srivastava et al. 2014, JMLR 15, sec. 7.4 (effect of data set size) and fig. 10",
    effects=(Effect("gain_shrink", "gain(200 examples) - gain(3200 examples)", +1),
             Effect("gain_small", "test acc(p=0.5) - test acc(p=0) at 200 examples", +1, primary=False)),
    seeds=3, setup=setup, run=run, measure=measure, plot=plot)
