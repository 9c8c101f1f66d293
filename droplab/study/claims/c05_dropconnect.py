"""Claim 5: DropConnect in Wan et al.'s form regularizes, and at least matches dropout on the same layer."""

from __future__ import annotations

from ..claim import Arm, Claim, Effect, Part
from .common import ACCURACY_REASON, LR_CANDIDATES, accuracy_sesoi, mlp_arm, mnist1d_splits, summary

WIDTH, P = 96, 0.5
VARIANTS = {"none": ("dropout", 0.0), "dropout": ("dropout", P), "dropconnect": ("dropconnect", P)}


def settings(tier: str) -> dict:
    return {"tier": tier, "width": WIDTH, "p": P}


def _mean_inference_acc(model, seed: int) -> float:
    """Test accuracy of a DropConnect model with Wan et al.'s sampling replaced by the mean network."""
    import torch

    from ...nn import DropConnect

    layers = [m for m in model.modules() if isinstance(m, DropConnect)]
    for layer in layers:
        layer.inference = "mean"
    test = mnist1d_splits(seed).test
    with torch.no_grad():
        acc = float((model.eval()(test.x).argmax(-1) == test.y).float().mean())
    for layer in layers:
        layer.inference = "gaussian"
    return acc


def run(settings: dict, arm: str, seed: int, hp: dict) -> dict:
    variant, p = VARIANTS[arm]
    trained = mlp_arm(seed, settings["tier"], lr=hp["lr"], width=settings["width"], variant=variant,
                      layer_rates=[0.0, p])
    out = summary(trained)
    if arm == "dropconnect":
        out["test_acc_mean_inference"] = _mean_inference_acc(trained.model, seed)
    return out


def measure(raws: dict, settings: dict) -> dict:
    dc = raws["dropconnect"]
    return {"dropconnect_vs_none": dc["test_acc"] - raws["none"]["test_acc"],
            "dropconnect_vs_dropout": dc["test_acc"] - raws["dropout"]["test_acc"],
            "sampling_vs_mean_inference": dc["test_acc"] - dc["test_acc_mean_inference"],
            "dropout_vs_none": raws["dropout"]["test_acc"] - raws["none"]["test_acc"]}


def checks(raws: list[dict], settings: dict) -> dict:
    gap = sum(raw["none"]["gap"] for raw in raws) / len(raws)
    return {"the network without dropout overfits": (gap >= 0.05, f"mean train-validation gap {gap:.3f} "
                                                                  "(needs >= 0.05)")}


def plot(ax, raws: list[dict], settings: dict) -> None:
    arms = list(VARIANTS)
    for raw in raws:
        ax.plot(range(3), [raw[a]["test_acc"] for a in arms], "o-", color="gray", alpha=0.4, linewidth=0.8)
    ax.plot([2.25] * len(raws), [raw["dropconnect"]["test_acc_mean_inference"] for raw in raws], "x", color="C3",
            label="DropConnect, mean inference")
    ax.set_xticks(range(3), arms)
    ax.set(title="test accuracy per seed", ylabel="test acc")
    ax.legend(fontsize=7)


CLAIM = Claim(
    number=5, key="dropconnect", title="DropConnect regularizes and matches or beats dropout",
    source="Wan, Zeiler, Zhang, LeCun, Fergus 2013, ICML, 'Regularization of Neural Networks using DropConnect', "
           "sec. 3 (training with per-example masks, inference by moment matching) and sec. 6 (experiments)",
    statement="DropConnect sets a random subset of a layer's weights to zero, drawn independently for each "
              "example, and at inference averages the activation over Gaussian samples of each unit moment-"
              "matched to the random mask. It regularizes (lower test error than the same network without it) and "
              "performs at least as well as dropout on the same layer, usually slightly better (their MNIST, "
              "CIFAR-10 and SVHN results).",
    regime="Wan et al.'s setting transposed to MNIST-1D: a feature layer, then the regularized layer, then the "
           "softmax layer, wide enough to overfit without regularization (checked: gap >= 5 points).",
    mechanism="The inference rule: the DropConnect network's test accuracy with Wan et al.'s Gaussian sampling "
              "against the same weights' mean network.",
    setup_text="MLP 40-96-96-10 on the seed's MNIST-1D draw; only the second hidden layer is regularized: no "
               "regularization, dropout p = 0.5 on its outputs (weight scaling at inference), or DropConnect p = 0.5 "
               "on its weights and bias (droplab.nn.DropConnect with per_example=True, the ReLU inside, "
               "inference='gaussian' with 50 samples per unit). Learning rate tuned per arm in {0.003, 0.001}, "
               "AdamW, batch 100, best-validation checkpoint, patience 15.",
    parts=(Part("a", "DropConnect reaches higher test accuracy than the unregularized network"),
           Part("b", "DropConnect reaches higher test accuracy than dropout on the same layer")),
    arms=tuple(Arm(name, LR_CANDIDATES) for name in VARIANTS),
    effects=(Effect("dropconnect_vs_none", "test acc(DropConnect) - test acc(none)", +1, accuracy_sesoi,
                    ACCURACY_REASON, part="a"),
             Effect("dropconnect_vs_dropout", "test acc(DropConnect) - test acc(dropout)", +1, accuracy_sesoi,
                    ACCURACY_REASON, part="b"),
             Effect("sampling_vs_mean_inference", "DropConnect: acc(Gaussian sampling) - acc(mean network)", +1,
                    accuracy_sesoi, ACCURACY_REASON, primary=False, part="b"),
             Effect("dropout_vs_none", "test acc(dropout) - test acc(none)", +1, accuracy_sesoi, ACCURACY_REASON,
                    primary=False, part="a")),
    settings=settings, run=run, measure=measure, checks=checks, plot=plot, baselines=("mnist1d-mlp",))
