"""Lightning: drive dropout schedules from a callback whose state lives in the checkpoint; MC in ``predict_step``.

Example (a tiny fit; the callback rides along in ``callbacks``)::

    >>> import lightning.pytorch as pl
    >>> from droplab.integrations.lightning import DropoutSchedule
    >>> callback = DropoutSchedule(dl.schedules.linear(0.0, 0.3, steps=4))
    >>> callback.rates  # filled in once training starts
    {}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from torch import nn

from . import _require

pl = _require("lightning.pytorch")

__all__ = ["DropoutSchedule", "mc_predict"]

_INTERVALS = ("step", "epoch")


class DropoutSchedule(pl.Callback):
    """Apply a droplab schedule (:mod:`droplab.schedules`) to the LightningModule's dropout sites.

    Args:
        schedule: one schedule ``t -> rate`` for every site, or ``{pattern: schedule}`` (patterns as
            :func:`droplab.set_rate`).
        interval: ``"step"`` (one count per optimizer step: Lightning's ``trainer.global_step``, so with
            ``accumulate_grad_batches=4`` four batches make one count) or ``"epoch"``. Default: ``"step"``.
        **scheduler_kwargs: passed to :class:`droplab.DropoutScheduler` (``resolution``, ``max_jump``, ...).

    The count and rates are saved in the checkpoint (``state_dict``) and restored on
    ``trainer.fit(..., ckpt_path=...)``, so a resumed run uses exactly the rates the uninterrupted
    run would have. ``rates`` holds the rates applied last.
    """

    def __init__(self, schedule: Callable[[int], float] | Mapping[str, Callable[[int], float]],
                 interval: str = "step", **scheduler_kwargs) -> None:
        if interval not in _INTERVALS:
            raise ValueError(f"interval must be one of {_INTERVALS}, but got {interval!r}")
        self.schedule, self.interval, self.kwargs = schedule, interval, scheduler_kwargs
        self.scheduler = None
        self.rates: dict[str, float] = {}
        self._pending: Mapping | None = None
        self._optimizer_steps = 0  # trainer.global_step when last counted

    def _ensure(self, module: nn.Module) -> None:
        if self.scheduler is None:
            from ..schedules import DropoutScheduler

            self.scheduler = DropoutScheduler(module, self.schedule, self.interval, **self.kwargs)
            self.rates = self.scheduler.rates()
        if self._pending is not None:
            self.scheduler.load_state_dict(self._pending)
            self.rates, self._pending = self.scheduler.rates(), None

    def on_fit_start(self, trainer, pl_module) -> None:
        self._ensure(pl_module)

    def on_train_start(self, trainer, pl_module) -> None:
        self._optimizer_steps = trainer.global_step  # restored by now when resuming from a checkpoint

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # one count per optimizer step, not per batch: a batch that only accumulates gradients steps nothing
        if self.interval == "step":
            while self._optimizer_steps < trainer.global_step:
                self._optimizer_steps += 1
                self.rates = self.scheduler.step()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.interval == "epoch":
            self.rates = self.scheduler.step()

    def state_dict(self) -> dict:
        if self.scheduler is None:
            return dict(self._pending or {})
        return self.scheduler.state_dict()

    def load_state_dict(self, state_dict: Mapping) -> None:
        self._pending = dict(state_dict)
        if self.scheduler is not None:
            self._ensure(None)


def mc_predict(module: nn.Module, inputs, samples: int = 100, *, seed: int = 0, batch_idx: int = 0, **kwargs):
    """MC dropout from a ``predict_step``: :func:`droplab.mc.predict` on the module itself.

    The seed of batch ``batch_idx`` is ``seed + batch_idx``, so a prediction run is reproducible
    batch by batch whatever the number of devices. Extra keywords go to :func:`droplab.mc.predict`.

    Example (inside a LightningModule)::

        def predict_step(self, batch, batch_idx):
            return mc_predict(self, batch[0], samples=50, batch_idx=batch_idx).mean
    """
    from ..mc import predict

    return predict(module, inputs, samples, seed=seed + int(batch_idx), **kwargs)
