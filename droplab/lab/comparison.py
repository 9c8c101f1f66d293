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

from .config import ExperimentConfig, rates_text

__all__ = ["compare", "Comparison", "run_comparison", "plan", "default_configs", "rate_configs", "assign_roles",
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


def default_configs(base: ExperimentConfig, as_built: Sequence[float]) -> list[ExperimentConfig]:
    """The three default runs, one rate per site: every site off, ``as_built`` (the base's rates), halved."""
    rates = [float(r) for r in as_built]
    return [base.replace(rates=[0.0] * len(rates), name=base.name or "off (p=0)"),
            base.replace(rates=rates, name=base.name or "as built"),
            base.replace(rates=[r / 2 for r in rates], name=base.name or "halved")]


def rate_configs(base: ExperimentConfig, rates: Sequence[float | Sequence[float]]) -> list[ExperimentConfig]:
    """One run per entry: a number sets every site, a list sets each site (``droplab.sites`` order)."""
    if len(rates) < 2:
        raise ValueError(f"rates needs at least two entries to compare (e.g. [0, 0.5]), but got {list(rates)}")
    configs = []
    for rate in rates:
        values = [float(r) for r in rate] if isinstance(rate, (list, tuple)) else [float(rate)]
        suffix = f", {base.schedule}" if base.schedule else ""
        configs.append(base.replace(rates=values, name=base.name or rates_text(values) + suffix))
    return configs


def plan(base: ExperimentConfig, rates: Sequence[float | Sequence[float]] | None = None, *, prepared=None
         ) -> list[ExperimentConfig]:
    """The runs of a comparison of ``base``, each with one rate per site of its model: what will train.

    Without ``rates``: off, as built (``base.rates``, or the model's own) and halved; else one run per
    entry of ``rates``. ``prepared`` (:func:`droplab.lab.preflight.check_before_training` of ``[base]``)
    knows the model's sites; None checks and builds it here.

    Raises:
        UserError: the model has no dropout site, or per-site rates do not match its sites.
    """
    from .preflight import check_before_training

    if prepared is None:
        prepared = check_before_training([base], command="compare")
    configs = default_configs(base, prepared.rates_for(base)) if rates is None else rate_configs(base, rates)
    return [prepared.resolve(config) for config in configs]


def _strength(config: ExperimentConfig) -> float:
    """How much dropout a run has: its mean rate (a run as built, ``rates`` None, counts as 1)."""
    return sum(config.rates) / len(config.rates) if config.rates else 1.0


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
    from .files import terminal_safe

    labels, seen = [], {}
    for config in configs:
        label = terminal_safe(config.label())  # a label reaches tables, the verdict and terminals
        seen[label] = seen.get(label, 0) + 1
        labels.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return labels


def _shared_config(configs: Sequence[ExperimentConfig]) -> dict:
    """The config keys every run shares (the per-run rates are in the table), as the factory took them."""
    from .build import applied_config

    dicts = [applied_config(c) for c in configs]
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


def _train_all(configs, labels, prepared, store, comparison_id, progress, save, echo) -> list:
    from .trainer import train

    results = []
    for config, label in zip(configs, labels):  # every run sees the same split and the model preflight built
        result = train(config, store=store, name=label, group=comparison_id, progress=progress, save=save,
                       splits=prepared.splits_for(config), model=prepared.model_for(config))
        results.append(result)
        main = result.final.get("val_acc", result.final.get("val_rmse"))
        metric = "val acc" if result.task == "classification" else "val RMSE"
        echo(f"{label}: {metric} {main:.4g} ({result.final['wall_time_s']:.1f} s)")
    return results


def run_comparison(configs: Sequence[ExperimentConfig], *, prepared=None, store=None, progress: bool = False,
                   save: str | None = None, comparison_id: str | None = None, echo: Callable[[str], None] | None = None,
                   coadaptation: bool = True, coadaptation_budget: float = COADAPTATION_BUDGET,
                   report_dir: str | os.PathLike | None = None) -> Comparison:
    """Train every config, judge with the three-run rule, store the comparison; returns a :class:`Comparison`.

    Args:
        configs: the runs (e.g. from :func:`plan`); each config's ``rates`` are resolved to one per site.
        prepared: what :func:`droplab.lab.preflight.check_before_training` loaded and built for ``configs``:
            the runs reuse its data and models. None runs the checks here. Default: None.
        store: the run store, or None. Default: None.
        report_dir: write the HTML report into ``report_dir/<comparison id>/``. Default: None (no report).
        coadaptation_budget: each run's co-adaptation measures may take this share of its training time.

    The comparison row is stored once, after the runs and before anything optional (the co-adaptation
    measures, the report), with the report's path when one is asked for; a failure of an optional part
    is recorded in ``Comparison.errors`` and loses nothing.
    """
    from .distributed import launched_by_torchrun, setup
    from .preflight import check_before_training
    from .tasks import task_of

    echo = echo or (lambda text: None)
    if configs and launched_by_torchrun() and not setup(configs[0].device).is_main:
        store, progress, echo = None, False, (lambda text: None)  # rank 0 writes and speaks for all
    prepared = prepared if prepared is not None else check_before_training(configs, command="compare")
    configs = [prepared.resolve(config) for config in configs]
    comparison_id = comparison_id or _comparison_id()
    page = _report_page(report_dir, comparison_id)
    if any(c.device == "cpu" for c in configs):
        _warm_kernels(echo)
    labels = _unique_labels(configs)
    results = _train_all(configs, labels, prepared, store, comparison_id, progress, save, echo)
    task = results[0].task
    summaries = [{"label": label, "run_id": r.run_id, **r.final, "history": r.history}
                 for label, r in zip(labels, results)]
    roles = assign_roles(configs)
    verdict = task_of(task).verdict(*(summaries[roles[role]] for role in ("baseline", "intended")),
                                    summaries[roles["reduced"]] if "reduced" in roles else None)
    if store is not None:
        from .build import applied_config

        store.save_comparison(comparison_id, {"runs": [applied_config(c) for c in configs], "roles": roles,
                                              "task": task}, verdict.as_dict(), str(page) if page else None)
    comparison = Comparison(comparison_id, summaries, roles, verdict, task, list(configs), results)
    _optional_parts(comparison, prepared, page, coadaptation, coadaptation_budget, echo)
    return comparison


def _report_page(report_dir, comparison_id: str) -> Path | None:
    """Where the report goes: ``report_dir/<id>/index.html`` (one confined path component), or None."""
    if report_dir is None:
        return None
    from .files import confined_path

    return confined_path(report_dir, comparison_id) / "index.html"


def _optional_parts(comparison: Comparison, prepared, page: Path | None, coadaptation: bool, budget: float,
                    echo) -> None:
    """The co-adaptation measures and the report: each failure is one line in ``comparison.errors``."""
    if coadaptation:
        try:
            _measure_coadaptation(comparison, prepared.splits_for(comparison.configs[0]), budget, echo)
        except Exception as error:  # optional: the comparison is stored and stays usable
            comparison.errors.append(f"co-adaptation measures failed: {type(error).__name__}: {error}")
    if page is not None:
        try:
            comparison.report(page.parent)
        except Exception as error:
            comparison.errors.append(f"the report could not be written ({type(error).__name__}: {error})")


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
            ``task``, ``seed``, ``input_site``, ``rates``, ...).
    """
    from .preflight import check_before_training

    if isinstance(model_fn, (list, tuple)) and all(isinstance(c, ExperimentConfig) for c in model_fn):
        configs = list(model_fn)
        prepared = check_before_training(configs, command="compare")
    else:
        base = _config_for(model_fn, data, epochs, config)
        prepared = check_before_training([base], command="compare")
        configs = plan(base, rates, prepared=prepared)
    opened = None
    if isinstance(store, (str, os.PathLike)):
        from .store import RunStore

        store = opened = RunStore(store)
    try:
        return run_comparison(configs, prepared=prepared, store=store, progress=progress, echo=echo,
                              coadaptation=coadaptation, report_dir=report)
    finally:
        if opened is not None:
            opened.close()
