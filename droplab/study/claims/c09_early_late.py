"""Claim 9: early dropout helps an underfitting model (lower final training loss, higher accuracy); late dropout
helps an overfitting one."""

from __future__ import annotations

from ..claim import Arm, Claim, Effect, Part
from .common import ACCURACY_REASON, mlp_arm, summary

EPOCHS = {"quick": 20, "default": 100, "confirm": 100}
SMALL, LARGE = 8, 256
EARLY_P, LATE_P = 0.1, 0.5
LR = ({"lr": 3e-3}, {"lr": 1e-3})


def settings(tier: str) -> dict:
    epochs = EPOCHS[tier]
    return {"tier": tier, "epochs": epochs, "small": SMALL, "large": LARGE, "early_p": EARLY_P, "late_p": LATE_P,
            "early_until": epochs // 4, "late_from": epochs // 2}


def run(settings: dict, arm: str, seed: int, hp: dict) -> dict:
    size, kind = arm.split("-")
    width = settings["small"] if size == "small" else settings["large"]
    p, schedule = 0.0, None
    if kind == "early":
        p, schedule = settings["early_p"], f"early:{settings['early_until']}"
    elif kind == "late":
        p, schedule = settings["late_p"], f"late:{settings['late_from']}"
    trained = mlp_arm(seed, settings["tier"], lr=hp["lr"], p=p, width=width, schedule=schedule,
                      max_epochs=settings["epochs"], fixed=True)
    out = summary(trained)
    last = trained.history[-1]
    out["final_train_loss"] = float(last["train_loss"])
    out["final_train_acc"] = float(last["train_acc"])
    out["train_loss_curve"] = [round(float(row["train_loss"]), 5) for row in trained.history]
    return out


def measure(raws: dict, settings: dict) -> dict:
    return {"early_train_loss_change": raws["small-early"]["final_train_loss"] - raws["small-none"]["final_train_loss"],
            "early_acc_gain": raws["small-early"]["test_acc"] - raws["small-none"]["test_acc"],
            "late_acc_gain": raws["large-late"]["test_acc"] - raws["large-none"]["test_acc"]}


def checks(raws: list[dict], settings: dict) -> dict:
    small = sum(raw["small-none"]["gap"] for raw in raws) / len(raws)
    large = sum(raw["large-none"]["gap"] for raw in raws) / len(raws)
    return {"the small model underfits": (small <= 0.03, f"mean train-validation gap {small:.3f} (needs <= 0.03)"),
            "the large model overfits": (large >= 0.05, f"mean train-validation gap {large:.3f} (needs >= 0.05)")}


def plot(ax, raws: list[dict], settings: dict) -> None:
    for arm, color in (("small-none", "C0"), ("small-early", "C1")):
        for i, raw in enumerate(raws):
            curve = raw[arm]["train_loss_curve"]
            ax.plot(range(1, len(curve) + 1), curve, color=color, alpha=0.5, label=arm if i == 0 else None)
    ax.axvline(settings["early_until"] + 0.5, color="gray", linestyle=":")
    ax.set(title=f"training loss of the {SMALL}-unit model per seed", xlabel="epoch", ylabel="train loss (eval mode)")
    ax.legend(fontsize=7)


CLAIM = Claim(
    number=9, key="early-late", title="Early dropout helps underfitting models, late dropout overfitting ones",
    source="Liu, Xu, Cheng, Yeung, Sun, Zhuang, Darrell, Luo 2023, ICML, 'Dropout Reduces Underfitting', sec. 3-5",
    statement="Dropout applied only at the start of training ('early dropout') makes underfitting models fit "
              "better: their final training loss is lower and their test accuracy higher (gains of a few tenths of a "
              "point to about a point on ImageNet); dropout turned on only later in training ('late dropout') "
              "improves overfitting "
              "models. The proposed mechanism: early dropout reduces the variance of mini-batch gradient directions "
              "and aligns them with the whole data's gradient.",
    regime=f"An underfitting model: a {SMALL}-unit MLP whose training and validation accuracies stay within 3 points "
           f"(checked), and an overfitting one: the {LARGE}-unit MLP (gap >= 5 points, checked). Schedules are defined "
           "over a fixed run, so every arm trains the same number of epochs.",
    mechanism="The final training loss of the underfitting model (the quantity Liu et al. show early dropout "
              "lowers) is part a, beside the accuracies.",
    setup_text=f"MLP 40-w-w-10 on the seed's MNIST-1D draw, {EPOCHS['confirm']} epochs, AdamW with the learning rate "
               "tuned per arm in {0.003, 0.001}, best-validation checkpoint for the accuracies. Underfitting "
               f"(w = {SMALL}): no dropout vs early dropout (p = {EARLY_P} for the first quarter of the epochs, then "
               f"off; droplab's early:N schedule). Overfitting (w = {LARGE}): no dropout vs late dropout "
               f"(p = {LATE_P} from the middle epoch on; late:N).",
    parts=(Part("a", "early dropout lowers the final training loss of an underfitting model"),
           Part("b", "early dropout raises the test accuracy of an underfitting model"),
           Part("c", "late dropout raises the test accuracy of an overfitting model")),
    arms=tuple(Arm(name, LR) for name in ("small-none", "small-early", "large-none", "large-late")),
    effects=(Effect("early_train_loss_change", "final train loss(early dropout) - (none), small model", -1, 0.01,
                    "0.01 nats: about 1% of the small model's training loss; Liu et al.'s curves differ by more",
                    part="a"),
             Effect("early_acc_gain", "test acc(small, early dropout) - (small, none)", +1, 0.005,
                    "half a point: the smallest gain Liu et al. report for early dropout (+0.3 to +0.5 points on "
                    "their smaller models), and below the study's usual 1 point because that is the claimed size",
                    part="b"),
             Effect("late_acc_gain", "test acc(large, late dropout) - (large, none)", +1, 0.01, ACCURACY_REASON,
                    part="c")),
    settings=settings, run=run, measure=measure, checks=checks, plot=plot, baselines=("mnist1d-mlp",))
