"""Claim 13: dropout combines with other regularizers: a 2x2x2 factorial of dropout, weight decay and augmentation,
each cell with its own tuned strengths."""

from __future__ import annotations

import itertools

from ..claim import Arm, Claim, Effect, Part
from .common import ACCURACY_REASON, accuracy_sesoi, mlp_arm, summary

FACTORS = ("D", "W", "A")  # dropout, weight decay, augmentation
P, WD, LR = 1.0, 1.0, 3e-3  # the base strengths the tuned shares multiply
CELLS = ["".join(f for f, on in zip(FACTORS, bits) if on) or "none" for bits in itertools.product((0, 1), repeat=3)]


STRENGTHS = (0.5, 0.25)  #: each cell's tuning grid: this share of the base dropout rate and weight decay


def _candidates(cell: str) -> tuple[dict, ...]:
    """A cell's tuning grid: the strengths of its tunable regularizers (dropout p, weight decay) together."""
    if "D" not in cell and "W" not in cell:
        return ({},)
    return tuple({"strength": s} for s in STRENGTHS)


def settings(tier: str) -> dict:
    return {"tier": tier, "p": P, "weight_decay": WD, "lr": LR, "cells": CELLS}


def run(settings: dict, arm: str, seed: int, hp: dict) -> dict:
    s = hp.get("strength", STRENGTHS[0])
    p = settings["p"] * s if "D" in arm else 0.0
    wd = settings["weight_decay"] * s if "W" in arm else 0.0
    trained = mlp_arm(seed, settings["tier"], lr=settings["lr"], p=p, weight_decay=wd, augment="A" in arm)
    return summary(trained) | {"p": p, "weight_decay": wd}


def _best_single(raws: dict) -> dict:
    """The single-regularizer cell with the best validation accuracy on this seed (chosen without the test set)."""
    return max((raws[c] for c in FACTORS), key=lambda raw: raw["val_acc"])


def _main_effect(raws: dict, factor: str) -> float:
    on = [raws[c]["test_acc"] for c in CELLS if factor in c]
    off = [raws[c]["test_acc"] for c in CELLS if factor not in c]
    return sum(on) / len(on) - sum(off) / len(off)


def _interaction(raws: dict, a: str, b: str) -> float:
    sign = lambda c: (1 if a in c else -1) * (1 if b in c else -1)  # noqa: E731
    return sum(sign(c) * raws[c]["test_acc"] for c in CELLS) / 4


def measure(raws: dict, settings: dict) -> dict:
    return {"all_vs_best_single": raws["DWA"]["test_acc"] - _best_single(raws)["test_acc"],
            "dropout_on_top": raws["DWA"]["test_acc"] - raws["WA"]["test_acc"],
            **{f"main_{f}": _main_effect(raws, f) for f in FACTORS},
            "interaction_DA": _interaction(raws, "D", "A"), "interaction_DW": _interaction(raws, "D", "W")}


def plot(ax, raws: list[dict], settings: dict) -> None:
    for j, cell in enumerate(CELLS):
        accs = [raw[cell]["test_acc"] for raw in raws]
        ax.plot([j] * len(accs), accs, "o", color="C0", alpha=0.6)
    ax.set_xticks(range(len(CELLS)), CELLS, fontsize=8)
    ax.set(title="test accuracy per cell and seed (D dropout, W weight decay, A augmentation)", ylabel="test acc")


CLAIM = Claim(
    number=13, key="regularizers", title="Dropout combines with weight decay and augmentation",
    source="Srivastava et al. 2014, JMLR 15, sec. 5.1 and table 9 (dropout combined with L2, max-norm and other "
           "regularizers); sec. 6 (dropout on top of data augmentation)",
    statement="Dropout is a regularizer of a different kind from the usual ones and adds to them: 'dropout "
              "combined with' another regularizer gives lower error than either alone (table 9), and dropout "
              "improves networks already trained with other regularizers and augmented data.",
    regime="The claim-1 network, which overfits and so has room for several regularizers; every cell of the "
           "factorial gets its own strength (tuned), so a combination is not over-regularized by strengths chosen "
           "for a regularizer alone.",
    mechanism="The factorial's main effects and two-way interactions (a negative dropout x augmentation "
              "interaction means they overlap: each does part of the other's work).",
    setup_text="MLP 40-256-256-10 on the seed's MNIST-1D draw, AdamW 0.003, batch 100; the 8 cells of dropout "
               f"(p = {P} x s) x decoupled weight decay ({WD} x s) x shift-and-noise augmentation, each cell's "
               "strength s tuned in {0.5, 0.25} on the tuning seeds; best-validation checkpoint, patience 15 (early "
               "stopping is part of every cell).",
    parts=(Part("a", "all three together beat the best single regularizer"),
           Part("b", "adding dropout to weight decay and augmentation raises test accuracy")),
    arms=tuple(Arm(cell, _candidates(cell)) for cell in CELLS),
    effects=(Effect("all_vs_best_single", "test acc(D+W+A) - test acc(best single, chosen on validation)", +1,
                    accuracy_sesoi, ACCURACY_REASON, part="a"),
             Effect("dropout_on_top", "test acc(D+W+A) - test acc(W+A)", +1, accuracy_sesoi, ACCURACY_REASON,
                    part="b"),
             *(Effect(f"main_{f}", f"main effect of {name} on test acc", +1, accuracy_sesoi, ACCURACY_REASON,
                      primary=False, part="a")
               for f, name in zip(FACTORS, ("dropout", "weight decay", "augmentation"))),
             Effect("interaction_DA", "dropout x augmentation interaction", +1, accuracy_sesoi, ACCURACY_REASON,
                    primary=False, part="b"),
             Effect("interaction_DW", "dropout x weight decay interaction", +1, accuracy_sesoi, ACCURACY_REASON,
                    primary=False, part="b")),
    settings=settings, run=run, measure=measure, plot=plot, baselines=("mnist1d-mlp",))
