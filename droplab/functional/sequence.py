r"""Dropout for sequences: locked (variational) masks, embedding (word) dropout and variational RNNs.

A mask re-sampled at every time step destroys the temporal correlations a recurrent net learns; the
variational view of Gal & Ghahramani (2016) instead draws **one mask per sequence** and shares it over
time. Here that is a noise shape with a 1 on the time axis: ``(1, N, F)`` time-first or ``(N, 1, F)``
batch-first.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..kernels import variant_ops
from ..kernels.bounds import check_index_dtype
from ..rng import drop_threshold
from .inference import inference_rule
from .standard import (
    InputDtypeError,
    _check_counter_int,
    _check_input,
    _step_tensor,
    check_probability,
    check_scaling,
    dropout,
    seed_tensor,
)

__all__ = ["locked_dropout", "variational_mask", "embedding_dropout", "lstm_recurrence", "gru_recurrence"]


def locked_dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False, *,
                   batch_first: bool = False, seed: int | torch.Tensor | None = None,
                   step: int | torch.Tensor = 0, replica: int = 0, stream: int = 0,
                   scaling: str = "inverted") -> torch.Tensor:
    r"""Variational dropout: one mask per sequence (per example and feature), shared over all time steps.

    Training, inverted scaling: :math:`y_{t,n,f} = x_{t,n,f}\, m_{n,f} / q`; classic: :math:`x\,m`.
    Inference: :math:`y = x` (inverted) or :math:`y = q\,x` (classic).

    Args:
        input: floating-point sequence, time-first :math:`(T, N, *)` or batch-first :math:`(N, T, *)`.
        p: drop probability. Default: 0.5.
        training: apply the mask if ``True``, the inference rule otherwise. Default: True.
        inplace: write the result into ``input``. Default: False.
        batch_first: ``input`` is :math:`(N, T, *)` rather than :math:`(T, N, *)`. Default: False.
        seed, step, replica, stream, scaling: as in :func:`droplab.functional.dropout`.

    Shape:
        Input :math:`(T, N, *)` (or :math:`(N, T, *)`), at least 2-D; output the same.

    Example::

        >>> y = locked_dropout(torch.ones(5, 2, 3), p=0.5, seed=0)
        >>> bool((y == y[0]).all())              # the same mask at every time step
        True

    Reference: Gal & Ghahramani, "A Theoretically Grounded Application of Dropout in Recurrent Neural
    Networks", NeurIPS 2016; Merity, Keskar, Socher, "Regularizing and Optimizing LSTM Language
    Models", ICLR 2018.
    """
    _check_input(input, "locked_dropout")
    if input.dim() < 2:
        raise ValueError("locked_dropout expects a sequence (T, N, *) or, with batch_first=True, (N, T, *), "
                         f"but got input of shape {tuple(input.shape)}")
    time_axis = 1 if batch_first else 0
    noise_shape = tuple(1 if axis == time_axis else None for axis in range(input.dim()))
    return dropout(input, p, training, inplace, seed=seed, step=step, replica=replica, stream=stream,
                   noise_shape=noise_shape, scaling=scaling)


def variational_mask(shape: tuple[int, ...], p: float, *, seed: int | torch.Tensor | None = None,
                     step: int | torch.Tensor = 0, replica: int = 0, stream: int = 0,
                     dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    r"""An inverted-dropout mask tensor of ``shape``: :math:`m / q` with :math:`m \sim \text{Bernoulli}(q)`.

    The values are exactly those :func:`droplab.functional.dropout` multiplies by for the same counter
    (mask index = row-major position in ``shape``); used where one mask is applied many times, such as
    a recurrent net's hidden state at every step.
    """
    p = check_probability(p)
    ones = torch.ones(tuple(shape), dtype=dtype, device=device)
    return dropout(ones, p, True, seed=seed, step=step, replica=replica, stream=stream)


def embedding_dropout(input: torch.Tensor, weight: torch.Tensor, p: float = 0.1, training: bool = True, *,
                      padding_idx: int | None = None, max_norm: float | None = None, norm_type: float = 2.0,
                      scale_grad_by_freq: bool = False, sparse: bool = False,
                      seed: int | torch.Tensor | None = None, step: int | torch.Tensor = 0, replica: int = 0,
                      stream: int = 0, scaling: str = "inverted") -> torch.Tensor:
    r"""Embedding lookup with whole rows of the embedding matrix dropped: word-level dropout.

    Training, inverted scaling: row :math:`v` of ``weight`` is used as :math:`W_v m_v / q` with one
    :math:`m_v \sim \text{Bernoulli}(q)` per vocabulary entry, so every occurrence of a dropped word in
    the batch reads zeros. It equals ``F.embedding(input, dropout(weight, noise_shape=(None, 1)))`` bit
    for bit, but only the looked-up rows are multiplied.

    Args:
        input: integer indices of any shape.
        weight: floating-point embedding matrix :math:`(V, D)`.
        p: probability of dropping a word (row). Default: 0.1.
        training: apply the mask if ``True``, the inference rule otherwise. Default: True.
        padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse: as in ``torch.nn.functional.embedding``.
        seed, step, replica, stream, scaling: as in :func:`droplab.functional.dropout`.

    Shape:
        Input :math:`(*)` int64 or int32 indices in :math:`[0, V)`; output :math:`(*, D)`. An index outside
        that range (negative ones included: they are not wrapped) raises ``IndexError: index out of range
        in self``, as ``torch.nn.functional.embedding`` does, before any kernel reads the table.

    Example::

        >>> w = torch.ones(10, 4)
        >>> y = embedding_dropout(torch.tensor([[1, 1, 2]]), w, p=0.5, seed=3)
        >>> torch.equal(y[0, 0], y[0, 1])        # a word is dropped everywhere or nowhere
        True

    Reference: Gal & Ghahramani, NeurIPS 2016 (section 4.2); Merity et al., ICLR 2018.
    """
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise TypeError("embedding_dropout expects a floating-point weight matrix, but got "
                        f"{getattr(weight, 'dtype', type(weight).__name__)}")
    if not isinstance(input, torch.Tensor) or input.is_floating_point() or input.is_complex():
        # a TypeError, and the RuntimeError F.embedding raises for such indices
        raise InputDtypeError("embedding_dropout expects integer indices as input, but got "
                        f"{getattr(input, 'dtype', type(input).__name__)}")
    if weight.dim() != 2:
        raise ValueError(f"embedding_dropout expects a (V, D) weight matrix, but got shape {tuple(weight.shape)}")
    p = check_probability(p)
    check_scaling(scaling)
    if not training or p == 0.0:
        out = F.embedding(input, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse)
        return inference_rule(out, p, scaling)
    check_index_dtype(input)  # what F.embedding raises; the kernels raise torch's IndexError for bad indices
    scale = 1.0 if scaling == "classic" else (1.0 / (1.0 - p) if p < 1.0 else 0.0)
    counters = (seed_tensor(seed), _step_tensor(step), _check_counter_int("replica", replica),
                _check_counter_int("stream", stream), drop_threshold(p), scale)
    if sparse or scale_grad_by_freq:  # torch's own lookup and gradient, then the row mask (one more pass)
        out = F.embedding(input, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse)
        return variant_ops.rows_masked_scale(out, input, *counters)
    if max_norm is not None:  # what F.embedding does before its lookup
        with torch.no_grad():
            torch.embedding_renorm_(weight, input, max_norm, norm_type)
    if padding_idx is None:
        padding_idx = -1
    elif padding_idx < 0:
        padding_idx += weight.shape[0]
    # one op: lookup and row mask in one pass; backward writes the kept rows' gradient, nothing saved but
    # the indices
    return variant_ops.embedding_dropout(weight, input, *counters, padding_idx)


class _LSTMRecurrence(torch.autograd.Function):
    """One LSTM layer's time loop with a hand-written backward (BPTT).

    Autograd through the step-by-step loop records a dozen nodes per step; here forward keeps the gate
    activations, backward runs a short sequential loop and every element-wise factor that does not
    depend on the incoming gradient is computed for all steps at once, as is ``dW_hh`` (one matmul).
    A recurrent mask given as a function is drawn in forward and drawn again in backward, never saved.
    """

    @staticmethod
    def forward(ctx, gates_x, h0, c0, weight_hh, recurrent_mask):
        ctx.make_mask = recurrent_mask if callable(recurrent_mask) else None
        mask = _mask_tensor(recurrent_mask, h0)
        steps, n, four_h = gates_x.shape
        hidden = four_h // 4
        g_rows = slice(2 * hidden, 3 * hidden)
        # tanh(x) = 2 sigmoid(2x) - 1: doubling the g rows lets one sigmoid_ serve all four gates
        # (torch's CPU tanh is several times slower than its sigmoid)
        gx = gates_x.clone()
        gx[..., g_rows] *= 2
        w2 = weight_hh.detach().clone()
        w2[g_rows] *= 2
        w_t = w2.t()
        acts = torch.empty_like(gates_x)  # sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)
        cells = gates_x.new_empty(steps + 1, n, hidden)
        tanh_c = gates_x.new_empty(steps, n, hidden)
        outs = gates_x.new_empty(steps + 1, n, hidden)  # outs[0] = h0, outs[t + 1] = h_t
        cells[0], outs[0] = c0, h0
        for t in range(steps):
            h = outs[t]
            hm = h if mask is None else h * mask
            a = torch.addmm(gx[t], hm, w_t, out=acts[t]).sigmoid_()
            a[:, g_rows].mul_(2).sub_(1)
            i, f, g, o = a.chunk(4, dim=1)
            c = torch.addcmul(f * cells[t], i, g, out=cells[t + 1])
            tc = torch.mul(c, 2, out=tanh_c[t]).sigmoid_().mul_(2).sub_(1)
            torch.mul(o, tc, out=outs[t + 1])
        ctx.save_for_backward(acts, cells, tanh_c, outs, weight_hh, None if ctx.make_mask else mask)
        return outs[1:], outs[steps], cells[steps]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, grad_h, grad_c):
        acts, cells, tanh_c, outs, weight_hh, mask = ctx.saved_tensors
        if ctx.make_mask is not None:  # regenerated from its counters
            mask = _mask_tensor(ctx.make_mask, outs[0])
        steps, n, four_h = acts.shape
        hidden = four_h // 4
        i, f, g, o = acts.chunk(4, dim=2)
        # factors of the gradient that only need forward values, for all steps at once
        dc_from_h = o * (1 - tanh_c * tanh_c)                       # dL/dc_t = dL/dh_t * this
        d_o = tanh_c * o * (1 - o)                                  # pre-activation o
        d_ifg = torch.stack((g * i * (1 - i), cells[:-1] * f * (1 - f), i * (1 - g * g)), dim=2)  # (T,N,3,H)
        grad_out = torch.zeros_like(outs[1:]) if grad_out is None else grad_out
        dh = torch.zeros_like(outs[0]) if grad_h is None else grad_h.clone()
        dc = torch.zeros_like(cells[0]) if grad_c is None else grad_c.clone()
        d_gates = torch.empty_like(acts)
        dg4 = d_gates.view(steps, n, 4, hidden)
        for t in range(steps - 1, -1, -1):
            dh = dh + grad_out[t]
            dc = torch.addcmul(dc, dh, dc_from_h[t])
            torch.mul(dc.unsqueeze(1), d_ifg[t], out=dg4[t, :, :3])
            torch.mul(dh, d_o[t], out=dg4[t, :, 3])
            dh = d_gates[t] @ weight_hh
            if mask is not None:
                dh = dh * mask
            dc = dc * f[t]
        hm = outs[:-1] if mask is None else outs[:-1] * mask
        grad_w = d_gates.reshape(-1, four_h).t() @ hm.reshape(-1, hidden)
        return d_gates, dh, dc, grad_w, None


def _mask_tensor(recurrent_mask, like: torch.Tensor) -> torch.Tensor | None:
    """The mask as a tensor: given, or drawn by applying the mask function to ones."""
    if callable(recurrent_mask):
        with torch.no_grad():
            return recurrent_mask(torch.ones_like(like))
    return recurrent_mask


RecurrentMask = torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None


def lstm_recurrence(gates_x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, weight_hh: torch.Tensor,
                    recurrent_mask: RecurrentMask = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Run one LSTM layer over time given its precomputed input projections.

    ``gates_x[t] = x_t W_{ih}^\top + b_{ih} + b_{hh}`` for all steps at once :math:`(T, N, 4H)` (gate
    order i, f, g, o as in ``torch.nn.LSTM``); each step adds :math:`(h_{t-1} \odot m) W_{hh}^\top`
    with the per-sequence recurrent mask :math:`m` :math:`(N, H)` (``None``: no recurrent dropout), given
    as a tensor or as a function applying it (``h -> dropout(h, ..., seed=s, step=t)``), which backward
    calls again instead of saving the mask. Returns ``(outputs (T, N, H), h_T, c_T)``. Backward is
    hand-written (first order only).
    """
    return _LSTMRecurrence.apply(gates_x, h, c, weight_hh, recurrent_mask)


def gru_recurrence(gates_x: torch.Tensor, h: torch.Tensor, weight_hh: torch.Tensor, bias_hh: torch.Tensor | None,
                   recurrent_mask: RecurrentMask = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Run one GRU layer over time given ``gates_x[t] = x_t W_{ih}^\top + b_{ih}`` :math:`(T, N, 3H)`.

    Gate order r, z, n as in ``torch.nn.GRU``: :math:`n = \tanh(x W_{in} + b_{in} + r (\tilde h W_{hn} +
    b_{hn}))`, :math:`h' = (1 - z) n + z h`, with :math:`\tilde h = h \odot m` the recurrently dropped
    state fed to the hidden projections. ``recurrent_mask`` as :func:`lstm_recurrence`: a function is
    applied to the state at every step (the same counters give the same mask), so autograd saves no mask.
    Returns ``(outputs (T, N, H), h_T)``.
    """
    w_t = weight_hh.t()
    outputs = []
    for t in range(gates_x.shape[0]):
        if recurrent_mask is None:
            hm = h
        else:
            hm = recurrent_mask(h) if callable(recurrent_mask) else h * recurrent_mask
        gh = hm @ w_t if bias_hh is None else torch.addmm(bias_hh, hm, w_t)
        xr, xz, xn = gates_x[t].chunk(3, dim=1)
        hr, hz, hn = gh.chunk(3, dim=1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        h = n + z * (h - n)
        outputs.append(h)
    return torch.stack(outputs), h
