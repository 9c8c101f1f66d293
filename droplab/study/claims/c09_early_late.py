"""Claim 9: early dropout helps an underfitting model, late dropout an overfitting one."""

from __future__ import annotations

from ..claim import Claim, Effect
from ..data import classification
from ..fit import evaluate, train_mlp


def setup(quick: bool) -> dict:
    epochs = 12 if quick else 60
    return {"dataset": "mnist1d", "small_width": 32, "large_width": 256, "depth": 2, "early_p": 0.1,
            "late_p": 0.5, "switch_epoch": epochs // 4, "late_epoch": epochs // 2, "epochs": epochs}


def _schedules(settings: dict) -> dict:
    from ...schedules import constant, early, stepwise

    return {"small_none": constant(0.0), "small_early": early(settings["early_p"], settings["switch_epoch"]),
            "large_none": constant(0.0), "large_late": stepwise([0.0, settings["late_p"]], [settings["late_epoch"]])}


def run(settings: dict, seed: int) -> dict:
    data = classification(settings["dataset"], seed)
    out = {}
    for name, schedule in _schedules(settings).items():
        width = settings["small_width"] if name.startswith("small") else settings["large_width"]
        result = train_mlp(data, seed, epochs=settings["epochs"], rate=schedule,
                           mlp_args={"width": width, "depth": settings["depth"]})
        out[name] = {"test_acc": evaluate(result.model, data.test.x, data.test.y)["acc"],
                     "train_acc": result.final()["train_eval_acc"],
                     "val_curve": [row["val_acc"] for row in result.history]}
    return out


def measure(raw: dict, settings: dict) -> dict:
    return {"early_gain_small": raw["small_early"]["test_acc"] - raw["small_none"]["test_acc"],
            "late_gain_large": raw["large_late"]["test_acc"] - raw["large_none"]["test_acc"]}


def plot(ax, raws: list[dict], settings: dict) -> None:
    for name, color in (("small_none", "C0"), ("small_early", "C1"), ("large_none", "C2"), ("large_late", "C3")):
        for i, raw in enumerate(raws):
            ax.plot(range(1, len(raw[name]["val_curve"]) + 1), raw[name]["val_curve"], color=color, alpha=0.6,
                    label=name.replace("_", ", ") if i == 0 else None)
    ax.set(title="validation accuracy per seed", xlabel="epoch", ylabel="val acc")
    ax.legend(fontsize=8)


CLAIM = Claim(
    number=9, key="early-late", title="Early dropout helps underfitting models, late dropout overfitting ones",
    setup_text="MNIST-1D, 60 epochs. Underfitting model: MLP 40-32-32-10, no dropout vs early dropout (p = 0.1 "
               "for the first 15 epochs, droplab.schedules.early). Overfitting model: MLP 40-256-256-10, no "
               "dropout vs late dropout (p = 0 for 30 epochs, then 0.5, droplab.schedules.stepwise).",
    expected="early dropout raises the small model's test accuracy (> 0); late dropout raises the large one's (> 0)",
    source="Liu, Xu, Cheng, Yeung, Sun, Zhuang, Darrell, Luo 2023, ICML, 'Dropout Reduces Underfitting'",
    effects=(Effect("early_gain_small", "test acc(small, early dropout) - test acc(small, none)", +1),
             Effect("late_gain_large", "test acc(large, late dropout) - test acc(large, none)", +1)),
    seeds=5, setup=setup, run=run, measure=measure, plot=plot)
