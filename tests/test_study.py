"""droplab study: the statistics against SciPy/statsmodels, the verdict rule on synthetic effects (with positive
controls for every equivalence test), the runner, reports and page on synthetic claims, the lab callbacks and
models the study added, claim 14's closed form by hand, and ``droplab study --quick`` on real claims."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from droplab.study import Arm, Claim, Effect, Part, all_claims, resolve
from droplab.study import stats as S
from droplab.study.claims import c14_input_l2 as c14

statsmodels = pytest.importorskip("statsmodels")
from statsmodels.stats.multitest import multipletests  # noqa: E402
from statsmodels.stats.power import TTestPower  # noqa: E402
from statsmodels.stats.weightstats import DescrStatsW  # noqa: E402

SAMPLES = [[0.1, 0.3, 0.2], [1.0, -2.0, 0.5, 4.0, 3.0], [5.0, 5.5], [0.012, -0.004, 0.02, 0.007, 0.0, 0.011],
           list(np.random.default_rng(3).normal(0.4, 1.0, 25))]


# ---- statistics against SciPy and statsmodels -------------------------------------------------------------------

@pytest.mark.parametrize("values", SAMPLES)
def test_interval_and_difference_test_match_scipy(values):
    ours = S.t_interval(values)
    low, high = scipy_stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=scipy_stats.sem(values))
    assert (ours.mean, ours.low, ours.high, ours.sd) == pytest.approx((np.mean(values), low, high,
                                                                       np.std(values, ddof=1)))
    assert S.difference_test(values) == pytest.approx(scipy_stats.ttest_1samp(values, 0.0).pvalue, rel=1e-9)


@pytest.mark.parametrize("values", SAMPLES)
@pytest.mark.parametrize("margin", [0.01, 0.5, 2.0])
def test_tost_matches_statsmodels(values, margin):
    expected = DescrStatsW(np.asarray(values)).ttost_mean(-margin, margin)[0]
    assert S.tost(values, margin) == pytest.approx(expected, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("effect,sd,n", [(1.0, 1.0, 10), (0.01, 0.015, 20), (0.3, 1.0, 40), (2.0, 1.0, 3)])
@pytest.mark.parametrize("alpha", [0.05, 0.05 / 28])
def test_power_matches_statsmodels(effect, sd, n, alpha):
    power = TTestPower()
    assert S.power(effect, sd, n, alpha) == pytest.approx(
        power.power(effect / sd, n, alpha, alternative="two-sided"), rel=1e-9)
    assert S.power(effect, sd, n, alpha, sided=1) == pytest.approx(
        power.power(effect / sd, n, alpha, alternative="larger"), rel=1e-9)


@pytest.mark.parametrize("effect,sd", [(1.0, 1.0), (0.01, 0.015), (0.02, 0.01), (0.5, 2.0)])
@pytest.mark.parametrize("alpha", [0.05, 0.05 / 28])
def test_seed_counts_and_mde_match_statsmodels(effect, sd, alpha):
    power = TTestPower()
    real_n = power.solve_power(effect / sd, None, alpha, 0.8, alternative="two-sided")
    n = S.seeds_for_power(effect, sd, alpha)
    assert n == max(2, math.ceil(real_n - 1e-6))
    assert S.power(effect, sd, n, alpha) >= 0.8 > (S.power(effect, sd, n - 1, alpha) if n > 2 else 0)
    mde = S.minimum_detectable_effect(sd, 12, alpha)
    assert mde == pytest.approx(power.solve_power(None, 12, alpha, 0.8, alternative="two-sided") * sd, rel=1e-5)
    # TOST planning: each one-sided test at alpha gets power 0.9 at the margin
    one_sided = power.solve_power(effect / sd, None, alpha, 0.9, alternative="larger")
    assert S.tost_seeds_for_power(effect, sd, alpha) == max(2, math.ceil(one_sided - 1e-6))
    assert S.tost_minimum_margin(sd, 12, alpha) == pytest.approx(
        power.solve_power(None, 12, alpha, 0.9, alternative="larger") * sd, rel=1e-5)


def test_tost_planning_delivers_its_power_by_simulation():
    sd, margin = 1.0, 0.8
    n = S.tost_seeds_for_power(margin, sd)
    rng = np.random.default_rng(0)
    data = rng.normal(0.0, sd, (4000, n))  # the truth is "no difference"
    mean, se = data.mean(1), data.std(1, ddof=1) / math.sqrt(n)
    p = np.maximum(scipy_stats.t.sf((mean + margin) / se, n - 1), scipy_stats.t.cdf((mean - margin) / se, n - 1))
    assert (p < 0.05).mean() >= 0.79  # at least the planned 80% (Monte-Carlo error about 0.6 points)
    assert S.tost(data[0], margin) == pytest.approx(p[0])


@pytest.mark.parametrize("method,name", [("holm", "holm"), ("bh", "fdr_bh")])
def test_adjustment_matches_statsmodels(method, name):
    rng = np.random.default_rng(1)
    for size in (1, 2, 5, 28):
        ps = list(np.concatenate([rng.uniform(0, 0.01, size // 2), rng.uniform(0, 1, size - size // 2)]))
        ps[0] = ps[-1]  # a tie
        assert S.adjust(ps, method) == pytest.approx(list(multipletests(ps, method=name)[1]), rel=1e-12)
    with pytest.raises(ValueError, match="method must be one of holm, bh"):
        S.adjust([0.1], "bonferroni")
    with pytest.raises(ValueError, match="p-values must lie in"):
        S.adjust([1.5])


def test_statistics_reject_bad_input():
    with pytest.raises(ValueError, match="finite"):
        S.t_interval([0.1, float("nan")])
    with pytest.raises(ValueError, match="at least two seeds"):
        S.difference_test([0.1])
    with pytest.raises(ValueError, match="margin must be a positive number"):
        S.tost([0.1, 0.2], 0.0)
    with pytest.raises(ValueError, match="effect of 0"):
        S.seeds_for_power(0.0, 1.0)
    one = S.t_interval([0.3])
    assert one.low is None and one.sd is None


# ---- the verdict rule on synthetic effects ----------------------------------------------------------------------

def _verdict(values, kind="difference", direction=+1, sesoi=0.01, m=1):
    """The verdict of one effect judged alone (a family of one)."""
    sd, n = float(np.std(values, ddof=1)), len(values)
    mde = S.tost_minimum_margin(sd, n, 0.05 / m) if kind == "equivalence" else \
        S.minimum_detectable_effect(sd, n, 0.05 / m)
    return S.judge(kind, direction, float(np.mean(values)), S.difference_test(values), S.tost(values, sesoi), mde,
                   sesoi)


def test_verdicts_on_synthetic_effects():
    rng = np.random.default_rng(2)
    big = list(0.05 + 0.01 * rng.standard_normal(8))
    null_precise = list(0.002 * rng.standard_normal(30))
    null_noisy = list(0.05 * rng.standard_normal(4))
    tiny_real = list(0.002 + 0.0005 * rng.standard_normal(30))
    assert _verdict(big) == "reproduced"
    assert _verdict(big, direction=-1) == "contradicted"
    assert _verdict(null_precise) == "no effect"
    assert _verdict(null_noisy) == "underpowered"
    assert _verdict(tiny_real) == "negligible"
    assert _verdict(null_precise, kind="equivalence") == "reproduced"
    assert _verdict(null_noisy, kind="equivalence") == "underpowered"
    # an equivalence test is not passed by arms that differ (positive control)
    assert _verdict(big, kind="equivalence") == "contradicted"


def _differing_raws(claim_number: int, shift: float, seed: int) -> dict:
    """Raws for the arms of an equivalence claim where one arm is ``shift`` better (same measure code)."""
    base = 0.62 + 0.01 * math.sin(seed)
    if claim_number == 3:
        mc = {str(k): {"acc": base + shift, "nll": 1.0} for k in (1, 2, 5, 10, 20, 50, 100)}
        return {"dropout": {"ws_acc": base, "ws_nll": 1.0, "mc": mc}}
    if claim_number == 6:
        return {"bernoulli": {"test_acc": base, "gap": 0.1}, "gaussian": {"test_acc": base + shift, "gap": 0.1}}
    raise AssertionError(f"no synthetic raws for claim {claim_number}: add them for its equivalence effect")


@pytest.mark.parametrize("claim", [c for c in all_claims()
                                   if any(e.kind == "equivalence" and e.primary for e in c.effects)],
                         ids=lambda c: c.name)
def test_every_equivalence_test_fails_when_the_arms_differ(claim):
    """Positive control: each claim's own measure, fed arms that differ by three margins, is not 'reproduced'."""
    effect = next(e for e in claim.effects if e.kind == "equivalence" and e.primary)
    settings = claim.settings("default")
    for shift, expected in ((3 * effect.sesoi, "contradicted"), (0.0, "reproduced")):
        noise = np.random.default_rng(4).normal(0, effect.sesoi / 10, 10)
        values = [claim.measure(_differing_raws(claim.number, shift + float(noise[s]), s), settings)[effect.key]
                  for s in range(10)]
        assert _verdict(values, kind="equivalence", sesoi=effect.sesoi, m=28) == expected


def test_claim_measures_on_synthetic_raws():
    from droplab.study.claims import c12_data_size, c13_regularizers, c15_convergence

    # 15: a dropout run that never reaches the target counts as its last epoch + 1 (a lower bound), and a baseline
    # run that never reaches it fails the check that withholds the verdict
    raws = {"none": {"target_epoch": 10, "epochs_run": 30}, "dropout": {"target_epoch": None, "epochs_run": 39}}
    assert c15_convergence.measure(raws, {})["log2_slowdown"] == pytest.approx(math.log2(40 / 10))
    censored = [{"none": {"target_epoch": None}, "dropout": {"target_epoch": 3}}]
    assert not c15_convergence.checks(censored, {})["every run without dropout reaches the target"][0]
    # 13: the best single regularizer is chosen on validation accuracy, never on the test set
    cells = {c: {"val_acc": 0.5, "test_acc": 0.5} for c in c13_regularizers.CELLS}
    cells["D"] = {"val_acc": 0.70, "test_acc": 0.60}
    cells["A"] = {"val_acc": 0.65, "test_acc": 0.80}
    cells["DWA"] = {"val_acc": 0.7, "test_acc": 0.66}
    effects = c13_regularizers.measure(cells, {})
    assert effects["all_vs_best_single"] == pytest.approx(0.66 - 0.60)
    # main effect of A: the cells with A (A, DA, WA, DWA) against those without (none, D, W, DW)
    assert effects["main_A"] == pytest.approx((0.80 + 0.5 + 0.5 + 0.66) / 4 - (0.5 + 0.60 + 0.5 + 0.5) / 4)
    # 12: the inverted U is two contrasts of the gains at the three sizes
    acc = {"200-none": 0.30, "200-dropout": 0.31, "800-none": 0.45, "800-dropout": 0.55, "3200-none": 0.62,
           "3200-dropout": 0.65}
    effects = c12_data_size.measure({k: {"test_acc": v} for k, v in acc.items()}, {"sizes": [200, 800, 3200]})
    assert (effects["rise"], effects["fall"]) == pytest.approx((0.10 - 0.01, 0.10 - 0.03))


# ---- the claims as declared ----------------------------------------------------------------------------------------

def test_registry_has_the_fifteen_claims_with_reasons_and_parts():
    claims = all_claims()
    assert [c.number for c in claims] == list(range(1, 16))
    for claim in claims:
        assert claim.source and claim.statement and claim.regime and claim.mechanism
        assert all(e.reason and e.sesoi > 0 for e in claim.effects)
        for tier in ("quick", "default", "confirm"):
            json.dumps(claim.settings(tier))  # stored with every run
    assert [c.number for c in resolve(["14", "overfitting", "03-weight-scaling", "1"])] == [1, 3, 14]
    from droplab.lab.errors import UserError

    with pytest.raises(UserError, match="unknown claim 'nonsense'"):
        resolve(["nonsense"])


def test_claim_declarations_are_checked():
    effect = Effect("x", "x", +1, 0.1, "why")
    kwargs = dict(number=99, key="k", title="t", source="s", statement="s", regime="r", mechanism="m", setup_text="s",
                  parts=(Part("a", "p"),), arms=(Arm("a"),), effects=(effect,), settings=lambda tier: {},
                  run=lambda *a: {}, measure=lambda raws, settings: {})
    Claim(**kwargs)
    with pytest.raises(ValueError, match="names part 'b'"):
        Claim(**{**kwargs, "effects": (Effect("x", "x", +1, 0.1, "why", part="b"),)})
    with pytest.raises(ValueError, match="part 'c' has no primary effect"):
        Claim(**{**kwargs, "parts": (Part("a", "p"), Part("c", "q"))})
    with pytest.raises(ValueError, match="sesoi must be positive"):
        Effect("x", "x", +1, 0.0, "why")
    with pytest.raises(ValueError, match="give the reason"):
        Effect("x", "x", +1, 0.1, "")
    with pytest.raises(ValueError, match="kind must be one of"):
        Effect("x", "x", +1, 0.1, "why", kind="superiority")


# ---- the runner, the adjustment across the study, the reports, on synthetic claims --------------------------------

def _synthetic(number: int, key: str, center: float, spread: float, kind: str = "difference") -> Claim:
    def run(settings, arm, seed, hp):
        value = center + spread * math.sin(3 * seed + 1) + hp.get("bonus", 0.0)
        return {"val_score": hp.get("bonus", 0.0), "value": value if arm == "treated" else 0.0, "epochs_run": 3,
                "best_epoch": 2, "censored": False}

    return Claim(number=number, key=key, title=f"synthetic {key}", source="nowhere", statement="s", regime="r",
                 mechanism="m", setup_text="s", parts=(Part("a", "the effect"),),
                 arms=(Arm("control"), Arm("treated", ({"bonus": 0.0}, {"bonus": 0.001}))),
                 effects=(Effect("effect", "treated - control", +1, 0.01, "synthetic", kind=kind),),
                 settings=lambda tier: {"tier": tier}, run=run,
                 measure=lambda raws, s: {"effect": raws["treated"]["value"] - raws["control"]["value"]},
                 plot=lambda ax, raws, settings: ax.plot([r["treated"]["value"] for r in raws], "o"))


@pytest.fixture
def synthetic_registry(monkeypatch):
    claims = [_synthetic(91, "big", 0.05, 0.01), _synthetic(92, "null", 0.0, 0.002),
              _synthetic(93, "noisy", 0.0, 0.05), _synthetic(94, "same", 0.0, 0.002, kind="equivalence")]
    from droplab.study import registry

    monkeypatch.setattr(registry, "all_claims", lambda: claims)
    return claims


def test_run_study_tunes_plans_and_adjusts_across_claims(synthetic_registry, tmp_path):
    from droplab.lab.store import RunStore
    from droplab.study.runner import run_study

    with RunStore(tmp_path / "s.db") as store:
        study = run_study(synthetic_registry, "confirm", jobs=1, store=store, echo=lambda *a: None)
        rows = store.list_runs(study="study/91-big")
    results = {r.claim.key: r for r in study.results}
    assert all(not r.errors for r in results.values()) and study.family == 4
    assert results["big"].chosen == {"control": 0, "treated": 1}  # the better validation score wins
    # the pilot (the three tuning seeds at the chosen candidates) sizes the seeds, clamped to 3..40
    for key, result in results.items():
        pilot = result.pilot["effect"]
        assert pilot["sd"] == pytest.approx(np.std(pilot["values"], ddof=1))
        planner = S.tost_seeds_for_power if key == "same" else S.seeds_for_power
        assert result.n_required == planner(0.01, pilot["sd"], 0.05 / 4)
        assert result.seeds == list(range(min(max(result.n_required, 3), 40)))
        assert not set(result.seeds) & {1000, 1001, 1002}  # confirmatory seeds are never tuning seeds
    assert len(rows) == 3 * (1 + 2) + 2 * len(results["big"].seeds)  # tuning: 3 seeds x 3 candidates; confirm
    verdicts = {key: r.effects["effect"]["verdict"] for key, r in results.items()}
    assert verdicts == {"big": "reproduced", "null": "no effect", "noisy": "underpowered", "same": "reproduced"}
    # the adjusted p-values are Holm's over the family of four
    raw = [results[k].effects["effect"]["p_difference"] for k in ("big", "null", "noisy", "same")]
    adjusted = [results[k].effects["effect"]["p_difference_adjusted"] for k in ("big", "null", "noisy", "same")]
    assert adjusted == pytest.approx(list(multipletests(raw, method="holm")[1]))
    noisy = results["noisy"].effects["effect"]
    assert noisy["mde"] == pytest.approx(S.minimum_detectable_effect(noisy["sd"], len(noisy["values"]), 0.05 / 4))


def test_the_default_tier_reports_the_seeds_its_spread_asks_for(synthetic_registry):
    from droplab.study.runner import run_study

    study = run_study(synthetic_registry[:2], "default", jobs=1, echo=lambda *a: None)
    big = study.results[0]
    assert big.seeds == [0, 1, 2] and big.n_required is None  # one tuning seed is no pilot
    entry = big.effects["effect"]
    assert entry["seeds_for_power"] == S.seeds_for_power(0.01, entry["sd"], 0.05 / 2)


def test_reports_are_strict_json_and_the_page_regenerates(synthetic_registry, tmp_path):
    from droplab.study.page import markdown, write_page
    from droplab.study.report import text_table, write_report
    from droplab.study.results import load, to_dict
    from droplab.study.runner import run_study

    study = run_study(synthetic_registry, "default", jobs=1, echo=lambda *a: None, adjust="bh")
    data = to_dict(study, command="droplab study")
    data["claims"][0]["results"]["effect"]["sd"] = float("nan")  # a stray NaN must not reach the file
    from droplab.study.results import strict

    data = strict(data)
    path = write_report(tmp_path / "report", data)
    text = (tmp_path / "report" / "results.json").read_text()
    json.loads(text, parse_constant=lambda name: pytest.fail(f"non-strict JSON constant {name}"))
    loaded = load(tmp_path / "report" / "results.json")
    assert loaded == json.loads(text) and path.name == "index.html"
    table = text_table(loaded)
    import re

    for number, key in ((91, "big"), (92, "null"), (93, "noisy"), (94, "same")):
        assert re.search(rf"^{number}\s+{key}\s+a\s+treated - control", table, re.M)  # every primary effect a row
    assert "underpowered (MDE at 80% power" in table and "BH" in table
    page = tmp_path / "docs" / "study.md"
    write_page(loaded, page)
    assert page.read_text() == markdown(loaded, figure_dir="study")
    assert (tmp_path / "docs" / "study" / "claim-91.png").stat().st_size > 0
    assert "Benjamini-Hochberg" in page.read_text() and loaded["meta"]["id"] in page.read_text()


def test_a_failing_claim_is_reported_and_the_others_go_on(synthetic_registry):
    from droplab.study.runner import run_study

    def broken(settings, arm, seed, hp):
        raise RuntimeError("boom")

    bad = Claim(**{**synthetic_registry[0].__dict__, "number": 98, "key": "broken", "run": broken})
    synthetic_registry.append(bad)
    study = run_study([synthetic_registry[0], bad], "default", jobs=1, echo=lambda *a: None)
    good, failed = study.results
    assert not good.errors and good.effects["effect"]["verdict"] == "reproduced"
    assert failed.errors and "boom" in failed.errors[0] and not failed.effects


def test_withheld_when_a_baseline_is_off_or_a_check_fails(synthetic_registry, monkeypatch):
    from droplab.study import baselines
    from droplab.study.runner import run_study

    ran = []
    monkeypatch.setattr(baselines, "run_baseline", lambda name, seed, tier: ran.append(name) or {"value": 0.5})
    relies = Claim(**{**synthetic_registry[0].__dict__, "number": 95, "baselines": ("mnist1d-mlp",)})
    regime = Claim(**{**synthetic_registry[0].__dict__, "number": 96,
                      "checks": lambda raws, settings: {"regime": (False, "not there")}})
    synthetic_registry += [relies, regime]  # the runner finds claims by name in the registry
    study = run_study([relies, regime, synthetic_registry[1]], "default", jobs=1, echo=lambda *a: None)
    assert sorted(set(ran)) == ["mnist1d-cnn", "mnist1d-gru", "mnist1d-logistic", "mnist1d-mlp"]  # the whole table
    assert study.baselines["mnist1d-mlp"]["ok"] is False
    first, second, judged = study.results
    assert first.withheld == "baseline off: mnist1d-mlp"
    assert second.withheld == "check failed: regime (not there)"
    assert first.effects["effect"]["verdict"] is None and second.effects["effect"]["verdict"] is None
    assert study.family == 1 and judged.effects["effect"]["verdict"] == "no effect"


def test_fit_budget_counts_shared_runs_once_and_cuts_where_it_saves():
    from droplab.study.plan import fit_budget, planned_cpu

    assert fit_budget({"a": 10, "b": 10}, {"a": [("a", 1.0)], "b": [("b", 3.0)]}, 3, 25.0) == {"a": 10, "b": 5}
    assert fit_budget({"a": 40, "b": 4}, {"a": [("a", 1.0)], "b": [("b", 1.0)]}, 3, 1e9) == {"a": 40, "b": 4}
    assert fit_budget({"a": 40}, {"a": [("a", 10.0)]}, 3, 0.0) == {"a": 3}
    # two claims on one shared arm: it costs once per seed, at the larger count
    shared = {"a": [("mlp", 10.0)], "b": [("mlp", 10.0), ("b-own", 1.0)]}
    assert planned_cpu({"a": 20, "b": 5}, shared) == 20 * 10.0 + 5 * 1.0
    # cutting only "a" would save nothing while "b" needs the runs: both come down together
    counts = fit_budget({"a": 20, "b": 20}, shared, 3, 100.0 + 8 * 1.0)
    assert max(counts.values()) * 10.0 + counts["b"] * 1.0 <= 108.0 and counts["a"] == counts["b"] == 9


# ---- the lab pieces the study added: callbacks, the training bridge, models, data ---------------------------------

def _tiny_splits():
    from droplab.lab.data import Split, Splits

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return Splits(Split(x[:200], y[:200]), Split(x[200:250], y[200:250]), Split(x[250:], y[250:]), 6, 2, name="tiny")


def test_fit_returns_the_best_validation_checkpoint_and_stops_on_patience():
    from droplab.lab import models
    from droplab.study.training import fit

    splits = _tiny_splits()
    trained = fit(lambda s, n: models.mlp(s, n, width=16, dropout=0.0), splits, seed=0, epochs=60, lr=0.05,
                  patience=3)
    accs = [row["val_acc"] for row in trained.history]
    assert trained.best_epoch == 1 + accs.index(max(accs)) and trained.stopped == "patience"
    assert trained.epochs_run == trained.best_epoch + 3 < 60 and not trained.censored
    with torch.no_grad():
        val_acc = float((trained.model(splits.val.x).argmax(-1) == splits.val.y).float().mean())
    assert val_acc == pytest.approx(max(accs))  # the model returned is the best epoch's, not the last


def test_fit_stops_at_a_target_and_censors_at_the_cap():
    from droplab.lab import models
    from droplab.study.training import fit

    splits = _tiny_splits()
    build = lambda s, n: models.mlp(s, n, width=16, dropout=0.0)  # noqa: E731
    hit = fit(build, splits, seed=0, epochs=50, lr=0.05, target=0.8)
    first = next(row["epoch"] for row in hit.history if row["val_acc"] >= 0.8)
    assert hit.target_epoch == first == hit.epochs_run and hit.stopped == "target"
    capped = fit(build, splits, seed=0, epochs=2, lr=1e-4)  # still improving at the cap
    assert capped.stopped == "max_epochs" and capped.epochs_run == 2


def test_weight_average_callback_by_hand_and_in_fit():
    from types import SimpleNamespace

    from droplab.lab.callbacks import WeightAverage

    layer = torch.nn.Linear(2, 1)
    average = WeightAverage(start=2)
    for epoch, w in enumerate([1.0, 2.0, 4.0, 9.0], start=1):
        layer.weight.data.fill_(w)
        average.on_epoch_end(SimpleNamespace(core=layer), epoch, {})
    average.restore(layer)
    assert torch.allclose(layer.weight, torch.full((1, 2), 5.0))  # (2 + 4 + 9) / 3
    with pytest.raises(ValueError, match="start must be a positive int"):
        WeightAverage(0)


def test_fit_shares_a_run_through_the_cache(tmp_path, monkeypatch):
    from droplab.lab import models
    from droplab.study.training import CACHE_ENV, fit

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    splits = _tiny_splits()
    build = lambda s, n: models.mlp(s, n, width=8, dropout=0.5, seed=3)  # noqa: E731
    first = fit(build, splits, seed=1, epochs=4, lr=0.01, key={"model": "tiny"})
    second = fit(build, splits, seed=1, epochs=4, lr=0.01, key={"model": "tiny"})
    assert len(list(tmp_path.glob("*.pt"))) == 1 and second.history == first.history
    with torch.no_grad():
        assert torch.equal(first.model(splits.test.x), second.model(splits.test.x))
    fit(build, splits, seed=1, epochs=4, lr=0.02, key={"model": "tiny"})  # other arguments: another run
    assert len(list(tmp_path.glob("*.pt"))) == 2


def test_recurrent_modes_place_their_masks():
    from droplab.lab import models

    torch.manual_seed(0)
    x = torch.randn(4, 40)
    naive = models.recurrent((40,), 10, width=6, mode="naive", dropout=0.5, chunk=4)
    variational = models.recurrent((40,), 10, width=6, mode="variational", dropout=0.5, chunk=4)
    outputs = {}
    for name, model in (("naive", naive), ("variational", variational)):
        hook = (model.drop if name == "naive" else model.rnn).register_forward_hook(
            lambda m, i, o, name=name: outputs.__setitem__(name, o if isinstance(o, torch.Tensor) else o[0]))
        model.train()(x)
        hook.remove()
    naive_zero = outputs["naive"] == 0
    variational_zero = outputs["variational"] == 0
    assert torch.equal(variational_zero, variational_zero[:, :1].expand_as(variational_zero))  # one mask per sequence
    assert not torch.equal(naive_zero, naive_zero[:, :1].expand_as(naive_zero))  # a fresh mask per step
    none = models.recurrent((40,), 10, width=6, mode="none")
    assert none(x).shape == (4, 10) and not any(isinstance(m, torch.nn.Dropout) for m in none.modules())
    with pytest.raises(ValueError, match="mode must be one of none, naive, variational"):
        models.recurrent((40,), 10, mode="zoneout")
    with pytest.raises(ValueError, match="chunk must divide"):
        models.recurrent((40,), 10, chunk=3)


def test_mnist1d_paper_models_and_the_dropconnect_mlp():
    from droplab.lab import models
    from droplab.nn import DropConnect

    x = torch.randn(5, 40)
    assert models.mnist1d_cnn((40,), 10)(x).shape == (5, 10)
    # the paper's ConvBase: convs of 1x25x5, 25x25x3, 25x25x3 (+ biases), then 25 channels x 5 positions -> 10
    assert sum(p.numel() for p in models.mnist1d_cnn((40,), 10).parameters()) == 150 + 1900 + 1900 + 1260
    gru = models.mnist1d_gru((40,), 10)
    assert gru(x).shape == (5, 10) and gru.rnn.bidirectional and gru.head.in_features == 480
    mlp = models.mlp((40,), 10, width=16, variant="dropconnect", layer_rates=[0.0, 0.5])
    layers = [m for m in mlp.modules() if isinstance(m, DropConnect)]
    assert len(layers) == 1 and layers[0].per_example and layers[0].inference == "gaussian"
    assert mlp(x).shape == (5, 10)
    with pytest.raises(ValueError, match="batchnorm='none'"):
        models.mlp((40,), 10, width=8, variant="dropconnect", batchnorm="after_dropout")


def test_fresh_mnist1d_draws():
    from droplab.study.data import diabetes, mnist1d, subsample

    state = np.random.get_state()[1].copy()
    a, b, again = mnist1d(0), mnist1d(1), mnist1d(0)
    assert np.array_equal(np.random.get_state()[1], state)  # the global generator is left alone
    assert (len(a.train), len(a.val), len(a.test), a.input_shape) == (3200, 800, 1000, (40,))
    assert torch.equal(a.train.x, again.train.x) and not torch.equal(a.test.x, b.test.x)  # a new draw per seed
    small = subsample(a, 200, seed=0)
    assert len(small.train) == 200 and small.val is a.val and small.test is a.test
    d = diabetes(0)
    assert d.task == "regression" and d.train.y.shape == (len(d.train), 1)
    assert float(d.train.y.mean()) == pytest.approx(0.0, abs=1e-5)


def test_diabetes_ols_baseline_is_efron_et_al():
    from droplab.study.baselines import judge_baselines, run_baseline

    run = run_baseline("diabetes-ols", 900, "default")
    assert run["value"] == pytest.approx(0.5177, abs=1e-4) and 45 < run["test_rmse"] < 65
    judged = judge_baselines({"diabetes-ols": [run]}, judged=True)["diabetes-ols"]
    assert judged["ok"] is True and judged["published"] == 0.518
    assert judge_baselines({"mnist1d-mlp": [{"value": 0.55}]}, judged=True)["mnist1d-mlp"]["ok"] is False
    assert judge_baselines({"mnist1d-mlp": [{"value": 0.55}]}, judged=False)["mnist1d-mlp"]["ok"] is None


# ---- claim 14: the closed form ---------------------------------------------------------------------------------

def test_dropout_penalty_by_hand_and_by_sampling():
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    w = torch.tensor([0.5, -2.0])
    p = 0.25  # p/q = 1/3; sum_j w_j^2 x_ij^2: row 0: 0.25 + 16 = 16.25, row 1: 2.25 + 4 = 6.25; mean 11.25
    assert float(c14.dropout_penalty(x, w, p)) == pytest.approx(11.25 / 3)
    y = torch.tensor([1.0, -1.0])
    g = torch.Generator().manual_seed(0)
    masks = (torch.rand(200_000, 2, 2, generator=g) >= p).double() / (1 - p)
    noisy = ((y.double() - (masks * x.double()) @ w.double()) ** 2).mean()
    clean = ((y.double() - x.double() @ w.double()) ** 2).mean()
    assert float(noisy - clean) == pytest.approx(11.25 / 3, rel=0.02)


def test_dropout_ridge_zeroes_the_expected_loss_gradient():
    g = torch.Generator().manual_seed(1)
    x, y, p = torch.randn(40, 3, generator=g).double() * torch.tensor([0.5, 1.0, 3.0]).double(), \
        torch.randn(40, generator=g).double(), 0.4
    w = c14.dropout_ridge(x, y, p).requires_grad_(True)
    loss = ((y - x @ w) ** 2).mean() + c14.dropout_penalty(x, w, p)
    (grad,) = torch.autograd.grad(loss, w)
    assert grad.abs().max() < 1e-10


# ---- the command ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,message", [
    (["study", "nonsense", "--no-report"], "unknown claim 'nonsense'"),
    (["study", "--quick", "--seeds", "3"], "--quick runs one seed"),
    (["study", "--page", "r.json"], "--page writes the study page: give --write-page"),
    (["study", "--jobs", "0"], "--jobs must be >= 1"),
])
def test_study_cli_user_errors(capsys, argv, message):
    from droplab.cli import main

    assert main(argv) == 2
    assert f"droplab study: error: {message}" in capsys.readouterr().err


@pytest.mark.slow
def test_study_quick_on_two_claims(tmp_path, capsys):
    from droplab.cli import main
    from droplab.lab.store import RunStore

    db, reports, page = tmp_path / "study.db", tmp_path / "reports", tmp_path / "docs" / "study.md"
    assert main(["study", "14", "weight-scaling", "--quick", "--db", str(db), "--report-dir", str(reports),
                 "--write-page", str(page)]) == 0
    out = capsys.readouterr().out
    assert "time budget: 5 min" in out and "not judged (one seed)" in out
    (report,) = reports.iterdir()
    text = (report / "results.json").read_text()
    data = json.loads(text, parse_constant=lambda name: pytest.fail(f"non-strict JSON constant {name}"))
    assert [c["number"] for c in data["claims"]] == [3, 14]
    assert data["baselines"]["mnist1d-mlp"]["ok"] is None  # quick: shortened, not judged
    ws = data["claims"][0]
    raw = ws["raws"][0]["arms"]["dropout"]
    assert ws["per_seed"][0]["mc50_minus_ws"] == pytest.approx(raw["mc"]["50"]["acc"] - raw["ws_acc"])
    assert 0.3 < raw["ws_acc"] <= 1.0 and raw["epochs_run"] <= 25
    assert (report / "claim-03.png").stat().st_size > 0 and (page.parent / "study" / "claim-14.png").is_file()
    # claim 14: the stored closed form is the hand formula on the regenerated data; training lands near it
    l2 = data["claims"][1]
    x, y = c14._data(l2["settings"], 0)
    w_star = c14.dropout_ridge(x, y, l2["settings"]["p"])
    learned = l2["raws"][0]["arms"]["linear"]
    assert learned["solutions"]["dropout_ridge"] == pytest.approx(w_star.tolist(), rel=1e-9)
    assert learned["relative_distance"]["dropout_ridge"] < 0.5 * learned["relative_distance"]["ols"]
    with RunStore(db) as store:
        assert {r["status"] for r in store.list_runs(study="study/14-input-l2")} == {"finished"}
    regenerated = tmp_path / "again" / "study.md"
    assert main(["study", "--page", str(report / "results.json"), "--write-page", str(regenerated)]) == 0
    assert regenerated.read_text() == page.read_text()  # the page is a function of results.json
