"""Small networks for the claims: an MLP whose dropout sites are droplab modules of a chosen kind."""

from __future__ import annotations

from torch import nn

__all__ = ["mlp", "dropout_layer"]

KINDS = ("bernoulli", "gaussian", "dropconnect")


def dropout_layer(kind: str, p: float) -> nn.Module:
    """A droplab dropout module: ``bernoulli`` (:class:`droplab.nn.Dropout`) or ``gaussian``
    (:class:`droplab.nn.GaussianDropout`, noise variance :math:`p/(1-p)`)."""
    from .. import nn as dnn

    if kind == "bernoulli":
        return dnn.Dropout(p)
    if kind == "gaussian":
        return dnn.GaussianDropout(p)
    raise ValueError(f"dropout kind must be 'bernoulli' or 'gaussian', but got {kind!r}")


def mlp(n_in: int, n_out: int, width: int = 256, depth: int = 2, p: float = 0.0, *, kind: str = "bernoulli",
        input_p: float = 0.0, batchnorm: str | None = None) -> nn.Sequential:
    """``depth`` hidden layers of ``width`` ReLU units, dropout ``p`` after each (or DropConnect on the weights).

    Args:
        n_in, n_out: input features and outputs.
        width: hidden units per layer. Default: 256.
        depth: hidden layers. Default: 2.
        p: drop rate of every hidden site (a site exists even at 0, so a schedule can raise it). Default: 0.
        kind: ``"bernoulli"``, ``"gaussian"`` or ``"dropconnect"`` (drops the weights of every hidden
            Linear after the first instead of the units). Default: ``"bernoulli"``.
        input_p: dropout on the input features (0: no input site). Default: 0.
        batchnorm: ``None``; ``"after_dropout"`` puts BatchNorm right after each hidden dropout (the
            variance-shift pitfall); ``"before_dropout"`` puts it before the ReLU, dropout last. Default: None.

    Example::

        >>> [type(m).__name__ for m in mlp(40, 10, width=8, depth=1, p=0.5)]
        ['Linear', 'ReLU', 'Dropout', 'Linear']
    """
    from .. import nn as dnn

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, but got {kind!r}")
    if batchnorm not in (None, "after_dropout", "before_dropout"):
        raise ValueError(f"batchnorm must be None, 'after_dropout' or 'before_dropout', but got {batchnorm!r}")
    layers: list[nn.Module] = [dnn.Dropout(input_p)] if input_p > 0 else []
    fan_in = n_in
    for i in range(depth):
        linear = nn.Linear(fan_in, width)
        layers.append(dnn.DropConnect(linear, p) if kind == "dropconnect" and i > 0 else linear)
        if batchnorm == "before_dropout":
            layers.append(nn.BatchNorm1d(width))
        layers.append(nn.ReLU())
        if kind != "dropconnect":
            layers.append(dropout_layer(kind, p))
        if batchnorm == "after_dropout":
            layers.append(nn.BatchNorm1d(width))
        fan_in = width
    head = nn.Linear(fan_in, n_out)
    layers.append(dnn.DropConnect(head, p) if kind == "dropconnect" else head)
    return nn.Sequential(*layers)
