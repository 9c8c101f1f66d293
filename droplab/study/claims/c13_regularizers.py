"""Claim 13: dropout, weight decay, early stopping and augmentation are different regularizers that combine."""

from __future__ import annotations

from ..claim import Claim, Effect
from ..data import classification
from ..fit import evaluate, train_mlp

SINGLES = ("dropout", "weight_decay", "augmentation", "early_stopping")


def setup(quick: bool) -> dict:
    return {"dataset": "mnist1d", "width": 256, "depth": 2, "p": 0.5, "weight_decay": 0.5,
            "epochs": 12 if quick else 60}


def _summary(model, data, history_row: dict) -> dict:
    test = evaluate(model, data.test.x, data.test.y)
    return {"test_acc": test["acc"], "test_ece": test["ece"],
            "gap": history_row["train_eval_acc"] - history_row["val_acc"]}


def run(settings: dict, seed: int) -> dict:
    data = classification(settings["dataset"], seed)
    mlp_args = {"width": settings["width"], "depth": settings["depth"]}
    variants = {"none": {}, "dropout": {"mlp_args": {**mlp_args, "p": settings["p"]}},
                "weight_decay": {"weight_decay": settings["weight_decay"]}, "augmentation": {"augment": True},
                "combined": {"mlp_args": {**mlp_args, "p": settings["p"]}, "weight_decay": settings["weight_decay"],
                             "augment": True}}
    out = {}
    for name, args in variants.items():
        args = {"mlp_args": mlp_args, **args}
        result = train_mlp(data, seed, epochs=settings["epochs"], keep_best=name in ("none", "combined"), **args)
        out[name] = _summary(result.model, data, result.final())
        if name in ("none", "combined"):  # early stopping: the weights of the best validation loss
            result.model.load_state_dict(result.best_state)
            key = "early_stopping" if name == "none" else "combined"
            out[key] = _summary(result.model, data, result.best()) | {"best_epoch": result.best_epoch}
    return out


def measure(raw: dict, settings: dict) -> dict:
    effects = {"combined_vs_best_single": raw["combined"]["test_acc"] - max(raw[s]["test_acc"] for s in SINGLES)}
    for single in SINGLES:
        effects[f"{single}_gap_change"] = raw[single]["gap"] - raw["none"]["gap"]
        effects[f"{single}_ece_change"] = raw[single]["test_ece"] - raw["none"]["test_ece"]
    return effects


def plot(ax, raws: list[dict], settings: dict) -> None:
    names = ["none", *SINGLES, "combined"]
    for raw in raws:
        ax.scatter([raw[n]["gap"] for n in names], [raw[n]["test_ece"] for n in names],
                   c=[f"C{j}" for j in range(len(names))], s=25)
    for j, name in enumerate(names):
        ax.scatter([], [], color=f"C{j}", label=name.replace("_", " "))
    ax.set(title="each regularizer: gap and calibration", xlabel="train - val accuracy gap", ylabel="test ECE")
    ax.legend(fontsize=7)


_SINGLE_EFFECTS = tuple(Effect(f"{s}_{m}_change", f"{what}({s.replace('_', ' ')}) - {what}(none)", -1, primary=False)
                        for s in SINGLES for m, what in (("gap", "gap"), ("ece", "test ECE")))

CLAIM = Claim(
    number=13, key="regularizers", title="Dropout, weight decay, early stopping and augmentation are "
                                          "different regularizers",
    setup_text="MLP 40-256-256-10 on MNIST-1D, 60 epochs, Adam 1e-3: no regularizer; dropout p = 0.5; decoupled "
               "weight decay 0.5; shift-and-noise augmentation; early stopping (best validation loss of the "
               "unregularized run); and all four combined. Generalization gap and test ECE of each.",
    expected="all four combined beat the best single regularizer in test accuracy (> 0); each one alone "
             "shrinks the gap (< 0) and the calibration error (< 0)",
    source="Srivastava et al. 2014, JMLR 15, sec. 5.1 and table 9 (dropout combined with other regularizers); "
           "Guo, Pleiss, Sun, Weinberger 2017, ICML (regularization and calibration)",
    effects=(Effect("combined_vs_best_single", "test acc(all four) - max test acc(single)", +1), *_SINGLE_EFFECTS),
    seeds=3, setup=setup, run=run, measure=measure, plot=plot)
