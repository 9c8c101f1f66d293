r"""Claim 14: input dropout on a linear model acts like a data-dependent L2 penalty.

For a linear model :math:`\hat y = w^\top \tilde x` with inverted input dropout, :math:`\tilde x_j = x_j m_j / q`,
:math:`m_j \sim \mathrm{Bernoulli}(q)`, the expected squared error over masks is

.. math:: \mathbb{E}_m (y - w^\top \tilde x)^2 = (y - w^\top x)^2 + \frac{p}{q} \sum_j w_j^2 x_j^2,

so averaged over the data the training objective is least squares plus the penalty
:math:`\frac{p}{q} \sum_j w_j^2 \overline{x_j^2}`: a ridge whose strength per feature is that feature's
second moment. Its minimizer is :math:`w^* = (X^\top X + \frac{p}{q}\mathrm{diag}(X^\top X))^{-1} X^\top y`.
"""

from __future__ import annotations

import numpy as np
import torch

from ..claim import Arm, Claim, Effect, Part

__all__ = ["dropout_penalty", "dropout_ridge", "CLAIM"]


def dropout_penalty(x: torch.Tensor, w: torch.Tensor, p: float) -> torch.Tensor:
    r"""The expected extra squared error of input dropout, :math:`\frac{p}{1-p} \frac1N \sum_{i,j} w_j^2 x_{ij}^2`.

    Args:
        x: inputs ``(N, D)``.
        w: weights ``(D,)``.
        p: the input drop rate, ``0 <= p < 1``.

    Example::

        >>> float(dropout_penalty(torch.tensor([[1.0, 2.0]]), torch.tensor([3.0, 1.0]), 0.5))  # 9 + 4
        13.0
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p must be in [0, 1), but got {p!r}")
    return p / (1.0 - p) * (x.pow(2) * w.pow(2)).sum(1).mean()


def dropout_ridge(x: torch.Tensor, y: torch.Tensor, p: float) -> torch.Tensor:
    r""":math:`w^* = (X^\top X + \frac{p}{1-p}\mathrm{diag}(X^\top X))^{-1} X^\top y`, the minimizer of the
    expected input-dropout loss (no intercept), in float64."""
    x, y = x.double(), y.double()
    gram = x.T @ x
    return torch.linalg.solve(gram + p / (1.0 - p) * torch.diag(torch.diag(gram)), x.T @ y)


EPOCHS = {"quick": 60, "default": 300, "confirm": 300}


def settings(tier: str) -> dict:
    return {"tier": tier, "n": 500, "features": 8, "scales": np.geomspace(0.25, 4.0, 8).tolist(), "noise": 0.5,
            "p": 0.5, "lr": 2e-3, "batch_size": 50, "epochs": EPOCHS[tier]}


def _data(settings: dict, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(settings["n"], settings["features"], generator=g) * torch.tensor(settings["scales"])
    w_true = torch.randn(settings["features"], generator=g)
    return x, x @ w_true + settings["noise"] * torch.randn(settings["n"], generator=g)


def _splits(x: torch.Tensor, y: torch.Tensor):
    from ...lab.data import Split, Splits

    whole = Split(x, y.reshape(-1, 1))
    return Splits(whole, whole, whole, x.shape[1], 1, name="synthetic", task="regression")


def run(settings: dict, arm: str, seed: int, hp: dict) -> dict:
    from ...lab import models
    from ..training import fit

    x, y = _data(settings, seed)
    p = settings["p"]
    trained = fit(lambda shape, n: models.linear(shape, n, bias=False, input_dropout=p, seed=seed), _splits(x, y),
                  seed=seed, epochs=settings["epochs"], optimizer="sgd", momentum=0.9, lr=settings["lr"],
                  batch_size=settings["batch_size"], average_from=settings["epochs"] // 2 + 1)
    learned = trained.model[-1].weight.detach().double().reshape(-1)
    gram = x.double().T @ x.double()
    uniform = p / (1 - p) * torch.diag(gram).mean()  # a plain ridge with the same total strength
    solutions = {"ols": torch.linalg.solve(gram, x.double().T @ y.double()), "dropout_ridge": dropout_ridge(x, y, p),
                 "uniform_ridge": torch.linalg.solve(gram + uniform * torch.eye(len(gram)), x.double().T @ y.double())}
    distance = {name: float((learned - w).norm() / w.norm()) for name, w in solutions.items()}
    return {"val_score": 0.0, "relative_distance": distance, "learned": learned.tolist(),
            "solutions": {name: w.tolist() for name, w in solutions.items()}, **trained.summary(),
            "best_epoch": trained.epochs_run, "censored": False}


def measure(raws: dict, settings: dict) -> dict:
    d = raws["linear"]["relative_distance"]
    return {"closer_than_ols": d["ols"] - d["dropout_ridge"], "closer_than_uniform": d["uniform_ridge"] -
            d["dropout_ridge"]}


def plot(ax, raws: list[dict], settings: dict) -> None:
    raw = raws[0]["linear"]
    features = range(settings["features"])
    for name, marker in (("ols", "x"), ("uniform_ridge", "s"), ("dropout_ridge", "o")):
        ax.plot(features, raw["solutions"][name], marker, label=name.replace("_", " "), alpha=0.8)
    ax.plot(features, raw["learned"], "k.", markersize=10, label="trained with input dropout")
    ax.set(title="weights, first seed (features by growing scale)", xlabel="feature", ylabel="weight")
    ax.legend(fontsize=7)


CLAIM = Claim(
    number=14, key="input-l2", title="Input dropout on a linear model is a data-dependent L2 penalty",
    source="Wager, Wang, Liang 2013, NeurIPS, 'Dropout Training as Adaptive Regularization', sec. 2; Srivastava et "
           "al. 2014, JMLR 15, sec. 9.1",
    statement="For a generalized linear model, dropout on the inputs is, in expectation over the masks, the "
              "unregularized loss plus a penalty; for least squares it is exactly ridge regression whose strength "
              "for feature j is proportional to that feature's second moment (a data-dependent, 'adaptive' L2 "
              "penalty), not a uniform one.",
    regime="Least squares, where the equivalence is exact in expectation: synthetic data with feature scales "
           "spread over a factor 16 (0.25 to 4), so the adaptive and the uniform penalty differ visibly.",
    mechanism="The closed-form minimizer of the expected dropout loss, w* = (X'X + p/(1-p) diag(X'X))^-1 X'y, "
              "against the weights SGD actually learns with masks.",
    setup_text="500 examples, 8 features with scales 0.25..4 (geometric), y = x.w + N(0, 0.5^2); a bias-free "
               "Linear behind droplab input dropout p = 0.5 (the lab's linear model), trained by the lab's trainer "
               "with SGD (momentum 0.9, lr 0.002, batch 50, 300 epochs) and the weights averaged over the second half "
               "(WeightAverage); compared with w*, least squares, and a uniform ridge of the same total strength.",
    parts=(Part("a", "the weights trained with input dropout are the adaptive ridge's, not least squares'"),
           Part("b", "the weights trained with input dropout are the adaptive ridge's, not a uniform ridge's")),
    arms=(Arm("linear"),),
    effects=(Effect("closer_than_ols", "rel. distance to OLS - rel. distance to w*", +1, 0.05,
                    "5% of the weights' norm: below it the two solutions are too close to tell apart", part="a"),
             Effect("closer_than_uniform", "rel. distance to uniform ridge - rel. distance to w*", +1, 0.05,
                    "5% of the weights' norm", part="b")),
    settings=settings, run=run, measure=measure, plot=plot)
