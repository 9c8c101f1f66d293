"""Claim 8: a max-norm constraint improves a dropout network trained with large steps."""

from __future__ import annotations

from ..claim import Arm, Claim, Effect, Part
from .common import ACCURACY_REASON, accuracy_sesoi, mlp_arm, summary

P, MOMENTUM = 0.5, 0.95
LRS = (0.03, 0.1, 0.01)  #: both arms' learning rates (SGD); the paper's point is that max-norm allows larger ones


def settings(tier: str) -> dict:
    return {"tier": tier, "p": P, "momentum": MOMENTUM}


def _row_norms(model):
    import torch

    norms = [m.weight.detach().norm(dim=1) for m in model.modules() if isinstance(m, torch.nn.Linear)][:-1]
    return torch.cat(norms)  # every hidden unit's incoming weight vector (the output layer left out)


def run(settings: dict, arm: str, seed: int, hp: dict) -> dict:
    bound = hp.get("c")
    trained = mlp_arm(seed, settings["tier"], lr=hp["lr"], p=settings["p"], optimizer="sgd",
                      momentum=settings["momentum"], max_norm=bound)
    norms = _row_norms(trained.model)
    out = summary(trained)
    out["max_row_norm"] = float(norms.max())
    out["binding"] = float((norms >= 0.99 * bound).float().mean()) if bound else 0.0
    return out


def measure(raws: dict, settings: dict) -> dict:
    return {"max_norm_gain": raws["max-norm"]["test_acc"] - raws["plain"]["test_acc"],
            "gap_change": raws["max-norm"]["gap"] - raws["plain"]["gap"]}


def checks(raws: list[dict], settings: dict) -> dict:
    binding = sum(raw["max-norm"]["binding"] for raw in raws) / len(raws)
    return {"the constraint binds": (binding >= 0.1, f"{binding:.0%} of hidden units at the bound at the best "
                                                     "checkpoint (needs >= 10%)")}


def plot(ax, raws: list[dict], settings: dict) -> None:
    ax.scatter([raw["plain"]["max_row_norm"] for raw in raws], [raw["plain"]["test_acc"] for raw in raws],
               color="C0", label="no constraint: largest unit norm")
    ax.scatter([raw["max-norm"]["max_row_norm"] for raw in raws], [raw["max-norm"]["test_acc"] for raw in raws],
               color="C1", label="max-norm: largest unit norm")
    ax.set(title="per seed", xlabel="largest incoming-weight norm of a hidden unit", ylabel="test acc")
    ax.legend(fontsize=7)


CLAIM = Claim(
    number=8, key="max-norm", title="Max-norm constraints improve dropout networks trained with large steps",
    source="Srivastava et al. 2014, JMLR 15, sec. 5.1 and table 9",
    statement="Constraining each hidden unit's incoming weight vector to norm at most c ('max-norm "
              "regularization') is 'especially useful' with dropout: it allows 'a huge learning rate' with high "
              "momentum without the weights blowing up, and dropout + max-norm gives the lowest error of the "
              "regularizers compared in table 9.",
    regime="SGD with momentum 0.95 and large steps, where unconstrained weights grow; the bound must actually bind "
           "(checked: at least 10% of hidden units at the bound, else the comparison cannot test the claim).",
    mechanism="The largest incoming-weight norm of a hidden unit without the constraint, and the share of units "
              "held at the bound with it.",
    setup_text="MLP 40-256-256-10 with dropout p = 0.5 on the seed's MNIST-1D draw, SGD with momentum 0.95; no "
               "constraint vs every hidden unit projected onto ||w|| <= c after each step (the lab's max_norm); each "
               "arm tuned over learning rates {0.01, 0.03, 0.1}, the constrained one also over c in {1.5, 3}; "
               "best-validation checkpoint, patience 15.",
    parts=(Part("a", "dropout + max-norm reaches higher test accuracy than dropout alone"),),
    arms=(Arm("plain", tuple({"lr": lr} for lr in LRS)),
          Arm("max-norm", tuple({"lr": lr, "c": c} for c in (3.0, 1.5) for lr in LRS))),
    effects=(Effect("max_norm_gain", "test acc(max-norm) - test acc(no constraint)", +1, accuracy_sesoi,
                    ACCURACY_REASON),
             Effect("gap_change", "gap(max-norm) - gap(no constraint) (mechanism)", -1, 0.02,
                    "2 points: a difference of two accuracies", primary=False)),
    settings=settings, run=run, measure=measure, checks=checks, plot=plot, baselines=("mnist1d-mlp",))
