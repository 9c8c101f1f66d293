"""Claim 15: dropout slows training: more epochs to reach a fixed validation accuracy (censoring handled)."""

from __future__ import annotations

import math

from ..claim import Arm, Claim, Effect, Part
from .common import LR_CANDIDATES, mlp_arm, summary

TARGET = 0.55
RATES = {"none": 0.0, "dropout": 0.5}


def settings(tier: str) -> dict:
    return {"tier": tier, "target": TARGET, "rates": RATES}


def run(settings: dict, arm: str, seed: int, hp: dict) -> dict:
    trained = mlp_arm(seed, settings["tier"], lr=hp["lr"], p=RATES[arm])
    out = summary(trained)
    reached = [row["epoch"] for row in trained.history if row["val_acc"] >= settings["target"]]
    out["target_epoch"] = reached[0] if reached else None  # None: censored at the last epoch run
    return out


def _epochs(raw: dict) -> float:
    """Epochs to the target; a run that never reached it counts its last epoch + 1 (a lower bound)."""
    return float(raw["target_epoch"] if raw["target_epoch"] is not None else raw["epochs_run"] + 1)


def measure(raws: dict, settings: dict) -> dict:
    slow, fast = _epochs(raws["dropout"]), _epochs(raws["none"])
    return {"log2_slowdown": math.log2(slow / fast), "log2_slowdown_minus_1": math.log2(slow / fast) - 1.0}


def checks(raws: list[dict], settings: dict) -> dict:
    missed = sum(raw["none"]["target_epoch"] is None for raw in raws)
    slow = sum(raw["dropout"]["target_epoch"] is None for raw in raws)
    return {"every run without dropout reaches the target": (missed == 0, f"{missed} of {len(raws)} censored"),
            "dropout runs that never reach the target are few": (slow <= len(raws) // 10,
                                                                 f"{slow} of {len(raws)} censored (counted as "
                                                                 "their last epoch + 1: a lower bound)")}


def plot(ax, raws: list[dict], settings: dict) -> None:
    for arm, color in (("none", "C0"), ("dropout", "C1")):
        for i, raw in enumerate(raws):
            curve = raw[arm]["curve"]
            ax.plot(range(1, len(curve) + 1), curve, color=color, alpha=0.4, label=arm if i == 0 else None)
            if raw[arm]["target_epoch"] is not None:
                ax.plot(raw[arm]["target_epoch"], settings["target"], "o", color=color, markersize=4)
    ax.axhline(settings["target"], color="gray", linestyle=":")
    ax.set(title="validation accuracy per seed (dots: target reached)", xlabel="epoch", ylabel="val acc")
    ax.legend(fontsize=7)


CLAIM = Claim(
    number=15, key="convergence", title="Dropout slows training",
    source="Srivastava et al. 2014, JMLR 15, sec. 11 (conclusion)",
    statement="'One of the drawbacks of dropout is that it increases training time. A dropout network typically "
              "takes 2-3 times longer to train than a standard neural network of the same architecture', because "
              "the parameter updates are very noisy.",
    regime=f"The claim-1 network; training time measured as the epochs (equal to updates: same batch size) to "
           f"reach a fixed validation accuracy of {TARGET}, below the best of both arms, so both reach it.",
    mechanism="The validation curves of both arms are shown; the ratio is also compared with the 2x the source "
              "names (secondary).",
    setup_text=f"The claim-1 arms (MLP 40-256-256-10, p = 0 vs 0.5, learning rate tuned per arm in {{0.003, 0.001}}, "
               f"patience 15, at most 250 epochs): the first epoch whose validation accuracy reaches {TARGET}. A "
               "dropout run that never reaches it is counted at its last epoch + 1, a lower bound that can only "
               "understate the slowdown; a run without dropout that never reaches it withholds the verdict.",
    parts=(Part("a", "dropout needs more epochs to reach the same validation accuracy"),),
    arms=(Arm("none", LR_CANDIDATES), Arm("dropout", LR_CANDIDATES)),
    effects=(Effect("log2_slowdown", "log2(epochs to target, p=0.5 / epochs to target, p=0)", +1, math.log2(1.25),
                    "a 25% slowdown (log2 1.25): smaller ones are within the epoch granularity of a 10-20 epoch run"),
             Effect("log2_slowdown_minus_1", "log2(slowdown) - log2(2): the source's 2x", +1, math.log2(1.25),
                    "as above", primary=False)),
    settings=settings, run=run, measure=measure, checks=checks, plot=plot, baselines=("mnist1d-mlp",))
