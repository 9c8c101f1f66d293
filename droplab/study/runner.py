"""Run the study: baselines, per-arm tuning, the pilot's power analysis, the confirmatory seeds, the verdicts.

The work is a list of *units*, each one training (one arm of one claim on one seed with one candidate, or one
baseline run), executed in worker processes two at a time (``jobs``) or in this process (``jobs=1``):

1. the baselines (:mod:`.baselines`);
2. tuning: every candidate of every arm on the tier's tuning seeds; each arm keeps the candidate with the best
   mean validation score (:attr:`ClaimResult.chosen`);
3. the pilot: the claim's effects at the chosen candidates on the tuning seeds give each primary effect's
   standard deviation, and the power analysis the seeds it needs (:mod:`.stats`), within the tier's range and
   budget (:mod:`.plan`);
4. the confirmatory seeds (never a tuning seed): every arm with its chosen candidate;
5. the verdicts (:func:`.analysis.judge_study`): each primary effect's difference test and TOST, adjusted (Holm or
   Benjamini-Hochberg) across all primary effects of the study, then :func:`.stats.judge`.

Every unit is stored in the run store (``study = "study/<claim>"``, the group the study id).
"""

from __future__ import annotations

import json
import math
import os
import time
import traceback
from collections.abc import Callable

from .analysis import choose, judge_study, measure_seed, pilot, plan_seeds
from .claim import Claim
from .plan import TIERS, Tier, confirm_seeds, fit_budget, planned_cpu
from .records import ClaimResult, Study, Unit

__all__ = ["execute", "run_study", "Pool"]


def _finite(value, where: str):
    """``value`` with every float checked finite (raw results must be strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} holds a non-finite number ({value}); results must be finite")
    if isinstance(value, dict):
        return {str(k): _finite(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def execute(unit: Unit) -> dict:
    """Run one unit; returns ``{"raw", "wall", "cpu"}`` or ``{"error", "wall", "cpu"}`` (the traceback)."""
    start, cpu = time.perf_counter(), time.process_time()
    try:
        if unit.kind == "baseline":
            from .baselines import run_baseline

            raw = run_baseline(unit.name, unit.seed, unit.tier)
        else:
            from .registry import by_name

            claim = by_name(unit.name)
            hp = claim.arm(unit.arm).candidates[unit.candidate]
            raw = claim.run(claim.settings(unit.tier), unit.arm, unit.seed, dict(hp))
            if "val_score" not in raw:
                raise KeyError(f"claim {unit.name} arm {unit.arm}: run() must return a 'val_score'")
        raw = _finite(json.loads(json.dumps(raw)), f"{unit.name}/{unit.arm}")
        out = {"raw": raw}
    except Exception:  # one broken unit must not lose the study: its claim is reported as failed
        out = {"error": traceback.format_exc()}
    return {**out, "wall": time.perf_counter() - start, "cpu": time.process_time() - cpu}


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


class Pool:
    """Runs units in ``jobs`` spawned worker processes (in this process when ``jobs == 1``)."""

    def __init__(self, jobs: int, threads: int = 1) -> None:
        self.jobs, self.threads, self.executor = jobs, threads, None
        if jobs <= 1:
            _init_worker(threads)
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self.executor = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_init_worker, initargs=(threads,))

    def map(self, units: list[Unit], done: Callable[[Unit, dict], None]) -> None:
        if self.executor is None:
            for unit in units:
                done(unit, execute(unit))
            return
        from concurrent.futures import as_completed

        futures = {self.executor.submit(execute, unit): unit for unit in units}
        try:
            for future in as_completed(futures):
                done(futures[future], future.result())
        except BaseException:
            for future in futures:
                future.cancel()
            raise

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)


def _load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


class _Runner:
    """The phases of :func:`run_study` over one worker pool."""

    def __init__(self, study: Study, pool: Pool, store, echo) -> None:
        self.study, self.pool, self.store, self.echo = study, pool, store, echo
        self.by_name = {r.claim.name: r for r in study.results}
        self.baseline_runs: dict[str, list[dict]] = {}
        self.cpu = 0.0  #: CPU seconds of every unit so far (about the idle wall time of one worker)

    def _store(self, unit: Unit, out: dict) -> None:
        if self.store is None:
            return
        config = {"unit": unit.__dict__, "hp": (self.by_name[unit.name].candidate(unit.arm)
                                                if unit.kind == "arm" and unit.phase == "confirm" else None)}
        run_id = self.store.start_run(config, name=f"{unit.name} {unit.arm} seed {unit.seed} ({unit.phase})",
                                      seed=unit.seed, group=self.study.id, study=f"study/{unit.name}")
        if "error" in out:
            self.store.finish_run(run_id, status="failed", error=out["error"], wall_time_s=out["wall"])
        else:
            self.store.finish_run(run_id, {"raw": out["raw"], "cpu_s": out["cpu"]}, wall_time_s=out["wall"])

    def _done(self, unit: Unit, out: dict) -> None:
        self.cpu += out["cpu"]
        self._store(unit, out)
        if unit.kind == "baseline":
            if "error" in out:
                self.echo(f"  baseline {unit.name} seed {unit.seed} FAILED:\n{out['error']}")
                return
            self.baseline_runs.setdefault(unit.name, []).append(out["raw"])
            self.echo(f"  baseline {unit.name} seed {unit.seed}: {out['raw']['value']:.4f} "
                      f"({out['cpu']:.0f} s CPU)")
            return
        result = self.by_name[unit.name]
        result.wall += out["wall"]
        result.cpu += out["cpu"]
        if "error" in out:
            result.errors.append(f"{unit.arm} seed {unit.seed} ({unit.phase}):\n{out['error']}")
            self.echo(f"  {unit.name} {unit.arm} seed {unit.seed} FAILED:\n{out['error']}")
            return
        raw = out["raw"]
        if unit.phase == "tune":
            result.raws_tune[(unit.arm, unit.candidate, unit.seed)] = raw
            result.unit_cpu[(unit.arm, unit.candidate, unit.seed)] = out["cpu"]
            result.tuning.setdefault(unit.arm, {}).setdefault(unit.candidate, []).append(float(raw["val_score"]))
        else:
            result.raws.setdefault(unit.seed, {})[unit.arm] = raw
        self.echo(f"  {unit.name} {unit.arm} seed {unit.seed} ({unit.phase}, candidate {unit.candidate}): "
                  f"val {raw['val_score']:.4f}, {raw.get('epochs_run', '-')} epochs, {out['cpu']:.1f} s CPU")

    def baselines(self, names: list[str]) -> None:
        from .baselines import judge_baselines

        units = [Unit("baseline", name, seed, "baseline", self.study.tier.name)
                 for seed in self.study.tier.baseline_seeds for name in names]
        self.pool.map(units, self._done)
        self.study.baselines = judge_baselines(self.baseline_runs, self.study.tier.judged)

    def tune(self) -> None:
        tier = self.study.tier
        units = [Unit("arm", r.claim.name, seed, "tune", tier.name, arm.name, c)
                 for seed in tier.tuning_seeds for r in self.study.results if not r.errors
                 for arm in r.claim.arms for c in range(len(arm.candidates))]
        self.pool.map(units, self._done)
        for result in self.study.results:
            if result.errors:
                continue
            choose(result)
            try:
                pilot(result, tier)
            except Exception:
                result.errors.append("pilot measure:\n" + traceback.format_exc())

    def confirm(self, counts: dict[str, int]) -> None:
        units = []
        for result in self.study.results:
            if result.errors:
                continue
            result.seeds = confirm_seeds(counts[result.claim.name])
            units += [Unit("arm", result.claim.name, seed, "confirm", self.study.tier.name, arm.name,
                           result.chosen.get(arm.name, 0)) for arm in result.claim.arms for seed in result.seeds]
        units.sort(key=lambda u: (u.seed, u.name, u.arm))
        self.pool.map(units, self._done)
        for result in self.study.results:
            if result.errors:
                continue
            try:
                result.per_seed = [measure_seed(result.claim, result.settings, result.raws[seed])
                                   for seed in result.seeds]
                if result.claim.checks is not None:
                    checks = result.claim.checks([result.raws[seed] for seed in result.seeds], result.settings)
                    result.checks = {k: {"passed": bool(ok), "detail": str(d)} for k, (ok, d) in checks.items()}
            except Exception:
                result.errors.append("measure:\n" + traceback.format_exc())


def _primary_count(results: list[ClaimResult]) -> int:
    return sum(1 for r in results for e in r.claim.effects if e.primary)


def _counts(runner: _Runner, tier: Tier, seeds: int | None, echo) -> dict[str, int]:
    results = [r for r in runner.study.results if not r.errors]
    if not tier.tuning_seeds:
        return {r.claim.name: seeds or 1 for r in results}
    m = _primary_count(runner.study.results)
    wanted = {r.claim.name: plan_seeds(r, tier, m, seeds) for r in results}
    costs = {r.claim.name: _costs(r, tier) for r in results}
    # 90% of the budget: the workers idle while the last long units finish, and the main process has its own work
    budget = 0.9 * tier.budget_minutes * 60 * runner.pool.jobs - runner.cpu
    counts = wanted if seeds is not None else fit_budget(wanted, costs, tier.min_seeds, budget)
    for r in results:
        name = r.claim.name
        r.cpu_per_seed = sum(seconds for _, seconds in costs[name])
        cut = "" if counts[name] == wanted[name] else f", cut to {counts[name]} by the time budget"
        echo(f"  {name}: the power analysis asks for {r.n_required} seeds; running {wanted[name]}{cut} "
             f"(about {r.cpu_per_seed:.0f} s CPU per seed, runs shared with other claims included)")
    echo(f"  planned: {planned_cpu(counts, costs) / 60 / runner.pool.jobs:.1f} min for the confirmatory seeds "
         f"on an idle machine, after {runner.cpu / 60 / runner.pool.jobs:.1f} min of baselines and tuning")
    return counts


def run_study(claims: list[Claim], tier: str = "default", *, jobs: int | None = None, threads: int = 1,
              seeds: int | None = None, store=None, adjust: str = "holm", echo=print,
              study_id: str | None = None) -> Study:
    """Run ``claims`` in ``tier`` (see :mod:`.plan`) and judge them; returns the :class:`Study`."""
    import datetime
    import tempfile

    from .stats import ADJUSTMENTS
    from .training import CACHE_ENV

    if tier not in TIERS:
        raise ValueError(f"tier must be one of {', '.join(TIERS)}, but got {tier!r}")
    if adjust not in ADJUSTMENTS:
        raise ValueError(f"adjust must be one of {', '.join(ADJUSTMENTS)}, but got {adjust!r}")
    plan = TIERS[tier]
    now = datetime.datetime.now(datetime.timezone.utc)
    study = Study(study_id or "study-" + now.strftime("%Y%m%d-%H%M%S-") + os.urandom(2).hex(), plan, adjust,
                  [ClaimResult(claim, claim.settings(tier)) for claim in claims])
    study.meta = {"date": now.strftime("%Y-%m-%d %H:%M UTC"), "load_before": _load_average(),
                  "jobs": jobs or plan.jobs, "threads": threads, "cpu_count": os.cpu_count()}
    start = time.perf_counter()
    previous = os.environ.get(CACHE_ENV)
    with tempfile.TemporaryDirectory(prefix="droplab-study-") as cache:
        os.environ[CACHE_ENV] = cache  # spawned workers inherit it: one claim's run serves the others
        pool = Pool(jobs or plan.jobs, threads)
        try:
            _phases(study, _Runner(study, pool, store, echo), claims, seeds, echo)
        finally:
            pool.close()
            if previous is None:
                os.environ.pop(CACHE_ENV, None)
            else:
                os.environ[CACHE_ENV] = previous
    study.meta.update(total_seconds=time.perf_counter() - start, load_after=_load_average())
    judge_study(study)
    return study


def _needed_baselines(claims: list[Claim]) -> list[str]:
    """The baselines the claims rely on; the MNIST-1D paper's whole table as soon as one of its rows is needed."""
    from .baselines import BASELINES

    named = {name for claim in claims for name in claim.baselines}
    if any(name.startswith("mnist1d-") for name in named):
        named |= {name for name in BASELINES if name.startswith("mnist1d-")}
    return [name for name in BASELINES if name in named]


def _phases(study: Study, runner: _Runner, claims: list[Claim], seeds: int | None, echo) -> None:
    plan = study.tier
    echo(f"baselines (seeds {', '.join(map(str, plan.baseline_seeds))}):")
    runner.baselines(_needed_baselines(claims))
    if plan.tuning_seeds:
        echo(f"tuning every arm on seeds {', '.join(map(str, plan.tuning_seeds))}:")
        runner.tune()
        for result in study.results:
            chosen = [(a.name, result.chosen.get(a.name, 0)) for a in result.claim.arms]
            echo(f"  {result.claim.name}: chosen " + ", ".join(f"{arm} {result.candidate(arm)}" for arm, _ in chosen))
    echo("confirmatory seeds:")
    runner.confirm(_counts(runner, plan, seeds, echo))
    study.meta["cpu_seconds"] = runner.cpu


def _costs(result: ClaimResult, tier: Tier) -> list[tuple[str, float]]:
    """The claim's CPU per seed as ``(family, seconds)``: each arm's training (from the tuning seeds, at the chosen
    candidate; a run another claim trained keeps its own cost), plus the claim's own measuring."""
    items, own = [], 0.0
    for arm in result.claim.arms:
        chosen = result.chosen.get(arm.name, 0)
        rows = [(result.raws_tune.get((arm.name, chosen, seed)), result.unit_cpu.get((arm.name, chosen, seed)))
                for seed in tier.tuning_seeds]
        rows = [(raw, cpu) for raw, cpu in rows if raw is not None]
        if not rows:
            continue
        train = math.fsum(raw.get("train_cpu", 0.0) for raw, _ in rows) / len(rows)
        unit = math.fsum(cpu for _, cpu in rows) / len(rows)
        family = rows[0][0].get("family") or f"{result.claim.name}/{arm.name}"
        items.append((family, train if train > 0 else unit))
        own += unit - train if unit >= train else unit  # a unit that loaded its run only measured
    return [*items, (f"{result.claim.name}/measure", own)]


