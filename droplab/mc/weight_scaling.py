r"""Weight scaling against the ensemble it approximates.

At inference dropout is switched off and activations are scaled (by :math:`q`, or not at all with
inverted scaling): one deterministic pass that stands for the geometric-mean-like average of the
exponentially many thinned sub-networks. MC averaging over :math:`k` sampled masks estimates the
arithmetic ensemble mean directly. Srivastava et al. (JMLR 2014, fig. 11) found the two agree in
test error at about :math:`k = 50`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from .._modes import training_flags_restored
from .metrics import nll
from .prediction import predict

__all__ = ["compare_to_weight_scaling"]


def _as_probs(outputs: torch.Tensor, output: str) -> torch.Tensor:
    return outputs.softmax(-1) if output == "logits" else outputs


def compare_to_weight_scaling(model: nn.Module, loader: Iterable, samples: Sequence[int] = (1, 2, 5, 10, 20, 50, 100),
                              *, seed: int = 0, output: str = "logits", max_batch: int = 1024) -> list[dict]:
    r"""Accuracy and NLL of MC averaging over ``k`` samples versus the single weight-scaled pass.

    MC probabilities for ``k`` samples are :math:`\frac1k\sum_{t<k} \mathrm{softmax}(f(x; m_t))`, the
    first ``k`` of one draw of ``max(samples)`` samples (so the rows are nested, as in the paper's
    figure); the weight-scaled row is the eval-mode pass.

    Args:
        model: a classifier returning logits (or probabilities, see ``output``) of shape ``(N, C)``.
        loader: iterable of ``(inputs, targets)`` batches, e.g. a ``DataLoader``.
        samples: the ``k`` to report. Default: ``(1, 2, 5, 10, 20, 50, 100)``.
        seed: MC seed; batch ``b`` uses ``seed + b``. Default: 0.
        output: ``"logits"`` or ``"probs"``. Default: ``"logits"``.
        max_batch: passed to :func:`~droplab.mc.predict`. Default: 1024.

    Returns:
        A list of rows ``{"method": "weight_scaling" | "mc", "samples": k (None for weight
        scaling), "accuracy": float, "nll": float}``, weight scaling first.

    Example::

        >>> model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), dl.nn.Dropout(0.5), nn.Linear(16, 3))
        >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
        >>> rows = compare_to_weight_scaling(model, [(x, y)], samples=[1, 10])
        >>> [r["method"] for r in rows]
        ['weight_scaling', 'mc', 'mc']
    """
    if output not in ("logits", "probs"):
        raise ValueError(f"output must be one of ('logits', 'probs'), but got {output!r}")
    ks = sorted({int(k) for k in samples})
    if not ks or ks[0] < 1:
        raise ValueError(f"samples must be positive ints, but got {list(samples)}")
    total, ws_correct, ws_nll = 0, 0.0, 0.0
    mc_correct = dict.fromkeys(ks, 0.0)
    mc_nll = dict.fromkeys(ks, 0.0)
    with training_flags_restored(model.modules()):
        for b, (x, y) in enumerate(loader):
            n = y.shape[0]
            total += n
            model.eval()
            with torch.no_grad():
                ws = _as_probs(model(x), output).double()
            ws_correct += (ws.argmax(-1) == y).sum().item()
            ws_nll += nll(ws, y).item() * n
            mc = _as_probs(predict(model, x, ks[-1], seed=seed + b, max_batch=max_batch).samples, output).double()
            running = mc.cumsum(0)
            for k in ks:
                avg = running[k - 1] / k
                mc_correct[k] += (avg.argmax(-1) == y).sum().item()
                mc_nll[k] += nll(avg, y).item() * n
    if total == 0:
        raise ValueError("loader yielded no batches")
    rows = [{"method": "weight_scaling", "samples": None, "accuracy": ws_correct / total, "nll": ws_nll / total}]
    rows += [{"method": "mc", "samples": k, "accuracy": mc_correct[k] / total, "nll": mc_nll[k] / total} for k in ks]
    return rows
