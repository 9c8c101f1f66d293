"""Mode guards: make sure no dropout is stochastic where a prediction must be deterministic.

Dropout left on at inference is a silent bug: predictions jitter, saliency maps and attributions
are noise-dependent, and quantization observers calibrate on thinned activations. Two tools:

* :func:`inference_mode` (context manager): the model in eval mode, every ``torch.nn.functional``
  dropout call inside it forced to ``training=False``, and a droplab mask drawn anyway (a functional
  ``droplab.functional.dropout(..., training=True)`` in a forward, or MC sampling) raises
  :class:`InferenceModeError`. Train/eval flags are restored on exit.
* :func:`assert_inference`: raises :class:`InferenceModeError` listing every offending site: a
  dropout module in train mode and, given an example input, every stochastic dropout call made
  while running the model (named by the module that made it) and outputs that differ between two
  runs. The model's buffers (step counters, BatchNorm statistics) and torch's generator are left
  as they were.

Recipe: post-training quantization calibrated with dropout guaranteed off::

    import torch.ao.quantization as tq
    model.qconfig = tq.get_default_qconfig("fbgemm")
    prepared = tq.prepare(model)                  # model with QuantStub/DeQuantStub, as usual
    with droplab.inference_mode(prepared):        # eval, and any stray dropout call is off or fails
        for x in calibration_batches:
            prepared(x)
    quantized = tq.convert(droplab.deploy.strip(prepared))  # no dropout module in the integer model

.. warning::
    ``inference_mode`` does not make ``torch.no_grad`` implicit: attribution methods need gradients.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as TF
from torch import nn

from ._modes import training_flags_restored
from .conversion import sites
from .graph.model_io import call_model
from .graph.recorder import CallRecorder, ModuleStack, module_stack

__all__ = ["InferenceModeError", "inference_mode", "assert_inference"]

_TORCH_DROPOUTS = {TF.dropout, TF.dropout1d, TF.dropout2d, TF.dropout3d, TF.alpha_dropout,
                   TF.feature_alpha_dropout}


_OUTPUT_DIFFERS = "the model's output differs between two runs on the example input"


class InferenceModeError(RuntimeError):
    """A dropout site would be stochastic during a prediction meant to be deterministic."""


def _droplab_op(func) -> bool:
    return getattr(func, "namespace", None) == "droplab" or str(func).startswith("droplab.")


def _training_arg(args: tuple, kwargs: dict) -> bool:
    if "training" in kwargs:
        return bool(kwargs["training"])
    return bool(args[2]) if len(args) > 2 else True


def _p_arg(args: tuple, kwargs: dict) -> float:
    return float(kwargs.get("p", args[1] if len(args) > 1 else 0.5))


class _Deterministic:
    """torch dropout calls forced off; a droplab mask draw is an error (or, recording, an entry).

    The ``on_call`` handler of a :class:`~droplab.graph.recorder.CallRecorder` over the model.
    """

    def __init__(self, stack: ModuleStack, record: list[str] | None = None) -> None:
        self.stack = stack
        self.record = record

    def _offend(self, message: str) -> None:
        frame = self.stack.current
        place = (frame.path or "<model>") if frame is not None else "<model>"
        if self.record is None:
            raise InferenceModeError(f"stochastic dropout inside inference_mode: {message} in {place}")
        self.record.append(f"{place}: {message}")

    def __call__(self, func, args, kwargs):
        kwargs = dict(kwargs)
        if func in _TORCH_DROPOUTS and _training_arg(args, kwargs) and _p_arg(args, kwargs) > 0:
            if self.record is not None:  # recording: report it and let it run as it would
                self._offend(f"torch.nn.functional.{func.__name__}(training=True)")
            else:
                kwargs.update(zip(("p", "training", "inplace"), args[1:4]))
                args = args[:1]
                kwargs["training"] = False
        elif _droplab_op(func):
            self._offend("a droplab dropout mask was drawn (droplab.functional call with training=True, "
                         "a module forced stochastic, or MC sampling)")
        return func(*args, **kwargs)


def _recorder(stack: ModuleStack, record: list[str] | None = None) -> CallRecorder:
    return CallRecorder(stack, on_call=_Deterministic(stack, record), unwrap_attention=False)


@contextlib.contextmanager
def inference_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` deterministically inside the block: eval mode, no dropout; restored on exit.

    ``torch.nn.functional`` dropout calls are forced to ``training=False``; a droplab mask draw raises
    :class:`InferenceModeError`. Yields the model.

    Example::

        >>> model, x = nn.Sequential(nn.Linear(4, 4), dl.nn.Dropout(0.5)), torch.randn(2, 4)
        >>> with inference_mode(model):
        ...     y = model(x)          # same as model.eval()(x), whatever the model's mode was
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, but got {type(model).__name__}")
    with training_flags_restored(model.modules()), module_stack(model) as stack:
        model.eval()
        with _recorder(stack):
            yield model


def assert_inference(model: nn.Module, example_input=None) -> None:
    """Raise :class:`InferenceModeError` if any dropout site of ``model`` would be stochastic.

    Checks every site reported by :func:`droplab.sites` (modules in train mode, ``dropout=`` of RNNs
    and attention in train mode); with ``example_input`` (a tensor, a tuple of arguments or a mapping of
    keyword arguments) it also runs the model twice, recording every stochastic dropout call by the module
    that made it (``torch.nn.functional.dropout(training=True)``, a droplab mask draw) and comparing the
    outputs.
    Buffers and torch's generator are restored afterwards.

    Example::

        >>> model = nn.Sequential(nn.Linear(4, 4), dl.nn.Dropout(0.5)).train()
        >>> assert_inference(model)
        Traceback (most recent call last):
        ...
        droplab.guards.InferenceModeError: 1 dropout site(s) would be stochastic: ...
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, but got {type(model).__name__}")
    offenders = [f"{s.name or '<model>'} ({s.kind}, p={s.p:g}) is in train mode" for s in sites(model) if s.training]
    places = {s.name or "<model>" for s in sites(model) if s.training}
    if example_input is not None:
        found = _run_twice(model, example_input)
        offenders += found
        # one site is often seen twice (in train mode, and drawing a mask): count sites, not messages
        places |= {entry.partition(": ")[0] for entry in found if entry != _OUTPUT_DIFFERS}
    if offenders:
        raise InferenceModeError(f"{len(places)} dropout site(s) would be stochastic:\n  " + "\n  ".join(offenders))


def _run_twice(model: nn.Module, example_input) -> list[str]:
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    issued = {m: list(m._issued) for m in model.modules() if hasattr(m, "_issued")}
    record: list[str] = []
    outputs = []
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad(), module_stack(model) as stack:
            for _ in range(2):
                calls: list[str] = []
                with _recorder(stack, calls):
                    outputs.append(call_model(model, example_input))
                record = record or calls
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
        for m, steps in issued.items():
            m._issued.clear()
            m._issued.extend(steps)
    found = sorted(set(record), key=record.index)
    if not _same(outputs[0], outputs[1]):
        found.append(_OUTPUT_DIFFERS)
    return found


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.allclose(a, b, rtol=0, atol=0, equal_nan=True))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b if not isinstance(a, torch.Tensor) else False
