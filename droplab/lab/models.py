"""The lab's built-in models as factories: ``droplab.lab.models:mlp``, ``:cnn1d``, ``:gru``, ``:transformer``.

They are factories of the kind a user writes for ``--model FILE.py:FACTORY``: the lab calls each with
the arguments it declares (``input_shape``, ``n_outputs`` and config fields such as ``width``,
``depth``, ``dropout``), so ``--set width=...`` keeps working, and ``width`` left unset takes the
model's own default, sized so the default ``droplab compare --model NAME`` finishes in under two
minutes on a 2-core CPU. An input site is not built here: the lab puts one before any model's input
(``input_site``, ``--input-dropout``). Each model has one droplab dropout site per hidden layer, built
at ``dropout`` (0.5) or ``layer_rates``; the lab sets the run's ``rates`` on the sites afterwards:

* ``mlp``: ``(Linear -> [BN] -> act -> dropout [-> BN]) x depth -> Linear``.
  ``batchnorm="before_dropout"`` normalizes before the site (the safe order); ``"after_dropout"``
  puts BN after the site, the order that suffers the train/test variance shift.
* ``cnn1d``: ``(Conv1d(k=5) -> [BN] -> act -> dropout -> MaxPool(2)) x depth -> global average -> Linear``;
  ``variant="channel"`` drops whole channels, ``"dropblock"`` contiguous blocks.
* ``gru``: stacked single-layer GRUs over the sequence with variational dropout between them (one mask
  per sequence, shared over time: Gal & Ghahramani 2016), then dropout on the last state and a Linear.
* ``variant="concrete"`` (mlp only) wraps each Linear after a site in a learned-rate
  :class:`~droplab.nn.ConcreteDropout`; the trainer adds its regularization term to the loss.
* ``variant="dropconnect"`` (mlp only, for callers of the factory) makes each hidden layer with a rate
  above 0 a DropConnect layer in Wan et al.'s (2013) form: :class:`~droplab.nn.DropConnect` with a mask per
  example over the weights and bias, the activation inside the layer, and moment-matched Gaussian sampling
  at inference (no dropout site after it).
* ``transformer``: each scalar of the sequence embedded to ``width`` plus a learned position, ``depth``
  droplab :class:`~droplab.nn.transformer.TransformerBlock` s (each block's rate is its layer rate),
  mean pooling, Linear.

Models for the study's baselines and claims (factories of the same kind, with their rates built in):

* ``linear``: one Linear layer (logistic regression with the classification loss), optionally behind input
  dropout;
* ``mnist1d_cnn`` and ``mnist1d_gru``: the MNIST-1D paper's CNN and GRU (Greydanus 2020);
* ``recurrent``: a GRU over the sequence read out from every step's output, with no dropout, Zaremba et
  al.'s naive dropout (a fresh mask per step on the outputs only) or Gal and Ghahramani's variational
  dropout (one mask per sequence on the outputs and on the recurrent state).

Every site's seed derives from the ``seed`` argument, so a run's masks are a function of its config.

Example::

    >>> import torch
    >>> model = mlp(input_shape=(40,), n_outputs=10, width=16)
    >>> model(torch.zeros(3, 40)).shape
    torch.Size([3, 10])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .. import nn as dnn

__all__ = ["mlp", "cnn1d", "gru", "transformer", "linear", "mnist1d_cnn", "mnist1d_gru", "recurrent", "RECURRENT_MODES",
           "DEFAULT_WIDTHS", "build_model", "dropout_modules", "max_norm_"]

#: width when the config leaves it unset: sized so each default compare runs in under 2 minutes on 2 CPU cores
DEFAULT_WIDTHS = {"mlp": 512, "cnn1d": 32, "gru": 32, "transformer": 32}

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "selu": nn.SELU, "silu": nn.SiLU}

# variant -> droplab.nn class name (None: the built-in Dropout / Dropout1d)
_VARIANT_CLASSES = {"dropout": None, "channel": "Dropout1d", "dropblock": "DropBlock1d", "locked": "LockedDropout",
                    "gaussian": "GaussianDropout", "alpha": "AlphaDropout", "concrete": "ConcreteDropout"}


def _site_seed(config, index: int) -> int:
    # distinct, reproducible seeds per site: the config seed in the high bits, the site index below
    return (int(config.seed) * 1_000_003 + 7919 * (index + 1)) % 2**63


def _variant_class(variant: str) -> type[nn.Module]:
    name = _VARIANT_CLASSES[variant]
    cls = getattr(dnn, name, None)
    if cls is None:
        raise ValueError(f"variant {variant!r} is not available: droplab.nn.{name} is not in this install")
    return cls


def _site(config, p: float, index: int, kind: str) -> nn.Module:
    """A dropout module of ``config.variant`` for an input of ``kind``: features (N, F), channels (N, C, L)
    or sequence (N, T, H)."""
    seed = _site_seed(config, index)
    variant = config.variant
    if variant == "dropout":
        if kind == "sequence" and config.model == "gru":
            # variational dropout: one mask per sequence, shared over time steps
            return dnn.Dropout(p, seed=seed, noise_shape=(None, 1, None))
        return dnn.Dropout(p, seed=seed)
    if variant in ("channel", "dropblock") and kind != "channels":
        raise ValueError(f"variant {variant!r} drops channels or blocks of a (N, C, L) signal: use model='cnn1d' "
                         f"(got model={config.model!r})")
    if variant == "locked" and kind != "sequence":
        raise ValueError(f"variant 'locked' shares one mask over time steps: use model='gru' or 'transformer' "
                         f"(got model={config.model!r})")
    if variant == "concrete":
        raise ValueError("variant 'concrete' learns the rate of the layer it wraps: the lab supports it on "
                         f"model='mlp' (got model={config.model!r})")
    if variant == "locked":
        return _variant_class("locked")(p, batch_first=True, seed=seed)
    if variant == "channel":
        return dnn.Dropout1d(p, seed=seed)
    cls = _variant_class(variant)
    if variant == "dropblock":
        return cls(p, block_size=3, seed=seed)
    return cls(p, seed=seed)


def _concrete(config, layer: nn.Module, index: int, p: float) -> nn.Module:
    """``layer`` behind a learned-rate Concrete dropout site starting at ``p`` (no site when ``p == 0``)."""
    if p == 0:
        return layer
    return _variant_class("concrete")(layer, p, seed=_site_seed(config, index))


def _dropconnect(config, layer: nn.Linear, act: nn.Module, index: int, p: float) -> nn.Module:
    """``layer`` then ``act`` as one DropConnect layer in Wan et al.'s form (a plain pair when ``p == 0``)."""
    if p == 0:
        return nn.Sequential(layer, act)
    return dnn.DropConnect(layer, p, per_example=True, drop_bias=True, inference="gaussian", activation=act,
                           samples=50, seed=_site_seed(config, index))


class MLP(nn.Module):
    def __init__(self, config: _Spec, input_shape: tuple[int, ...], n_classes: int) -> None:
        super().__init__()
        rates = config.hidden_rates()
        act = _ACTIVATIONS[config.activation]
        if config.variant == "dropconnect":
            if config.batchnorm != "none":
                raise ValueError("variant 'dropconnect' builds its own layers; use batchnorm='none'")
            width_in, layers = math.prod(input_shape), [nn.Flatten()]
            for i, rate in enumerate(rates):
                layers.append(_dropconnect(config, nn.Linear(width_in, config.width), act(), i + 1, rate))
                width_in = config.width
            self.net = nn.Sequential(*layers, nn.Linear(width_in, n_classes))
            return
        # concrete dropout wraps the layer that consumes the dropped activations, so each site's rate
        # travels to the next Linear
        concrete = config.variant == "concrete"
        layers: list[nn.Module] = [nn.Flatten()]
        width_in, pending = math.prod(input_shape), (0, 0.0)
        for i, rate in enumerate(rates):
            layers.append(_concrete(config, nn.Linear(width_in, config.width), *pending) if concrete
                          else nn.Linear(width_in, config.width))
            if config.batchnorm == "before_dropout":
                layers.append(nn.BatchNorm1d(config.width))
            layers += [act()] if concrete else [act(), _site(config, rate, i + 1, "features")]
            if config.batchnorm == "after_dropout":
                layers.append(nn.BatchNorm1d(config.width))
            width_in, pending = config.width, (i + 1, rate)
        head = nn.Linear(width_in, n_classes)
        layers.append(_concrete(config, head, *pending) if concrete else head)
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN1d(nn.Module):
    def __init__(self, config: _Spec, input_shape: tuple[int, ...], n_classes: int) -> None:
        super().__init__()
        rates = config.hidden_rates()
        act = _ACTIVATIONS[config.activation]
        blocks: list[nn.Module] = []
        channels_in = input_shape[0] if len(input_shape) == 2 else 1  # (C, L) signals keep their channels
        for i, rate in enumerate(rates):
            blocks.append(nn.Conv1d(channels_in, config.width, kernel_size=5, padding=2))
            if config.batchnorm == "before_dropout":
                blocks.append(nn.BatchNorm1d(config.width))
            blocks += [act(), _site(config, rate, i + 1, "channels")]
            if config.batchnorm == "after_dropout":
                blocks.append(nn.BatchNorm1d(config.width))
            blocks.append(nn.MaxPool1d(2, ceil_mode=True))
            channels_in = config.width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(channels_in, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], 1, -1) if x.dim() == 2 else x
        return self.head(self.blocks(x).mean(dim=-1))


class GRUClassifier(nn.Module):
    def __init__(self, config: _Spec, input_shape: tuple[int, ...], n_classes: int) -> None:
        super().__init__()
        rates = config.hidden_rates()
        self.grus = nn.ModuleList()
        self.drops = nn.ModuleList()
        size_in = input_shape[0] if len(input_shape) == 2 else 1  # (C, L): C features per time step
        for i, rate in enumerate(rates):
            self.grus.append(nn.GRU(size_in, config.width, batch_first=True))
            self.drops.append(_site(config, rate, i + 1, "sequence"))
            size_in = config.width
        self.head = nn.Linear(size_in, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(x.shape[0], -1, 1) if x.dim() == 2 else x.transpose(1, 2)
        for gru, drop in zip(self.grus, self.drops):
            h = drop(gru(h)[0])
        return self.head(h[:, -1])


class TransformerClassifier(nn.Module):
    def __init__(self, config: _Spec, input_shape: tuple[int, ...], n_classes: int) -> None:
        super().__init__()
        try:
            from ..nn import TransformerBlock
        except ModuleNotFoundError:
            raise ValueError("model 'transformer' is not available: droplab.nn.transformer is not in this install") \
                from None
        if config.variant not in ("dropout", "locked"):
            raise ValueError(f"model 'transformer' uses TransformerBlock's own attention, feed-forward and residual "
                             f"sites; variant must be 'dropout' (or 'locked' for the input site), "
                             f"got {config.variant!r}")
        rates = config.hidden_rates()
        d = config.width
        heads = next(h for h in (4, 2, 1) if d % h == 0)
        self.embed = nn.Linear(1, d)
        self.position = nn.Parameter(torch.zeros(1, math.prod(input_shape), d))
        nn.init.normal_(self.position, std=0.02)
        self.blocks = nn.ModuleList(
            TransformerBlock(d, heads, 2 * d, dropout=rate,
                             activation="gelu" if config.activation == "gelu" else "relu",
                             seed=_site_seed(config, 4 * (i + 1)))
            for i, rate in enumerate(rates))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.reshape(x.shape[0], -1, 1)) + self.position
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h).mean(dim=1))


_MODELS = {"mlp": MLP, "cnn1d": CNN1d, "gru": GRUClassifier, "transformer": TransformerClassifier}

#: the ``mode`` values of :func:`recurrent`
RECURRENT_MODES = ("none", "naive", "variational")


class MNIST1dCNN(nn.Module):
    """The MNIST-1D paper's ``ConvBase``: three strided Conv1d layers (25 channels), a Linear on the flat maps."""

    def __init__(self, length: int, n_classes: int, channels: int = 25) -> None:
        super().__init__()
        self.convs = nn.Sequential(nn.Conv1d(1, channels, 5, stride=2, padding=1), nn.ReLU(),
                                   nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
                                   nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU())
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, 1, length)).numel()
        self.head = nn.Linear(flat, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.convs(x.reshape(x.shape[0], 1, -1)).flatten(1))


class SequenceReadout(nn.Module):
    """A recurrent layer over ``(N, L)`` signals read ``chunk`` values per step, read out from every step's output.

    ``drop`` is applied to the ``(N, T, H)`` outputs before the Linear on their flattening (the identity
    when there is none).
    """

    def __init__(self, rnn: nn.Module, drop: nn.Module, steps: int, hidden: int, n_classes: int,
                 chunk: int = 1) -> None:
        super().__init__()
        self.rnn, self.drop, self.chunk = rnn, drop, chunk
        self.head = nn.Linear(steps * hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.rnn(x.reshape(x.shape[0], -1, self.chunk))[0]
        return self.head(self.drop(out).flatten(1))


@dataclass(frozen=True)
class _Spec:
    """What the model classes read: the factory's arguments."""

    model: str
    width: int
    depth: int
    activation: str
    batchnorm: str
    dropout: float
    layer_rates: list[float] | None
    variant: str
    seed: int

    def hidden_rates(self) -> list[float]:
        return list(self.layer_rates) if self.layer_rates is not None else [self.dropout] * self.depth


def _build(model: str, input_shape, n_outputs: int, width: int | None, depth: int, activation: str, batchnorm: str,
           dropout: float, layer_rates: list[float] | None, variant: str, seed: int) -> nn.Module:
    from ..functional import check_probability

    if layer_rates is not None:
        if len(layer_rates) != depth:
            raise ValueError(f"layer_rates must give one rate per hidden layer (depth={depth}), "
                             f"but got {len(layer_rates)}: {layer_rates}")
        for rate in layer_rates:
            check_probability(rate)
    check_probability(dropout)
    spec = _Spec(model, DEFAULT_WIDTHS[model] if width is None else int(width), int(depth), activation, batchnorm,
                 float(dropout), layer_rates, variant, int(seed))
    return _MODELS[model](spec, tuple(int(n) for n in input_shape), int(n_outputs))


def mlp(input_shape, n_outputs: int, width: int | None = None, depth: int = 2, activation: str = "relu",
        batchnorm: str = "none", dropout: float = 0.5, layer_rates: list[float] | None = None,
        variant: str = "dropout", seed: int = 0) -> nn.Module:
    """The MLP of Srivastava et al. (2014) on flattened inputs; ``width`` None is 512 units."""
    return _build("mlp", input_shape, n_outputs, width, depth, activation, batchnorm, dropout, layer_rates, variant,
                  seed)


def cnn1d(input_shape, n_outputs: int, width: int | None = None, depth: int = 2, activation: str = "relu",
          batchnorm: str = "none", dropout: float = 0.5, layer_rates: list[float] | None = None,
          variant: str = "dropout", seed: int = 0) -> nn.Module:
    """A 1-D CNN over ``(L,)`` or ``(C, L)`` signals; ``width`` None is 32 channels."""
    return _build("cnn1d", input_shape, n_outputs, width, depth, activation, batchnorm, dropout, layer_rates, variant,
                  seed)


def gru(input_shape, n_outputs: int, width: int | None = None, depth: int = 2, dropout: float = 0.5,
        layer_rates: list[float] | None = None, variant: str = "dropout", seed: int = 0) -> nn.Module:
    """Stacked GRUs with variational dropout over ``(L,)`` or ``(C, L)`` sequences; ``width`` None is 32."""
    return _build("gru", input_shape, n_outputs, width, depth, "tanh", "none", dropout, layer_rates, variant, seed)


def transformer(input_shape, n_outputs: int, width: int | None = None, depth: int = 2, activation: str = "relu",
                dropout: float = 0.5, layer_rates: list[float] | None = None, variant: str = "dropout",
                seed: int = 0) -> nn.Module:
    """A small encoder over the input's scalars as tokens; ``width`` None is a model dim of 32."""
    return _build("transformer", input_shape, n_outputs, width, depth, activation, "none", dropout, layer_rates,
                  variant, seed)


# config defaults a built-in model overrides when the user leaves them unset (droplab.lab.build.with_model_defaults):
# the recurrent and attention models cost several times the MLP per epoch, so their default compare stays under
# two minutes on a 2-core CPU with fewer epochs
cnn1d.lab_defaults = {"epochs": 30}
gru.lab_defaults = {"epochs": 20}
transformer.lab_defaults = {"epochs": 10}


def build_model(config, n_features: int | tuple[int, ...], n_classes: int) -> nn.Module:
    """``config``'s model as the lab trains it (factory, input dropout, conversion, rates); see
    :func:`droplab.lab.build.build_model`. Initialization draws from torch's generator seeded by the caller."""
    from .build import build_model as lab_build

    shape = (n_features,) if isinstance(n_features, int) else tuple(n_features)
    return lab_build(config, shape, n_classes)


def dropout_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every droplab dropout module in ``model`` with a settable rate, in registration order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, dnn.StochasticModule)]


@torch.no_grad()
def max_norm_(model: nn.Module, max_norm: float) -> None:
    """Rescale each unit's incoming weight vector to norm at most ``max_norm`` (Srivastava et al. 2014, sec. 5.1)."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            weight = module.weight.view(module.weight.shape[0], -1)
            weight.copy_(torch.renorm(weight, p=2, dim=0, maxnorm=max_norm))


def linear(input_shape, n_outputs: int, bias: bool = True, input_dropout: float = 0.0, seed: int = 0) -> nn.Module:
    """One Linear layer on the flattened input (logistic regression under the classification loss), optionally
    behind inverted input dropout of rate ``input_dropout``.

    Example::

        >>> [type(m).__name__ for m in linear((8,), 1, bias=False, input_dropout=0.5)]
        ['Flatten', 'Dropout', 'Linear']
    """
    from ..functional import check_probability

    check_probability(input_dropout)
    layers: list[nn.Module] = [nn.Flatten()]
    if input_dropout > 0:
        layers.append(dnn.Dropout(input_dropout, seed=(int(seed) * 1_000_003 + 7919) % 2**63))
    layers.append(nn.Linear(math.prod(input_shape), int(n_outputs), bias=bias))
    return nn.Sequential(*layers)


def mnist1d_cnn(input_shape, n_outputs: int, channels: int = 25) -> nn.Module:
    """The MNIST-1D paper's CNN (``ConvBase``, Greydanus 2020): 3 strided convolutions of ``channels``, a Linear."""
    return MNIST1dCNN(math.prod(input_shape), int(n_outputs), int(channels))


def mnist1d_gru(input_shape, n_outputs: int, width: int = 6) -> nn.Module:
    """The MNIST-1D paper's GRU (``GRUBase``, Greydanus 2020): bidirectional, ``width`` units, every step's output
    flattened into a Linear."""
    steps = math.prod(input_shape)
    rnn = nn.GRU(1, int(width), batch_first=True, bidirectional=True)
    return SequenceReadout(rnn, nn.Identity(), steps, 2 * int(width), int(n_outputs), 1)


def recurrent(input_shape, n_outputs: int, width: int = 32, mode: str = "none", dropout: float = 0.0,
              chunk: int = 1, seed: int = 0) -> nn.Module:
    """A GRU of ``width`` units over the signal, ``chunk`` values per step, read out from every step's output.

    ``mode`` places the dropout of rate ``dropout``:

    * ``"none"``: no dropout (``torch.nn.GRU``);
    * ``"naive"``: Zaremba et al. (2014), the baseline of Gal & Ghahramani: dropout on the outputs only (the
      non-recurrent connections), a fresh mask at every step (``torch.nn.GRU``, then
      :class:`~droplab.nn.Dropout` on ``(N, T, H)``);
    * ``"variational"``: Gal & Ghahramani (2016): one mask per sequence, shared over the steps, on the outputs
      and on the recurrent state :math:`h_{t-1}` (:class:`~droplab.nn.VariationalGRU`).

    The input is not dropped in any mode: with a few values per step, a mask shared over time would delete
    whole positions of the signal. With ``dropout=0`` every mode computes the same function.

    Example::

        >>> model = recurrent((40,), 10, width=8, mode="variational", dropout=0.25)
        >>> model(torch.zeros(3, 40)).shape
        torch.Size([3, 10])
    """
    from ..functional import check_probability

    if mode not in RECURRENT_MODES:
        raise ValueError(f"mode must be one of {', '.join(RECURRENT_MODES)}, but got {mode!r}")
    check_probability(dropout)
    length, width, chunk = math.prod(input_shape), int(width), int(chunk)
    if chunk < 1 or length % chunk:
        raise ValueError(f"chunk must divide the signal's {length} values, but got {chunk}")
    base = (int(seed) * 1_000_003 + 7919) % 2**62
    if mode == "variational":
        rnn = dnn.VariationalGRU(chunk, width, batch_first=True, recurrent_dropout=dropout, output_dropout=dropout,
                                 seed=base)
        return SequenceReadout(rnn, nn.Identity(), length // chunk, width, int(n_outputs), chunk)
    drop = dnn.Dropout(dropout, seed=base) if mode == "naive" else nn.Identity()
    return SequenceReadout(nn.GRU(chunk, width, batch_first=True), drop, length // chunk, width, int(n_outputs), chunk)
