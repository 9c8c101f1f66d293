"""``VariationalLSTM`` / ``VariationalGRU``: recurrent nets with per-sequence (variational) dropout masks."""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import functional as F
from .._fx import fx_leaf_forward
from .locked import LockedDropout

__all__ = ["VariationalLSTM", "VariationalGRU"]


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, but got {value!r}")
    return value


class _VariationalRNN(nn.Module):
    _mode = "LSTM"
    _gates = 4

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, input_dropout: float = 0.0, recurrent_dropout: float = 0.0,
                 output_dropout: float = 0.0, *, seed: int | None = None, share_across_ranks: bool = False,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        # everything is validated before any state is created
        _positive_int("input_size", input_size)
        _positive_int("hidden_size", hidden_size)
        _positive_int("num_layers", num_layers)
        rates = [F.check_probability(r) for r in (input_dropout, recurrent_dropout, output_dropout)]
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int or None, but got {type(seed).__name__}")
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first = bool(bias), bool(batch_first)
        factory = {"device": device, "dtype": dtype}
        for k in range(num_layers):
            in_k = input_size if k == 0 else hidden_size
            # torch.nn.LSTM/GRU's names and shapes, so their state_dicts load directly
            setattr(self, f"weight_ih_l{k}", nn.Parameter(torch.empty(self._gates * hidden_size, in_k, **factory)))
            setattr(self, f"weight_hh_l{k}",
                    nn.Parameter(torch.empty(self._gates * hidden_size, hidden_size, **factory)))
            if self.bias:
                setattr(self, f"bias_ih_l{k}", nn.Parameter(torch.empty(self._gates * hidden_size, **factory)))
                setattr(self, f"bias_hh_l{k}", nn.Parameter(torch.empty(self._gates * hidden_size, **factory)))
        # time-first inside: the masks are (1, N, F), shared over time; distinct seeds keep them independent
        # (unseeded sites draw a fresh key each forward, as torch.nn's dropout does)
        site_seeds = [None if seed is None else seed + k for k in range(3)]
        self.input_drop = LockedDropout(rates[0], seed=site_seeds[0], share_across_ranks=share_across_ranks)
        self.recurrent_drop = LockedDropout(rates[1], seed=site_seeds[1], share_across_ranks=share_across_ranks)
        self.output_drop = LockedDropout(rates[2], seed=site_seeds[2], share_across_ranks=share_across_ranks)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch.nn.LSTM/GRU's initialization: every weight and bias uniform in :math:`\\pm 1/\\sqrt{H}`."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    @classmethod
    def from_torch(cls, rnn: nn.RNNBase, **kwargs) -> _VariationalRNN:
        """A copy of a unidirectional ``torch.nn.LSTM``/``GRU`` (same weights), with dropout ``kwargs``."""
        if rnn.mode != cls._mode or rnn.bidirectional or rnn.proj_size:
            raise ValueError(f"{cls.__name__}.from_torch needs a unidirectional torch.nn.{cls._mode} without "
                             f"projections, but got {rnn}")
        param = next(rnn.parameters())
        new = cls(rnn.input_size, rnn.hidden_size, rnn.num_layers, rnn.bias, rnn.batch_first,
                  device=param.device, dtype=param.dtype, **kwargs)
        new.load_state_dict(rnn.state_dict(), strict=False)
        return new

    @property
    def input_dropout(self) -> float:
        return self.input_drop.p

    @property
    def recurrent_dropout(self) -> float:
        return self.recurrent_drop.p

    @property
    def output_dropout(self) -> float:
        return self.output_drop.p

    def extra_repr(self) -> str:
        s = (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, bias={self.bias}, "
             f"batch_first={self.batch_first}, input_dropout={self.input_dropout}, "
             f"recurrent_dropout={self.recurrent_dropout}, output_dropout={self.output_dropout}")
        if self.input_drop.seeded:  # shown only when given
            s += f", seed={int(self.input_drop.seed) % 2**64}"
        return s

    def _layer(self, k: int):
        get = lambda name: getattr(self, f"{name}_l{k}", None)  # noqa: E731
        return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")

    @fx_leaf_forward  # one call_module node under torch.fx: masks are drawn when the graph runs
    def forward(self, input: torch.Tensor, hx=None):
        if not isinstance(input, torch.Tensor) or not input.is_floating_point():
            raise TypeError(f"{type(self).__name__} expects a floating-point input sequence, but got "
                            f"{getattr(input, 'dtype', type(input).__name__)}")
        if input.dim() not in (2, 3):
            raise ValueError(f"{type(self).__name__} expects input (T, N, {self.input_size}), "
                             f"(N, T, {self.input_size}) with batch_first, or unbatched (T, {self.input_size}), "
                             f"but got shape {tuple(input.shape)}")
        batched = input.dim() == 3
        x = input if batched else input.unsqueeze(0 if self.batch_first else 1)
        if self.batch_first:
            x = x.transpose(0, 1)
        steps, n = x.shape[0], x.shape[1]
        if steps == 0:
            raise ValueError(f"{type(self).__name__} expects at least one time step")
        h0, c0 = self._initial_state(hx, n, batched, x)
        # one counter per site and forward, one stream per layer: a checkpointed forward replays each
        # site's single step, so recomputed masks match (several draws per site would replay out of order)
        draws = [site._next_counter() if site.training and site.p > 0 else None
                 for site in (self.input_drop, self.recurrent_drop, self.output_drop)]
        x = self._locked(self.input_drop, x, draws[0], 0)
        h_n, c_n = [], []
        for k in range(self.num_layers):
            w_ih, w_hh, b_ih, b_hh = self._layer(k)
            mask = None
            if draws[1] is not None:
                mask = self._recurrent_mask(draws[1], k)
            if self._mode == "LSTM":
                b = None if b_ih is None else b_ih + b_hh
                # input projections of all steps in one matmul; only h @ W_hh stays in the loop
                gates_x = torch.nn.functional.linear(x, w_ih, b)
                x, h, c = F.lstm_recurrence(gates_x, h0[k], c0[k], w_hh, mask)
                c_n.append(c)
            else:
                gates_x = torch.nn.functional.linear(x, w_ih, b_ih)
                x, h = F.gru_recurrence(gates_x, h0[k], w_hh, b_hh, mask)
            h_n.append(h)
            x = self._locked(self.output_drop, x, draws[2], k)
        output = x.transpose(0, 1) if self.batch_first else x
        h_n = torch.stack(h_n)
        c_n = torch.stack(c_n) if c_n else None
        if not batched:
            output = output.squeeze(0 if self.batch_first else 1)
            h_n = h_n.squeeze(1)
            c_n = c_n.squeeze(1) if c_n is not None else None
        return (output, (h_n, c_n)) if self._mode == "LSTM" else (output, h_n)

    def _recurrent_mask(self, draw, layer: int):
        """Layer ``layer``'s recurrent mask as a function ``h -> h m / q`` (the one op, regenerated in
        backward, never stored): the same counters give the same mask at every time step."""
        site = self.recurrent_drop
        seed, step = draw

        def apply(h: torch.Tensor) -> torch.Tensor:
            return F.dropout(h, site.p, True, seed=seed, step=step, replica=site.replica, stream=layer)
        return apply

    @staticmethod
    def _locked(site: LockedDropout, x: torch.Tensor, draw, stream: int) -> torch.Tensor:
        if draw is None:
            return F.locked_dropout(x, site.p, False, scaling=site.scaling)
        return F.locked_dropout(x, site.p, True, seed=draw[0], step=draw[1], replica=site.replica, stream=stream,
                                scaling=site.scaling)

    def _initial_state(self, hx, n: int, batched: bool, x: torch.Tensor):
        shape = (self.num_layers, n, self.hidden_size)
        if hx is None:
            zeros = torch.zeros(shape, dtype=x.dtype, device=x.device)
            return zeros, zeros
        if self._mode == "LSTM":
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise ValueError("VariationalLSTM expects hx = (h_0, c_0)")
            h0, c0 = hx
        else:
            h0, c0 = hx, None
        if not batched:
            h0 = h0.unsqueeze(1)
            c0 = c0.unsqueeze(1) if c0 is not None else None
        for name, t in (("h_0", h0), ("c_0", c0)):
            if t is not None and tuple(t.shape) != shape:
                raise ValueError(f"{type(self).__name__} expects {name} of shape {shape}, but got {tuple(t.shape)}")
        return h0, c0


class VariationalLSTM(_VariationalRNN):
    r"""A stacked LSTM with variational (per-sequence) input, recurrent and output dropout.

    Gal & Ghahramani's variational RNN: each mask is drawn once per sequence (per example and unit) and
    reused at every time step, instead of re-sampled per step, which is what makes dropout work on the
    recurrent connections. Per layer :math:`k`:

    .. math::
        \tilde x^{(0)} = x \odot m_x,\quad
        (i, f, g, o) = \tilde x_t W_{ih}^\top + b_{ih} + (h_{t-1} \odot m_h^{(k)}) W_{hh}^\top + b_{hh},\quad
        x^{(k+1)} = h^{(k)} \odot m_o^{(k)}

    with :math:`c_t = \sigma(f) c_{t-1} + \sigma(i)\tanh(g)`, :math:`h_t = \sigma(o)\tanh(c_t)` and every
    mask inverted (:math:`m / q`). Output dropout is applied to every layer's output: between layers and
    to the returned ``output`` (not to ``h_n``). One recurrent mask per layer is shared by the four
    gates (the "tied" form). With all rates 0 it computes exactly ``torch.nn.LSTM``; the parameters
    have ``torch.nn.LSTM``'s names, shapes and initialization, so state_dicts move between the two
    (:meth:`from_torch`; the dropout counters are extra keys).

    Args:
        input_size: features of the input :math:`H_{in}`.
        hidden_size: features of the hidden state :math:`H`.
        num_layers: stacked layers. Default: 1.
        bias: use ``b_ih`` and ``b_hh``. Default: True.
        batch_first: input and output are :math:`(N, T, *)`. Default: False.
        input_dropout: rate of the mask on the input features. Default: 0.0.
        recurrent_dropout: rate of the mask on :math:`h_{t-1}` in every layer. Default: 0.0.
        output_dropout: rate of the mask on each layer's output. Default: 0.0.
        seed: 64-bit seed (the three dropout sites use ``seed``, ``seed + 1``, ``seed + 2``; layer
            ``k``'s recurrent and output masks are stream ``k`` of their site's one draw per forward);
            ``None``: each site draws a fresh key from torch's default generator at every training
            forward, as ``torch.nn`` dropout does. Default: None.
        share_across_ranks: draw the same masks on every data-parallel rank. Default: False.

    Shape:
        Input :math:`(T, N, H_{in})`, :math:`(N, T, H_{in})` with ``batch_first``, or :math:`(T, H_{in})`.
        Returns ``output, (h_n, c_n)`` as ``torch.nn.LSTM``: output :math:`(T, N, H)`, states
        :math:`(L, N, H)`.

    Example::

        >>> rnn = VariationalLSTM(16, 32, num_layers=2, input_dropout=0.25, recurrent_dropout=0.25,
        ...                       output_dropout=0.25, seed=0)
        >>> out, (h, c) = rnn(torch.randn(20, 4, 16))
        >>> out.shape, h.shape
        (torch.Size([20, 4, 32]), torch.Size([2, 4, 32]))

    Reference: Gal & Ghahramani, "A Theoretically Grounded Application of Dropout in Recurrent Neural
    Networks", NeurIPS 2016.

    .. warning::
        It does not compile as one graph (``torch.compile(fullgraph=True)`` fails): the time loop runs in a
        hand-written ``autograd.Function`` whose backward regenerates the recurrent mask from a Python
        closure over the counters, which dynamo cannot trace. Without ``fullgraph`` it compiles with
        graph breaks around the recurrence. Every mask still comes from the one op and none is saved.

    .. warning::
        The recurrence runs step by step in PyTorch ops (torch's fused kernels cannot apply a hidden
        mask), so it is slower than ``torch.nn.LSTM``; :class:`~droplab.nn.WeightDrop` keeps the fused
        kernels and regularizes the recurrent weights instead.
    """

    _mode = "LSTM"
    _gates = 4


class VariationalGRU(_VariationalRNN):
    r"""A stacked GRU with variational (per-sequence) input, recurrent and output dropout.

    As :class:`VariationalLSTM`, with torch.nn.GRU's cell (gate order r, z, n):
    :math:`n = \tanh(\tilde x W_{in}^\top + b_{in} + r \odot (\tilde h W_{hn}^\top + b_{hn}))`,
    :math:`h_t = (1 - z) \odot n + z \odot h_{t-1}`, where :math:`\tilde h = h_{t-1} \odot m_h` feeds
    all three hidden projections. Returns ``output, h_n`` as ``torch.nn.GRU``. Arguments as
    :class:`VariationalLSTM`.

    Example::

        >>> rnn = VariationalGRU(8, 16, batch_first=True, recurrent_dropout=0.3, seed=0)
        >>> out, h = rnn(torch.randn(4, 20, 8))
        >>> out.shape, h.shape
        (torch.Size([4, 20, 16]), torch.Size([1, 4, 16]))

    Reference: Gal & Ghahramani, NeurIPS 2016.

    .. warning::
        As :class:`VariationalLSTM`, it does not compile as one graph (``fullgraph=True`` fails): the
        recurrent mask reaches every time step through a Python closure over the counters, and dynamo
        breaks the graph around the recurrence (a graph break, not an error, without ``fullgraph``).
    """

    _mode = "GRU"
    _gates = 3
