"""Claim 11: dropout makes hidden activations sparser and hidden units less co-adapted (less correlated)."""

from __future__ import annotations

from ..claim import Arm, Claim, Effect, Part
from .common import LR_CANDIDATES, mlp_arm, mnist1d_splits, summary

RATES = {"none": 0.0, "dropout": 0.5}


def settings(tier: str) -> dict:
    return {"tier": tier, "rates": RATES}


def run(settings: dict, arm: str, seed: int, hp: dict) -> dict:
    from ...diagnostics import capture_activations, effective_rank, pairwise_correlation

    trained = mlp_arm(seed, settings["tier"], lr=hp["lr"], p=RATES[arm])
    model, test = trained.model.eval(), mnist1d_splits(seed).test
    batches = [(test.x[i:i + 500], test.y[i:i + 500]) for i in range(0, len(test.y), 500)]
    acts = capture_activations(model, batches)  # each hidden layer's ReLU output
    rows = []
    for matrix in acts.values():
        corr, dead = pairwise_correlation(matrix)
        rows.append({"active": float((matrix > 0).double().mean()), "mean_activation": float(matrix.mean()),
                     "correlation": corr, "dead": dead, "effective_rank": effective_rank(matrix)})
    out = summary(trained)
    out["layers"] = rows
    for key in ("active", "mean_activation", "correlation", "effective_rank"):
        out[key] = sum(row[key] for row in rows) / len(rows)
    return out


def measure(raws: dict, settings: dict) -> dict:
    none, drop = raws["none"], raws["dropout"]
    return {f"{key}_change": drop[key] - none[key] for key in ("active", "correlation", "effective_rank")} | {
        "test_acc_change": drop["test_acc"] - none["test_acc"]}


def plot(ax, raws: list[dict], settings: dict) -> None:
    for arm, color in (("none", "C0"), ("dropout", "C1")):
        ax.scatter([raw[arm]["active"] for raw in raws], [raw[arm]["correlation"] for raw in raws], color=color,
                   label=f"{arm} (one point per seed)")
    ax.set(title="hidden units on the test signals", xlabel="share of activations > 0 (lower: sparser)",
           ylabel="mean |correlation| between units")
    ax.legend(fontsize=7)


CLAIM = Claim(
    number=11, key="coadaptation", title="Dropout makes activations sparser and units less co-adapted",
    source="Srivastava et al. 2014, JMLR 15, sec. 7.1 (features, fig. 7) and sec. 7.2 (sparsity, fig. 8); Hinton "
           "et al. 2012",
    statement="Dropout prevents units from co-adapting: each hidden unit must work with random subsets of the "
              "others, so it learns features useful on their own (sec. 7.1); and as a side effect 'the activations "
              "of the hidden units become sparse', with fewer units active per example, even without sparsity-"
              "inducing regularizers (sec. 7.2, fig. 8: mean activation and the histogram of activations).",
    regime="The claim-1 network (ReLU units, 256 per layer) with and without dropout, measured on the test signals "
           "at each arm's best checkpoint.",
    mechanism="Co-adaptation as feature covariance: the mean absolute correlation between pairs of hidden units "
              "(the quantity DeCov, Cogswell et al. 2016, penalizes); sparsity as the share of activations above "
              "zero (scale-free, so inverted dropout's 1/q scaling does not enter); the effective rank is reported.",
    setup_text="The claim-1 arms (MLP 40-256-256-10, p = 0 vs 0.5, learning rate tuned per arm in {0.003, 0.001}, "
               "best-validation checkpoint); each hidden layer's ReLU outputs on the 1000 test signals "
               "(droplab.diagnostics.capture_activations), averaged over the two layers.",
    parts=(Part("a", "dropout makes the hidden activations sparser (fewer activations above zero)"),
           Part("b", "dropout lowers the correlation between hidden units")),
    arms=(Arm("none", LR_CANDIDATES), Arm("dropout", LR_CANDIDATES)),
    effects=(Effect("active_change", "share of activations > 0, p=0.5 - p=0", -1, 0.02,
                    "2% of the activations: a smaller change would not be visible in the paper's histograms",
                    part="a"),
             Effect("correlation_change", "mean |corr| between units, p=0.5 - p=0", -1, 0.01,
                    "0.01 in mean |correlation|: about 5-10% of its typical value here", part="b"),
             Effect("effective_rank_change", "effective rank, p=0.5 - p=0", +1, 2.0,
                    "2 dimensions of 256", primary=False, part="b"),
             Effect("test_acc_change", "test acc(p=0.5) - test acc(p=0)", +1, 0.01, "1 accuracy point",
                    primary=False, part="a")),
    settings=settings, run=run, measure=measure, plot=plot, baselines=("mnist1d-mlp",))
