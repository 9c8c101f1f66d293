"""Hugging Face transformers: dropout schedules in ``Trainer`` and MC prediction on ``PreTrainedModel``.

:func:`droplab.mc.predict` takes a ``PreTrainedModel`` directly: pass the batch as a mapping
(``{"input_ids": ..., "attention_mask": ...}``) and it samples ``logits`` (or ``output=``). Attention
dropout, which Hugging Face models issue as a functional call reading ``self.dropout.p``, is sampled
too, eager or sdpa. :func:`droplab.convert` on a ``PreTrainedModel`` probes its ``dummy_inputs`` so
that this attention dropout is also drawn by droplab in training.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from . import _require

transformers = _require("transformers")

__all__ = ["DropoutScheduleCallback"]

_INTERVALS = ("step", "epoch")


class DropoutScheduleCallback(transformers.TrainerCallback):
    """Apply a droplab schedule to the model's dropout sites at each step (or epoch) of ``transformers.Trainer``.

    Args:
        schedule: one schedule ``t -> rate`` for every site, or ``{pattern: schedule}`` (patterns as
            :func:`droplab.set_rate`, matched against the names :func:`droplab.sites` lists, e.g.
            ``{"*attention*dropout": ..., "dropout": ...}`` on ``BertForSequenceClassification``, whose
            head dropout is ``dropout``). A pattern that matches no site raises when training starts.
        interval: ``"step"`` (``t`` = the trainer's ``global_step``) or ``"epoch"`` (``t`` = completed
            epochs). Default: ``"step"``.

    The rate is a function of the trainer's own counters, which ``Trainer`` saves in its checkpoints,
    so a run resumed with ``resume_from_checkpoint`` continues the schedule exactly. Attention
    dropout follows too: Hugging Face attention reads ``self.dropout.p`` at each forward.
    """

    def __init__(self, schedule: Callable[[int], float] | Mapping[str, Callable[[int], float]],
                 interval: str = "step", **scheduler_kwargs) -> None:
        if interval not in _INTERVALS:
            raise ValueError(f"interval must be one of {_INTERVALS}, but got {interval!r}")
        self.schedule, self.interval, self.kwargs = schedule, interval, scheduler_kwargs
        self.scheduler = None
        self.rates: dict[str, float] = {}

    def _apply(self, state, model) -> None:
        if self.scheduler is None:
            from ..schedules import DropoutScheduler

            self.scheduler = DropoutScheduler(model, self.schedule, self.interval, **self.kwargs)
        t = state.global_step if self.interval == "step" else int(state.epoch or 0)
        self.scheduler.load_state_dict({"t": t, "unit": self.interval})  # sets the count and applies its rates
        self.rates = self.scheduler.rates()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._apply(state, model)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.interval == "step":
            self._apply(state, model)

    def on_epoch_begin(self, args, state, control, model=None, **kwargs):
        if self.interval == "epoch":
            self._apply(state, model)
