"""The lab's Python API: ``droplab.lab.compare(model_fn, data)`` answers "is dropout helping my model?".

It trains the model three times: every dropout site off (p = 0), as built, and every site's rate
halved (or one run per entry of ``rates``), judges them with the three-run rule (classification:
:func:`droplab.diagnostics.verdict.three_run_verdict`; regression: the same rule in RMSE), and returns
a :class:`Comparison` with the table, the verdict, per-epoch histories and ``.report(path)``.
``droplab compare`` (:mod:`droplab.commands.compare`) is a thin layer over :func:`run_comparison`.

Results are stored before anything optional: every run is in the store as it finishes, then the
comparison row; co-adaptation measures and the report come after, and their failure loses nothing.

Example (a notebook; a small model so it runs in seconds)::

    >>> import torch
    >>> from torch import nn
    >>> import droplab.lab
    >>> def make_model(input_shape, n_outputs):
    ...     return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], 32), nn.ReLU(), nn.Dropout(0.5),
    ...                          nn.Linear(32, n_outputs))
    >>> x = torch.randn(300, 8); y = (x[:, 0] > 0).long()
    >>> data = (torch.utils.data.TensorDataset(x[:200], y[:200]), torch.utils.data.TensorDataset(x[200:], y[200:]))
    >>> result = droplab.lab.compare(make_model, data, epochs=2, coadaptation=False)
    >>> [run["label"] for run in result.runs]
    ['off (p=0)', 'as built', 'halved']
    >>> result.verdict.outcome in ("helps", "regularizes", "no_overfitting", "too_aggressive", "reduce_rate",
    ...                            "hurts", "inconclusive")
    True
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ExperimentConfig

__all__ = ["compare", "Comparison", "run_comparison", "default_configs", "rate_configs", "assign_roles",
           "COADAPTATION_BUDGET"]

#: the co-adaptation measures may take at most this share of a run's training time
COADAPTATION_BUDGET = 0.10


@dataclass
class Comparison:
    """What :func:`compare` returns.

    Attributes:
        id: the comparison id (also the report directory's name).
        runs: one summary dict per run (``label``, ``run_id``, final metrics, ``history``).
        roles: ``{"baseline": i, "intended": j, "reduced": k}`` indices into ``runs``.
        verdict: a :class:`droplab.diagnostics.verdict.Verdict`.
        task: ``"classification"`` or ``"regression"``.
        results: the :class:`droplab.lab.trainer.RunResult` of each run (with the trained model).
        report_path: the HTML report, once written.
    """

    id: str
    runs: list[dict]
    roles: dict[str, int]
    verdict: Any
    task: str
    configs: list[ExperimentConfig] = field(repr=False, default_factory=list)
    results: list = field(repr=False, default_factory=list)
    report_path: Path | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def table(self) -> str:
        """The summary table as aligned text (what ``droplab compare`` prints)."""
        from .report import format_table
        from .tasks import task_of

        return format_table(self.runs, task_of(self.task).TABLE_COLUMNS)

    @property
    def histories(self) -> dict[str, list[dict]]:
        """Per-epoch metrics of each run, by label."""
        return {run["label"]: run["history"] for run in self.runs}

    def report(self, path: str | os.PathLike = "reports") -> Path:
        """Write the HTML report into directory ``path`` (``index.html`` and PNGs); returns the page."""
        from .report import write_report

        title = f"droplab compare {self.id}: {self.configs[0].model} on {self.configs[0].dataset}"
        self.report_path = write_report(Path(path), self.runs, title=title, verdict=self.verdict.as_dict(),
                                        config=_shared_config(self.configs), task=self.task)
        return self.report_path

    def __getitem__(self, key: str):  # the dict the first version returned
        return {"id": self.id, "runs": self.runs, "roles": self.roles, "verdict": self.verdict,
                "report": self.report_path, "results": self.results}[key]

    def __str__(self) -> str:
        return f"{self.table}\n\n{self.verdict}"

    def _repr_html_(self) -> str:
        from .report import escape

        return f"<pre>{escape(str(self))}</pre>"


def _comparison_id() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S-") + os.urandom(2).hex()


def default_configs(base: ExperimentConfig) -> list[ExperimentConfig]:
    """The three default runs: every site off, as built, every site's rate halved."""
    return [base.replace(rates=None, rate_scale=0.0, name=base.name or "off (p=0)"),
            base.replace(rates=None, rate_scale=1.0, name=base.name or "as built"),
            base.replace(rates=None, rate_scale=0.5, name=base.name or "halved")]


def _rate_label(rate: float | Sequence[float]) -> str:
    return "p=" + ("/".join(f"{r:g}" for r in rate) if isinstance(rate, (list, tuple)) else f"{rate:g}")


def rate_configs(base: ExperimentConfig, rates: Sequence[float | Sequence[float]]) -> list[ExperimentConfig]:
    """One run per entry: a number sets every site, a list sets each site (``droplab.sites`` order)."""
    if len(rates) < 2:
        raise ValueError(f"rates needs at least two entries to compare (e.g. [0, 0.5]), but got {list(rates)}")
    configs = []
    for rate in rates:
        values = [float(r) for r in rate] if isinstance(rate, (list, tuple)) else [float(rate)]
        suffix = f", {base.schedule}" if base.schedule else ""
        configs.append(base.replace(rates=values, rate_scale=1.0, name=base.name or _rate_label(rate) + suffix))
    return configs


def _strength(config: ExperimentConfig) -> float:
    return sum(config.rates) / len(config.rates) if config.rates is not None else config.rate_scale


def assign_roles(configs: Sequence[ExperimentConfig]) -> dict[str, int]:
    """Indices of the baseline (least dropout), intended (most) and reduced (next below intended) runs."""
    strength = [_strength(c) for c in configs]
    baseline = min(range(len(configs)), key=lambda i: (strength[i], i))
    others = [i for i in range(len(configs)) if i != baseline]
    intended = max(others, key=lambda i: (strength[i], -i))
    roles = {"baseline": baseline, "intended": intended}
    below = [i for i in others if i != intended and strength[i] < strength[intended]]
    if below:
        roles["reduced"] = max(below, key=lambda i: (strength[i], -i))
    return roles


def _unique_labels(configs: Sequence[ExperimentConfig]) -> list[str]:
    labels, seen = [], {}
    for config in configs:
        label = config.label()
        seen[label] = seen.get(label, 0) + 1
        labels.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return labels


def _shared_config(configs: Sequence[ExperimentConfig]) -> dict:
    """The config keys every run shares (the per-run rates are in the table)."""
    dicts = [c.to_dict() for c in configs]
    return {k: v for k, v in dicts[0].items() if all(d[k] == v for d in dicts[1:])}


def _warm_kernels(echo) -> None:
    """Compile (or load) droplab's dropout kernel once up front, so the first dropout run's wall time is its own."""
    import torch

    from .. import functional

    start = time.perf_counter()
    x = torch.ones(4096, 2, requires_grad=True)
    functional.dropout(x, 0.5, training=True, seed=0).sum().backward()
    functional.dropout(x, 0.5, training=True, seed=0, noise_shape=(None, 1)).sum().backward()
    seconds = time.perf_counter() - start
    if seconds > 1.0:
        echo(f"loaded droplab's dropout kernel in {seconds:.1f} s")


def _train_all(configs, labels, store, comparison_id, progress, save, echo) -> tuple[list, Any]:
    from .data import load_dataset
    from .trainer import train

    splits, results = {}, []
    for config, label in zip(configs, labels):
        key = (config.dataset, config.label_column, config.val_fraction, config.test_fraction, config.seed,
               config.task)
        if key not in splits:  # every run of a comparison sees the same split
            splits[key] = load_dataset(config)
        result = train(config, store=store, name=label, group=comparison_id, progress=progress, save=save,
                       splits=splits[key])
        results.append(result)
        main = result.final.get("val_acc", result.final.get("val_rmse"))
        metric = "val acc" if result.task == "classification" else "val RMSE"
        echo(f"{label}: {metric} {main:.4g} ({result.final['wall_time_s']:.1f} s)")
    return results, splits


def run_comparison(configs: Sequence[ExperimentConfig], *, store=None, progress: bool = False,
                   save: str | None = None, comparison_id: str | None = None, echo: Callable[[str], None] | None = None,
                   coadaptation: bool = True, coadaptation_budget: float = COADAPTATION_BUDGET) -> Comparison:
    """Train every config, judge with the three-run rule and store the comparison; returns a :class:`Comparison`.

    The comparison row is stored before the optional co-adaptation measures run (each bounded by
    ``coadaptation_budget`` times its run's training time); a failure there is recorded in
    ``Comparison.errors`` and loses nothing.
    """
    from .distributed import launched_by_torchrun, setup
    from .tasks import task_of

    echo = echo or (lambda text: None)
    if configs and launched_by_torchrun() and not setup(configs[0].device).is_main:
        store, progress, echo = None, False, (lambda text: None)  # rank 0 writes and speaks for all
    comparison_id = comparison_id or _comparison_id()
    if any(c.device == "cpu" for c in configs):
        _warm_kernels(echo)
    labels = _unique_labels(configs)
    results, splits = _train_all(configs, labels, store, comparison_id, progress, save, echo)
    task = results[0].task
    summaries = [{"label": label, "run_id": r.run_id, **r.final, "history": r.history}
                 for label, r in zip(labels, results)]
    roles = assign_roles(configs)
    verdict = task_of(task).verdict(*(summaries[roles[role]] for role in ("baseline", "intended")),
                                    summaries[roles["reduced"]] if "reduced" in roles else None)
    if store is not None:
        store.save_comparison(comparison_id, {"runs": [c.to_dict() for c in configs], "roles": roles, "task": task},
                              verdict.as_dict(), None)
    comparison = Comparison(comparison_id, summaries, roles, verdict, task, list(configs), results)
    if coadaptation:
        try:
            _measure_coadaptation(comparison, next(iter(splits.values())), coadaptation_budget, echo)
        except Exception as error:  # optional: the comparison is stored and stays usable
            comparison.errors.append(f"co-adaptation measures failed: {type(error).__name__}: {error}")
    return comparison


def _measure_coadaptation(comparison: Comparison, splits, budget: float, echo) -> None:
    from .coadaptation import bounded_coadaptation

    for run, result in zip(comparison.runs, comparison.results):
        start = time.perf_counter()
        measures = bounded_coadaptation(result.model, splits, budget_s=budget * run["wall_time_s"],
                                        classification=comparison.task == "classification", seed=result.config.seed)
        run.update(measures, coadaptation_s=time.perf_counter() - start)
        if measures:
            echo(f"co-adaptation of {run['label']}: {run['coadaptation_s']:.1f} s")


def _config_for(model_fn, data, epochs: int | None, config: dict) -> ExperimentConfig:
    from .factories import register

    changes = dict(config)
    if model_fn is not None:
        changes["model"] = model_fn if isinstance(model_fn, str) else register(model_fn)
    if data is not None:
        if isinstance(data, (str, os.PathLike)):
            changes["dataset"] = str(data)
        elif callable(data):
            changes["dataset"] = register(data)
        else:  # (train, val) or (train, val, test) datasets handed over directly
            splits = tuple(data)
            changes["dataset"] = register(lambda: splits)
    if epochs is not None:
        changes["epochs"] = epochs
    return ExperimentConfig().replace(**changes)


def compare(model_fn: Callable | str | Sequence[ExperimentConfig] | None = None, data: Any = None,
            rates: Sequence[float | Sequence[float]] | None = None, epochs: int | None = 20, *,
            store=None, report: str | os.PathLike | None = None, progress: bool = False, coadaptation: bool = True,
            echo: Callable[[str], None] | None = None, **config: Any) -> Comparison:
    """Is dropout helping this model? Train it with dropout off, as built and halved; judge; return the result.

    Args:
        model_fn: a model factory (any callable declaring some of ``input_shape``, ``n_outputs`` and config
            fields such as ``width``), a spec (``"mlp"``, ``"my_model.py:build"``), or a list of
            :class:`~droplab.lab.config.ExperimentConfig` to run as given. Default: the built-in MLP.
        data: ``(train, val)`` or ``(train, val, test)`` map-style datasets of ``(x, y)``; a dataset factory;
            or a dataset name or path (``"mnist1d"``, ``"digits"``, ``"data.csv"``). Default: MNIST-1D.
        rates: None for the three default runs, else one run per entry: a number sets every dropout site,
            a list sets each site in :func:`droplab.sites` order. Default: None.
        epochs: epochs per run. Default: 20.
        store: a :class:`~droplab.lab.store.RunStore` or a path to one; None keeps nothing. Default: None.
        report: a directory to write the HTML report into, or None (call ``.report(path)`` later).
        progress: live progress bars. Default: False.
        coadaptation: measure co-adaptation (bounded to 10% of each run's training time). Default: True.
        echo: where one-line progress messages go (e.g. ``print``). Default: nowhere.
        **config: any :class:`~droplab.lab.config.ExperimentConfig` field (``lr``, ``batch_size``,
            ``task``, ``seed``, ``input_dropout``, ...).
    """
    if isinstance(model_fn, (list, tuple)) and all(isinstance(c, ExperimentConfig) for c in model_fn):
        configs = list(model_fn)
    else:
        base = _config_for(model_fn, data, epochs, config)
        configs = default_configs(base) if rates is None else rate_configs(base, rates)
    opened = None
    if isinstance(store, (str, os.PathLike)):
        from .store import RunStore

        store = opened = RunStore(store)
    try:
        result = run_comparison(configs, store=store, progress=progress, echo=echo, coadaptation=coadaptation)
    finally:
        if opened is not None:
            opened.close()
    if report is not None:
        result.report(Path(report) / result.id)
    return result
