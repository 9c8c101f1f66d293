"""Search dropout rates with Optuna, on one machine or many, and resume after a crash (``droplab sweep``).

The dropout rate is a hyper-parameter that needs validation-set tuning, often per layer, and it
interacts with learning rate, weight decay and batch size. A sweep searches any of

========================  ======================================================================
``dropout``               one rate for every site but the input site, in ``[0, max_rate]``
``layer_rates``           one rate per site but the input site (``rate_0``, ``rate_1``, ...; replaces
                          ``dropout``)
``input_dropout``         the input site's rate, in ``[0, 0.5]`` (the model gets an input site)
``schedule``              the schedule shape: constant, ramp (curriculum), early or late dropout
``lr``                    learning rate, log-uniform in ``[1e-4, 1e-2]``
``weight_decay``          weight decay, log-uniform in ``[1e-6, 1e-1]``
``batch_size``            one of 32, 64, 128, 256
========================  ======================================================================

each trial's proposal written into the config's one rate field, ``rates`` (one rate per site in
:func:`droplab.sites` order), minimizing the validation loss, with TPE (default), random search or a
grid, and prunes trials whose validation loss is worse than the median of earlier trials at the same
epoch (``MedianPruner``).

Storage is an Optuna ``RDBStorage``: a SQLite file by default (embedded, no set-up) or any SQLAlchemy
URL (``--storage postgresql://user:pw@host/db``) for a study shared by workers on many machines. The
sweep's definition (search space, base config, trial budget, sampler) lives in the study's user
attributes, so a worker needs only the study name and storage to join, and ``--resume NAME`` continues
a study exactly as it was defined. Each worker beats a heartbeat; a trial whose worker died (killed,
preempted) is marked failed once its heartbeat is older than the grace period and re-queued with the
same parameters (``RetryFailedTrialCallback``), so killing a worker loses no finished trial.

Every trial is also a run in the lab's run store (``--db``), named ``<study>#<trial>`` and linked to the
study, so ``droplab runs`` shows it with its curves.

.. warning::
    SQLite serializes writers; it is fine for the few workers of one machine, but for workers on many
    machines use a server database. Each worker limits torch to ``cores / workers`` threads, so N
    workers do not oversubscribe the CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import unicodedata
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import MissingFileError, TrainingDiverged, UserError

__all__ = ["SEARCHABLE", "SAMPLERS", "SweepSpec", "open_storage", "storage_url", "create_study", "load_spec",
           "suggest", "run_worker", "spawn_workers", "run_sweep", "retried_summary", "trial_counts", "SweepIncomplete",
           "DEFAULT_STORAGE", "existing_storage", "check_storage"]

SEARCHABLE = ("dropout", "layer_rates", "input_dropout", "schedule", "lr", "weight_decay", "batch_size")
SAMPLERS = ("tpe", "grid", "random")
SCHEDULE_SHAPES = ("constant", "ramp", "early", "late")
BATCH_SIZES = (32, 64, 128, 256)
DEFAULT_STORAGE = "droplab-sweeps.db"
_KNOWN_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql")
_SPEC_ATTR = "droplab_sweep"
_SURPLUS_ATTR = "droplab_surplus"
# the grid sampler's values for the dimensions that are continuous under TPE and random search
_GRID = {
    "input_dropout": [0.0, 0.1, 0.2],
    "lr": [5e-4, 2e-3, 5e-3],
    "weight_decay": [1e-5, 1e-3, 1e-1],
}


def _lab_extra(error: ModuleNotFoundError) -> ModuleNotFoundError:
    return ModuleNotFoundError(f"droplab sweep needs {error.name}: pip install \"droplab[lab]\"")


def _optuna():
    try:
        import optuna
    except ModuleNotFoundError as error:
        raise _lab_extra(error) from None
    return optuna


@dataclass
class SweepSpec:
    """What a study searches and how; stored in the study so every worker and ``--resume`` agree."""

    name: str
    base: dict[str, Any] = field(default_factory=dict)  # ExperimentConfig.to_dict() of the fixed knobs
    search: list[str] = field(default_factory=lambda: ["dropout"])
    trials: int = 20  # finished (complete or pruned) trials the study runs to
    sampler: str = "tpe"
    seed: int = 0
    max_rate: float = 0.8
    grid_rates: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    pruning: bool = True
    db: str = "droplab.db"  # the lab's run store every trial is written to
    sites: int | None = None  # the base model's dropout sites (None: counted by building it)

    def __post_init__(self) -> None:
        try:
            self._validate()
        except UserError:
            raise
        except (ValueError, TypeError) as error:  # the checks' wording, as the user's error
            raise UserError(str(error)) from None

    def _validate(self) -> None:
        from ..functional import check_probability

        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"study name must be a non-empty string, but got {self.name!r}")
        if any(unicodedata.category(c) == "Cc" for c in self.name):
            raise ValueError(f"study name must not contain control characters (it is shown on terminals and in "
                             f"reports), but got {self.name!r}")
        unknown = [s for s in self.search if s not in SEARCHABLE]
        if unknown or not self.search:
            raise ValueError(f"search must name one or more of {', '.join(SEARCHABLE)}, but got "
                             f"{','.join(self.search) or 'nothing'}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, but got {self.sampler!r}")
        if isinstance(self.trials, bool) or not isinstance(self.trials, int) or self.trials < 1:
            raise ValueError(f"trials must be a positive integer, but got {self.trials!r}")
        check_probability(self.max_rate, "max_rate")
        for rate in self.grid_rates:
            check_probability(rate, "grid rate")
        if not self.grid_rates:
            raise ValueError("grid_rates must list at least one rate")
        if self.sampler == "grid" and max(self.grid_rates) > self.max_rate:
            raise ValueError(f"grid_rates must not exceed max_rate ({self.max_rate}), but got {self.grid_rates}")
        self.config()  # the base config is valid (unknown keys, bad values) before any study is created

    def config(self):
        from .config import ExperimentConfig

        return ExperimentConfig.from_dict(self.base)

    def grid_space(self) -> dict[str, list]:
        """The grid sampler's search space: every combination is one trial."""
        depth = len(_hidden_rates(self)) if "layer_rates" in self.search else 0
        space: dict[str, list] = {}
        for dim in self.search:
            if dim == "dropout" and "layer_rates" not in self.search:
                space["dropout"] = list(self.grid_rates)
            elif dim == "layer_rates":
                space.update({f"rate_{i}": list(self.grid_rates) for i in range(depth)})
            elif dim == "schedule":
                space["schedule"] = list(SCHEDULE_SHAPES)
            elif dim == "batch_size":
                space["batch_size"] = list(BATCH_SIZES)
            elif dim in _GRID:
                space[dim] = list(_GRID[dim])
        return space

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SweepSpec:
        return cls(**json.loads(text))


# storage ------------------------------------------------------------------------------------------

def storage_url(storage: str | None) -> str:
    """A SQLAlchemy URL for ``storage``: a bare path means a SQLite file; ``postgresql://`` uses psycopg 3."""
    storage = storage or DEFAULT_STORAGE
    if "://" not in storage:
        return f"sqlite:///{os.path.abspath(storage)}"
    if storage.startswith(("postgresql://", "postgres://")):
        # SQLAlchemy's default PostgreSQL driver is psycopg2; droplab's postgres extra installs psycopg 3
        try:
            import psycopg2  # noqa: F401
        except ModuleNotFoundError:
            storage = "postgresql+psycopg://" + storage.split("://", 1)[1]
    return storage


def open_storage(storage: str | None, *, heartbeat_interval: int = 10, grace_period: int | None = None,
                 max_retry: int = 3):
    """An Optuna ``RDBStorage`` with a heartbeat, which fails and re-queues the trials of dead workers.

    Args:
        storage: a SQLAlchemy URL or a SQLite file path. Default: ``droplab-sweeps.db``.
        heartbeat_interval: seconds between a running trial's heartbeats. Default: 10.
        grace_period: seconds without a heartbeat after which a running trial counts as dead.
            Default: ``3 * heartbeat_interval``.
        max_retry: how many times one trial's parameters are retried. Default: 3.
    """
    optuna = _optuna()
    from optuna import storages

    if isinstance(heartbeat_interval, bool) or not isinstance(heartbeat_interval, int) or heartbeat_interval < 1:
        raise UserError(f"--heartbeat must be a positive integer (seconds), but got {heartbeat_interval!r}")
    if grace_period is not None and (isinstance(grace_period, bool) or grace_period < 1):
        raise UserError(f"--grace must be a positive integer (seconds), but got {grace_period!r}")
    url = check_storage(storage)
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # several worker processes write one file: wait for the lock instead of failing
        engine_kwargs["connect_args"] = {"timeout": 120}
    else:
        engine_kwargs["pool_pre_ping"] = True
    retry_cls = getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback
    callback_kw = ("heartbeat_stale_trial_callback" if hasattr(storages, "RetryHeartbeatStaleTrialCallback")
                   else "failed_trial_callback")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                                       grace_period=grace_period or 3 * heartbeat_interval,
                                       **{callback_kw: _StaleTrial(retry_cls(max_retry=max_retry))})
        except Exception as error:  # SQLAlchemy's and the drivers' errors share no base class worth naming
            problem = _storage_problem(storage or DEFAULT_STORAGE, error)
            if problem is None:
                raise
            raise UserError(problem) from None


def check_storage(storage: str | None) -> str:
    """The storage's URL, after the checks that need no connection (a directory, an unknown scheme)."""
    text = storage or DEFAULT_STORAGE
    if "://" not in text and os.path.isdir(text):
        raise UserError(f"--storage {text} is a directory; give a SQLite file such as "
                        f"{os.path.join(text, DEFAULT_STORAGE)} or a database URL")
    url = storage_url(text)
    scheme = url.split("://", 1)[0].split("+", 1)[0]
    if scheme not in _KNOWN_SCHEMES:
        raise UserError(f"--storage {text}: unknown database scheme {scheme!r}; use a SQLite file path or a URL "
                        "starting with " + ", ".join(f"{s}://" for s in _KNOWN_SCHEMES))
    return url


def _storage_problem(storage: str, error: Exception) -> str | None:
    """One line for a storage that cannot be opened (unreachable, refused, not a database); None for a bug."""
    name = type(error).__name__
    text = str(error).splitlines()[0] if str(error) else name
    if isinstance(error, ModuleNotFoundError) and error.name:
        return f"--storage {storage} needs the database driver {error.name}: pip install {error.name}"
    if isinstance(error, ImportError):  # optuna's wrapper around a missing driver
        scheme = storage.split("://", 1)[0]
        return f"--storage {scheme}://... needs a database driver that is not installed: {text}"
    if name in ("OperationalError", "DatabaseError", "InterfaceError", "ArgumentError", "NoSuchModuleError"):
        shown = storage.split("@", 1)[-1] if "@" in storage else storage  # never print a password
        return (f"--storage {shown} cannot be opened: {text} (is the server running and reachable, the URL right, "
                "and the file a database?)")
    return None


class _StaleTrial:
    """On a dead worker's trial: re-queue its parameters, and mark its lab run failed (SIGKILL left it running)."""

    def __init__(self, retry) -> None:
        self.retry = retry

    def __call__(self, study, trial) -> None:
        self.retry(study, trial)
        text = study.user_attrs.get(_SPEC_ATTR)
        db = SweepSpec.from_json(text).db if text else None
        if not db or not os.path.isfile(db):  # the run lives in another machine's store
            return
        from .store import RunStore

        with RunStore(db) as store:
            for run in store.list_runs(study=study.study_name, status="running"):
                if run["name"] == f"{study.study_name}#{trial.number}":
                    store.finish_run(run["id"], status="failed",
                                     error="the worker stopped beating its heartbeat (killed?); trial retried")


def create_study(spec: SweepSpec, storage):
    """Create the study for ``spec`` (an error if the name is taken: use ``--resume``)."""
    optuna = _optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(study_name=spec.name, storage=storage, direction="minimize",
                                    load_if_exists=False)
    except optuna.exceptions.DuplicatedStudyError:
        raise UserError(f"a study named {spec.name!r} already exists in this storage; continue it with "
                         f"--resume {spec.name} or choose another --name") from None
    study.set_user_attr(_SPEC_ATTR, spec.to_json())
    return study


def load_spec(name: str, storage) -> tuple[Any, SweepSpec]:
    """The study ``name`` and its :class:`SweepSpec`; ``ValueError`` if there is no such sweep."""
    optuna = _optuna()
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise UserError(f"no sweep named {name!r} in this storage; known: {', '.join(names) or 'none'}") from None
    text = study.user_attrs.get(_SPEC_ATTR)
    if text is None:
        raise UserError(f"study {name!r} was not created by droplab sweep (it has no sweep definition)")
    return study, SweepSpec.from_json(text)


def _sampler(spec: SweepSpec, worker_index: int):
    optuna = _optuna()
    seed = spec.seed + 1000 * worker_index  # workers must not propose the same points
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if spec.sampler == "grid":
            return optuna.samplers.GridSampler(spec.grid_space(), seed=seed)
        if spec.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(8, max(2, spec.trials // 3)),
                                          multivariate=True)


def _pruner(spec: SweepSpec):
    optuna = _optuna()
    if not spec.pruning:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(1, spec.config().epochs // 4))


# the search space --------------------------------------------------------------------------------

def _as_built_rates(config, sites: int | None = None) -> list[float]:
    """The rate of each site of ``config``'s model (its ``rates``, one per site, or as built)."""
    from .build import build_model, site_rates
    from .preflight import check_datasets, dataset_key
    from .tasks import task_of

    if config.rates is not None and (len(config.rates) > 1 or sites is not None):
        return site_rates(len(config.rates) if sites is None else sites, config)
    key = json.dumps(config.to_dict(), sort_keys=True, default=str)
    if key not in _SITE_RATES:  # one build per base config and process (a user's factory needs the data's shape)
        splits = check_datasets([config])[dataset_key(config)]
        model = build_model(config.replace(rates=None), splits.input_shape,
                            task_of(splits.task).output_size(splits.n_outputs, config.nll_head))
        _SITE_RATES[key] = site_rates(model, config)
    return list(_SITE_RATES[key])


_SITE_RATES: dict[str, list[float]] = {}


def _hidden_rates(spec: SweepSpec) -> list[float]:
    """The base config's rates of the sites the ``dropout``/``layer_rates`` dimensions search (all but the input)."""
    base = spec.config()
    rates = _as_built_rates(base, spec.sites)
    return rates[1:] if base.input_site else rates


def _suggest_rates(trial, spec: SweepSpec) -> dict[str, Any]:
    """``rates`` (and ``input_site``) for the searched rate dimensions: one rate per site, the input site first."""
    base = spec.config()
    searched = [dim for dim in ("dropout", "layer_rates", "input_dropout") if dim in spec.search]
    if not searched:
        return {}
    hidden = _hidden_rates(spec)
    if "layer_rates" in spec.search:
        hidden = [trial.suggest_float(f"rate_{i}", 0.0, spec.max_rate) for i in range(len(hidden))]
    elif "dropout" in spec.search:
        hidden = [trial.suggest_float("dropout", 0.0, spec.max_rate)] * len(hidden)
    changes: dict[str, Any] = {}
    if "input_dropout" in spec.search:
        changes["input_site"] = True
        first = [trial.suggest_float("input_dropout", 0.0, 0.5)]
    else:
        first = _as_built_rates(base, spec.sites)[:1] if base.input_site else []
    rates = first + hidden
    changes["rates"] = rates[:1] if rates and all(r == rates[0] for r in rates) else rates
    return changes


def suggest(trial, spec: SweepSpec) -> dict[str, Any]:
    """The config changes ``trial`` proposes for the dimensions in ``spec.search`` (rates as ``rates``)."""
    base = spec.config()
    grid = spec.sampler == "grid"
    changes = _suggest_rates(trial, spec)
    if "schedule" in spec.search:
        shape = trial.suggest_categorical("schedule", list(SCHEDULE_SHAPES))
        # the switch point: searched under TPE/random, half the epochs on a grid (no conditional grid axes)
        at = 0.5 if grid or shape == "constant" else trial.suggest_float("schedule_at", 0.1, 0.9)
        changes["schedule"] = None if shape == "constant" else f"{shape}:{max(1, round(at * base.epochs))}"
    if "lr" in spec.search:
        changes["lr"] = trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    if "weight_decay" in spec.search:
        changes["weight_decay"] = trial.suggest_float("weight_decay", 1e-6, 1e-1, log=True)
    if "batch_size" in spec.search:
        changes["batch_size"] = int(trial.suggest_categorical("batch_size", list(BATCH_SIZES)))
    return changes


def _objective(spec: SweepSpec, store, ctx=None):
    """Train the trial's config and return its best validation loss; under torchrun, lead the other ranks.

    With several ranks (``ctx``), rank 0 runs Optuna and broadcasts each trial's config and each epoch's
    pruning decision; :func:`_follow` on the other ranks trains the same config in lockstep.
    """
    optuna = _optuna()
    from .distributed import broadcast_object
    from .trainer import train

    base = spec.config()
    lead = ctx is not None and ctx.distributed

    def objective(trial) -> float:
        trial.set_user_attr("pid", os.getpid())
        changes = suggest(trial, spec)
        config = base.replace(**changes, name=f"{spec.name}#{trial.number}")
        trial.set_user_attr("config", config.to_dict())
        if lead:
            broadcast_object(config.to_dict(), ctx)

        def on_epoch(epoch: int, metrics: dict) -> None:
            trial.report(float(metrics["val_loss"]), epoch)
            prune = trial.should_prune()
            if lead:
                broadcast_object(prune, ctx)
            if prune:
                raise optuna.TrialPruned(f"validation loss {metrics['val_loss']:.4f} at epoch {epoch} is worse than "
                                         "the median of earlier trials")

        # train() stores a pruned run as "pruned" and re-raises TrialPruned, which Optuna records
        result = train(config, store=store, name=config.name, study=spec.name, on_epoch=on_epoch, progress=False)
        final = {k: v for k, v in result.final.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        trial.set_user_attr("run_id", result.run_id)
        trial.set_user_attr("final", final)
        if getattr(result, "status", "finished") == "pruned":
            raise optuna.TrialPruned("pruned during training")
        return float(final.get("best_val_loss", final["val_loss"]))

    return objective


def _follow(ctx) -> int:
    """A non-zero rank under torchrun: train each config rank 0 broadcasts until it sends ``None``."""
    optuna = _optuna()
    from .config import ExperimentConfig
    from .distributed import broadcast_object
    from .trainer import train

    def on_epoch(epoch: int, metrics: dict) -> None:
        if broadcast_object(None, ctx):
            raise optuna.TrialPruned()

    ran = 0
    while (message := broadcast_object(None, ctx)) is not None:
        config = ExperimentConfig.from_dict(message)
        try:
            train(config, store=None, name=config.name, on_epoch=on_epoch, progress=False)
        except optuna.TrialPruned:
            pass
        ran += 1
    return ran


def trial_counts(study) -> dict[str, int]:
    """Trials by state; a surplus trial (started in a race for the last slot, never trained) is not counted."""
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        if not t.user_attrs.get(_SURPLUS_ATTR):
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


class _Surplus(Exception):
    """Raised inside a trial that another worker's trial already made unnecessary (the study is full)."""


def _claims_a_slot(study, trial, target: int) -> bool:
    """Whether ``trial`` is among the first ``target`` live trials (finished or running) by trial number.

    Trial numbers are assigned in one storage transaction, so every worker agrees on this order: of two
    workers that start "the last" trial at the same moment, exactly one trains it.
    """
    from optuna.trial import TrialState

    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    ahead = sum(1 for t in study.get_trials(deepcopy=False, states=live)
                if t.number < trial.number and not t.user_attrs.get(_SURPLUS_ATTR))
    return ahead < target


def _guarded(objective, study, target: int):
    """``objective``, first checking the trial still has a slot; a surplus trial fails at once, untrained."""
    def guarded(trial):
        if not _claims_a_slot(study, trial, target):
            trial.set_user_attr(_SURPLUS_ATTR, True)
            raise _Surplus(f"trial {trial.number} not needed: the study reached {target} trials")
        return objective(trial)

    return guarded


def _finished(study) -> int:
    counts = trial_counts(study)
    return counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)


def run_worker(name: str, storage: str | None = None, *, worker_index: int = 0, threads: int | None = None,
               heartbeat_interval: int = 10, grace_period: int | None = None, objective=None) -> int:
    """Run trials of study ``name`` until it has ``spec.trials`` finished trials.

    Returns the number of trials the study gained while this worker optimized (0 if it was done).

    Before leaving, the worker waits for trials still running elsewhere: a live worker finishes its
    trial; a dead one's trial goes stale, is failed by the heartbeat check and re-queued, and this
    worker runs the retry. So the study is complete when the last worker returns.
    """
    import torch

    from .distributed import broadcast_object, launched_by_torchrun, setup

    _optuna()

    if threads:
        torch.set_num_threads(threads)
    # under torchrun every trial trains data-parallel: rank 0 drives Optuna, the other ranks follow it
    ctx = setup() if launched_by_torchrun() else None
    if ctx is not None and not ctx.is_main:
        return _follow(ctx)
    try:
        return _lead(name, storage, worker_index, heartbeat_interval, grace_period, objective, ctx)
    finally:
        if ctx is not None:
            broadcast_object(None, ctx)  # releases the followers


def _lead(name, storage, worker_index, heartbeat_interval, grace_period, objective, ctx) -> int:
    optuna = _optuna()
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    rdb = open_storage(storage, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    _, spec = load_spec(name, rdb)
    study = optuna.load_study(study_name=name, storage=rdb, sampler=_sampler(spec, worker_index),
                              pruner=_pruner(spec))
    if objective is None:
        from .store import RunStore

        objective = _objective(spec, RunStore(spec.db), ctx)
    ran = 0
    guarded = _guarded(objective, study, spec.trials)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        while True:
            fail_stale_trials(study)
            running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
            # running trials hold their slots: a worker starts a trial only for a slot nobody is filling
            if spec.trials - _finished(study) - running > 0:
                before = len(study.get_trials(deepcopy=False))
                # one trial at a time, re-counting in between; retries (WAITING) are popped first
                # a diverged trial (NaN loss at some lr) fails alone; the sweep goes on without it
                study.optimize(guarded, n_trials=1, gc_after_trial=False, catch=(_Surplus, TrainingDiverged))
                ran += len(study.get_trials(deepcopy=False)) - before
                if (spec.sampler == "grid" and study.sampler.is_exhausted(study)
                        and not study.get_trials(deepcopy=False, states=(TrialState.WAITING,))):
                    break
                continue
            if not running:
                return ran
            time.sleep(min(1.0, heartbeat_interval))  # poll briskly: the last trial's end is the sweep's end
    return ran


def _worker_command(name: str, storage: str, index: int, threads: int, heartbeat_interval: int,
                    grace_period: int | None) -> list[str]:
    command = [sys.executable, "-m", "droplab.cli", "sweep", "--worker", "--name", name, "--storage", storage,
               "--worker-index", str(index), "--threads", str(threads), "--heartbeat", str(heartbeat_interval)]
    if grace_period:
        command += ["--grace", str(grace_period)]
    return command


def spawn_workers(name: str, storage: str | None, workers: int, *, threads: int | None = None,
                  heartbeat_interval: int = 10, grace_period: int | None = None,
                  **popen_kwargs) -> list[subprocess.Popen]:
    """Start ``workers`` processes of ``droplab sweep --worker`` on study ``name``."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = threads or max(1, cores // workers)
    url = storage_url(storage)
    # the workers import this droplab, installed or not
    env = dict(popen_kwargs.pop("env", None) or os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["OMP_NUM_THREADS"] = str(threads)  # BLAS pools too, not only torch's intra-op threads
    return [subprocess.Popen(_worker_command(name, url, i, threads, heartbeat_interval, grace_period), env=env,
                             **popen_kwargs) for i in range(workers)]


def run_sweep(spec: SweepSpec | None, storage: str | None = None, *, workers: int = 1, resume: str | None = None,
              trials: int | None = None, heartbeat_interval: int = 10, grace_period: int | None = None,
              objective=None) -> Any:
    """Create (or, with ``resume``, continue) a sweep and run it with ``workers`` processes; returns the study.

    ``objective`` replaces the training objective of an in-process (``workers=1``) sweep.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UserError(f"--workers must be a positive integer, but got {workers!r}")
    from .distributed import broadcast_object, launched_by_torchrun, setup

    ctx = setup() if launched_by_torchrun() else None
    if ctx is not None and workers != 1:
        raise ValueError("--workers starts processes on this machine; under torchrun the ranks are one "
                         "data-parallel worker: use --workers 1 (start more torchrun jobs to add workers)")
    if ctx is not None and not ctx.is_main:
        error = broadcast_object(None, ctx)  # rank 0 creates or loads the study
        if error:
            raise UserError(error)
        run_worker("", storage)
        return None
    _optuna().logging.set_verbosity(_optuna().logging.WARNING)
    try:
        rdb = open_storage(storage, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
        if resume:
            study, spec = load_spec(resume, rdb)
            if trials is not None and trials != spec.trials:
                if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
                    raise UserError(f"--trials must be a positive integer, but got {trials!r}")
                spec.trials = trials
                study.set_user_attr(_SPEC_ATTR, spec.to_json())
        else:
            study = create_study(spec, rdb)
    except ValueError as error:
        if ctx is not None:
            broadcast_object(str(error), ctx)
        raise
    if ctx is not None:
        broadcast_object("", ctx)
    if workers == 1:
        run_worker(spec.name, storage, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                   objective=objective)
        return study
    procs = spawn_workers(spec.name, storage, workers, heartbeat_interval=heartbeat_interval,
                          grace_period=grace_period)
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise
    failed = [(i, c) for i, c in enumerate(codes) if c != 0]
    if failed:
        lost = ", ".join(f"#{i} ({_exit_words(c)})" for i, c in failed)
        if _finished(study) < spec.trials:
            raise SweepIncomplete(f"sweep {spec.name} stopped with {_finished(study)} of {spec.trials} trials "
                                  f"finished: worker(s) {lost} exited; finished trials are kept: "
                                  f"droplab sweep --resume {spec.name}")
        # the others re-ran what the lost workers left: the study is complete
        print(f"droplab sweep: worker(s) {lost} exited; " + retried_summary(study), file=sys.stderr)
    return study


class SweepIncomplete(RuntimeError):
    """Workers exited before the study reached its trial budget (the finished trials are stored)."""


def _exit_words(code: int) -> str:
    import signal

    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


def retried_summary(study) -> str:
    """``"trial 3 was retried as trial 5 (complete)"`` for every retried trial, or a note that none was."""
    retries = [(t.system_attrs.get("failed_trial"), t) for t in study.get_trials(deepcopy=False)
               if t.system_attrs.get("failed_trial") is not None]
    if not retries:
        return "no trial needed a retry"
    return "; ".join(f"trial {orig} was retried as trial {t.number} ({t.state.name.lower()})" for orig, t in retries)


def existing_storage(storage: str | None, purpose: str) -> None:
    """A SQLite storage that should already hold the study exists (opening would silently create an empty one)."""
    text = storage or DEFAULT_STORAGE
    if "://" not in text and not os.path.isfile(text):
        raise MissingFileError(f"no sweep storage at {text} to {purpose} (pass the --storage the sweep was created "
                               "with)")
