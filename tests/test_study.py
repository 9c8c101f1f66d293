"""droplab study: the statistics against SciPy/scikit-learn, the runner on synthetic effects, claim 14's
closed form by hand, and ``droplab study --quick`` on two claims with the values they stored re-derived."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from droplab.lab.store import RunStore
from droplab.study import Claim, Effect, all_claims, resolve, run_claim
from droplab.study.claims import c14_input_l2 as c14
from droplab.study.fit import max_norm_
from droplab.study.stats import ONE_SEED, auroc, combine_verdicts, spearman, t_interval, t_quantile, verdict

# ---- statistics ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 6, 9, 10, 29, 30])
@pytest.mark.parametrize("confidence", [0.8, 0.95, 0.99])
def test_t_quantile_matches_scipy(df, confidence):
    assert t_quantile(confidence, df) == pytest.approx(scipy_stats.t.ppf((1 + confidence) / 2, df), rel=1e-9)


@pytest.mark.parametrize("values", [[0.1, 0.3, 0.2], [1.0, -2.0, 0.5, 4.0, 3.0], [5.0, 5.5]])
def test_t_interval_matches_scipy(values):
    ours = t_interval(values)
    low, high = scipy_stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=scipy_stats.sem(values))
    assert (ours.mean, ours.low, ours.high, ours.n) == pytest.approx((np.mean(values), low, high, len(values)))


def test_t_interval_one_seed_and_bad_input():
    one = t_interval([0.3])
    assert one.mean == 0.3 and math.isnan(one.low) and math.isnan(one.high)
    assert verdict(one, +1) == ONE_SEED
    with pytest.raises(ValueError, match="NaN"):
        t_interval([0.1, float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        t_quantile(1.5, 3)
    with pytest.raises(ValueError, match="direction"):
        verdict(t_interval([1.0, 2.0]), 0)


def test_verdicts_on_synthetic_effects():
    clear_positive = t_interval([0.9, 1.1, 1.0, 1.05, 0.95])
    noise = t_interval([0.5, -0.4, 0.1, -0.2, 0.05])
    assert verdict(clear_positive, +1) == "reproduced"
    assert verdict(clear_positive, -1) == "contradicted"
    assert verdict(t_interval([-v for v in [0.9, 1.1, 1.0]]), -1) == "reproduced"
    assert verdict(noise, +1) == verdict(noise, -1) == "inconclusive"
    assert combine_verdicts(["reproduced", "reproduced"]) == "reproduced"
    assert combine_verdicts(["reproduced", "inconclusive"]) == "inconclusive"
    assert combine_verdicts(["reproduced", "contradicted"]) == "contradicted"
    assert combine_verdicts(["reproduced", ONE_SEED]) == ONE_SEED


def test_auroc_and_spearman_match_references():
    from sklearn.metrics import roc_auc_score

    g = np.random.default_rng(0)
    neg, pos = g.normal(0, 1, 200).round(1), g.normal(0.7, 1, 150).round(1)  # rounded: ties on purpose
    labels = np.r_[np.zeros(200), np.ones(150)]
    assert auroc(neg, pos) == pytest.approx(roc_auc_score(labels, np.r_[neg, pos]), abs=1e-12)
    a, b = g.normal(size=50).round(1), g.normal(size=50).round(1)
    assert spearman(a, b) == pytest.approx(scipy_stats.spearmanr(a, b).statistic, abs=1e-12)


def test_max_norm_projects_rows_by_hand():
    layer = torch.nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 4.0], [0.3, 0.4]]))  # norms 5 and 0.5
    max_norm_(torch.nn.Sequential(layer), 2.0)
    assert torch.allclose(layer.weight, torch.tensor([[1.2, 1.6], [0.3, 0.4]]), atol=1e-5)


# ---- claim 14: the closed form ---------------------------------------------------------------------------------

def test_dropout_penalty_by_hand_and_by_sampling():
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    w = torch.tensor([0.5, -2.0])
    p = 0.25  # p/q = 1/3; sum_j w_j^2 x_ij^2: row 0: 0.25 + 16 = 16.25, row 1: 2.25 + 4 = 6.25; mean 11.25
    assert float(c14.dropout_penalty(x, w, p)) == pytest.approx(11.25 / 3)
    # E_m (y - w.(m x / q))^2 - (y - w.x)^2 by sampling masks
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


# ---- registry and runner -------------------------------------------------------------------------------------

def test_registry_has_the_fifteen_claims():
    claims = all_claims()
    assert [c.number for c in claims] == list(range(1, 16))
    assert len({c.key for c in claims}) == 15 and all(c.seeds >= 3 for c in claims)
    assert [c.number for c in resolve(["14", "overfitting", "03-weight-scaling", "1"])] == [1, 3, 14]
    from droplab.lab.errors import UserError

    with pytest.raises(UserError, match="unknown claim 'nonsense'"):
        resolve(["nonsense"])


def _synthetic_claim(center: float, direction: int) -> Claim:
    def run(settings, seed):
        return {"value": center + settings["spread"] * math.sin(seed + 1)}

    return Claim(number=99, key="synthetic", title="synthetic", setup_text="", expected="", source="",
                 effects=(Effect("value", "value", direction),), seeds=4, setup=lambda quick: {"spread": 0.1},
                 run=run, measure=lambda raw, settings: {"value": raw["value"]})


@pytest.mark.parametrize("center,direction,expected", [(1.0, +1, "reproduced"), (1.0, -1, "contradicted"),
                                                       (0.0, +1, "inconclusive")])
def test_run_claim_on_a_synthetic_effect(tmp_path, center, direction, expected):
    with RunStore(tmp_path / "s.db") as store:
        result = run_claim(_synthetic_claim(center, direction), store=store, study_id="s", echo=lambda *a: None)
        rows = store.list_runs(study="study/99-synthetic")
    values = [center + 0.1 * math.sin(seed + 1) for seed in range(4)]
    assert result.verdict == expected
    assert result.intervals["value"].mean == pytest.approx(np.mean(values))
    assert sorted(row["final"]["effects"]["value"] for row in rows) == pytest.approx(sorted(values))
    assert {row["status"] for row in rows} == {"finished"} and {row["group_id"] for row in rows} == {"s"}


def test_run_claim_stores_a_failure_and_goes_on(tmp_path):
    def broken(settings, seed):
        raise RuntimeError("boom")

    claim = Claim(number=98, key="broken", title="broken", setup_text="", expected="", source="",
                  effects=(Effect("x", "x", +1),), seeds=3, setup=lambda quick: {}, run=broken,
                  measure=lambda raw, settings: raw)
    with RunStore(tmp_path / "s.db") as store:
        result = run_claim(claim, store=store, echo=lambda *a: None)
        (row,) = store.list_runs(study="study/98-broken")
    assert result.verdict == "failed" and "boom" in result.error
    assert row["status"] == "failed" and "boom" in row["error"]


# ---- the command, --quick on two claims ------------------------------------------------------------------------

def test_study_cli_rejects_unknown_claims(capsys):
    from droplab.cli import main

    assert main(["study", "nonsense", "--no-report"]) == 2
    assert "droplab study: error: unknown claim 'nonsense'" in capsys.readouterr().err


@pytest.mark.slow
def test_study_quick_on_two_claims(tmp_path):
    from droplab.cli import main

    db, reports = tmp_path / "study.db", tmp_path / "reports"
    assert main(["study", "14", "weight-scaling", "--quick", "--db", str(db), "--report-dir", str(reports)]) == 0
    (report,) = reports.iterdir()
    results = json.loads((report / "results.json").read_text())
    assert [c["number"] for c in results["claims"]] == [3, 14]
    assert all(c["verdict"] == ONE_SEED for c in results["claims"])
    assert all(0 < c["cpu_seconds"] and 0 < c["seconds"] for c in results["claims"])
    assert (report / "claim-03.png").stat().st_size > 0 and (report / "claim-14.png").stat().st_size > 0
    assert "Weight scaling approximates" in (report / "index.html").read_text()
    with RunStore(db) as store:
        (ws,) = store.list_runs(study="study/03-weight-scaling")
        (l2,) = store.list_runs(study="study/14-input-l2")
    # claim 3: the stored effects follow from the stored accuracies
    raw, effects = ws["final"]["raw"], ws["final"]["effects"]
    assert effects["mc50_ws_distance"] == pytest.approx(abs(raw["mc"]["50"]["acc"] - raw["ws_acc"]) - 0.01)
    assert effects["ws_minus_mc1"] == pytest.approx(raw["ws_acc"] - raw["mc"]["1"]["acc"])
    assert 0.3 < raw["ws_acc"] <= 1.0  # MNIST-1D, 10 classes: well above chance after 15 epochs
    # claim 14: the stored closed form is the hand formula on the regenerated data, and training lands near it
    settings = l2["config"]["settings"]
    x, y = c14._data(settings, 0)
    w_star = c14.dropout_ridge(x, y, settings["p"])
    assert l2["final"]["raw"]["solutions"]["dropout_ridge"] == pytest.approx(w_star.tolist(), rel=1e-9)
    learned = torch.tensor(l2["final"]["raw"]["learned"], dtype=torch.float64)
    w_ols = torch.linalg.lstsq(x.double(), y.double().unsqueeze(1)).solution.squeeze(1)
    to_star = float((learned - w_star).norm() / w_star.norm())
    to_ols = float((learned - w_ols).norm() / w_ols.norm())
    assert to_star < 0.2 and to_star < 0.5 * to_ols  # SGD noise leaves ~10% at 60 epochs; OLS is ~60% away
    assert l2["final"]["effects"]["closer_than_ols"] == pytest.approx(to_ols - to_star, rel=1e-6)


def test_claim4_gru_step_is_torch_grucell_without_dropout():
    from droplab.study.claims.c04_recurrent import SequenceGRU

    torch.manual_seed(0)
    model = SequenceGRU(40, 10, 8, 0.3, 20, locked=True).eval()  # eval: dropout off, both modes equal
    x = torch.randn(5, 40)
    h = torch.zeros(5, 8)
    for t in range(20):
        h = model.cell(x.reshape(5, 20, 2)[:, t], h)
    assert torch.allclose(model(x), model.head(h), atol=1e-6)
    model.locked = False
    assert torch.allclose(model(x), model.head(h), atol=1e-6)


def test_markdown_summary_states_verdicts_times_and_escapes_pipes():
    from droplab.study.report import markdown_summary

    claim = _synthetic_claim(1.0, +1)
    claim = Claim(**{**claim.__dict__, "effects": (Effect("value", "|a - b|", +1),)})
    result = run_claim(claim, echo=lambda *a: None)
    result.seconds, result.cpu_seconds = 12.0, 9.0
    text = markdown_summary([result], {"total_seconds": 60.0, "total_cpu_seconds": 45.0, "date": "D",
                                       "load_before": "1.00", "load_after": "2.00", "mode": "default seeds"})
    interval = result.intervals["value"]
    assert f"\\|a - b\\|: {interval.mean:+.4f} [{interval.low:+.4f}, {interval.high:+.4f}]" in text
    assert "**reproduced**" in text and "12 s (9 s)" in text
    assert "Total: 60 s wall (1.0 min), 45 s CPU (0.8 min); D; load average before/after: 1.00 / 2.00" in text
