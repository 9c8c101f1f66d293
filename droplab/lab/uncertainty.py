"""What Monte-Carlo dropout buys over the weight-scaled pass, on real data (``droplab uncertainty``).

:func:`prepare_models` trains a lab model (or loads a lab checkpoint); :func:`analyse` measures and
:func:`write_report` writes an HTML page with PNG figures:

* calibration: ECE (15 bins), NLL, Brier score and the reliability diagram of the MC-dropout average
  against the single weight-scaled (eval-mode) pass;
* the MC-vs-weight-scaling curve: accuracy and NLL of MC averaging over k samples (Srivastava et al.
  2014 found MC averaging matches weight scaling at about k = 50);
* out-of-distribution detection: AUROC of predictive entropy and of mutual information (BALD), with
  in-distribution test data against shifted data (translated, scaled, noised) and scikit-learn's
  8x8 digits read as sequences (when the in-distribution data is not digits itself);
* FGSM accuracy with and without test-time dropout, and for a model trained without dropout.

Dropout alone is no defence against adversarial examples; the report says so next to the numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .files import save_figure_file

__all__ = ["ood_sets", "auroc", "fgsm", "uncertainty_report", "write_report", "prepare_models", "analyse", "NO_DEFENCE"]

NO_DEFENCE = ("Dropout alone is no defence against adversarial examples: FGSM perturbations crafted on the "
              "weight-scaled network fool it whether or not dropout stays on at test time, and whatever accuracy "
              "test-time dropout seems to keep comes from randomizing the prediction (gradient masking), which an "
              "attacker who averages over masks removes. Use adversarial training or certified defences.")


# ------------------------------------------------------------------------------------------------ pieces


def auroc(in_scores: torch.Tensor, out_scores: torch.Tensor) -> float:
    """Area under the ROC curve for telling ``out`` (positive, higher score) from ``in``: the Mann-Whitney U
    statistic with ties counted half."""
    scores = torch.cat([in_scores, out_scores]).double()
    ranks = torch.empty_like(scores)
    order = torch.argsort(scores, stable=True)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    unique, inverse = torch.unique(scores, return_inverse=True)  # average ranks over ties
    sums = torch.zeros(len(unique), dtype=torch.float64).index_add_(0, inverse, ranks)
    counts = torch.zeros(len(unique), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(ranks))
    ranks = (sums / counts)[inverse]
    n_in, n_out = len(in_scores), len(out_scores)
    u = ranks[n_in:].sum() - n_out * (n_out + 1) / 2
    return float(u / (n_in * n_out))


def _digits_as_sequences(like: torch.Tensor) -> torch.Tensor:
    from sklearn.datasets import load_digits

    pixels = torch.tensor(load_digits().data, dtype=torch.float32)  # (1797, 64), row-major 8x8
    length = like.shape[-1]
    seq = F.interpolate(pixels[:, None, :], size=length, mode="linear", align_corners=True)[:, 0]
    seq = (seq - seq.mean()) / seq.std() * like.std() + like.mean()
    return seq.reshape(len(seq), *like.shape[1:])


def ood_sets(x: torch.Tensor, *, seed: int = 0, digits: bool = True) -> dict[str, torch.Tensor]:
    """Shifted versions of in-distribution inputs ``x`` (``(N, ..., L)``), plus digits read as sequences."""
    generator = torch.Generator().manual_seed(seed)
    length = x.shape[-1]
    sets = {
        "translated": torch.roll(x, shifts=length // 4, dims=-1),
        "scaled": x * 3.0,
        "noised": x + x.std() * torch.randn(x.shape, generator=generator),
    }
    if digits and x.dim() == 2:  # digits read as sequences only stand in for 1-D signals
        sets["digits"] = _digits_as_sequences(x)[: len(x)]
    return sets


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Fast gradient sign examples, :math:`x + \\epsilon\\,\\mathrm{sign}(\\nabla_x \\mathcal{L})`, against the
    model in eval mode (the weight-scaled network)."""
    was_training = model.training
    model.eval()
    try:
        x_adv = x.detach().clone().requires_grad_(True)
        F.cross_entropy(model(x_adv), y).backward()
        return (x + eps * x_adv.grad.sign()).detach()
    finally:
        model.train(was_training)


def _eval_probs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.cat([model(x[i:i + 4096]) for i in range(0, len(x), 4096)]).float().softmax(-1)
    finally:
        model.train(was_training)


def _mc_probs(model: nn.Module, x: torch.Tensor, samples: int, seed: int) -> torch.Tensor:
    from .. import mc

    with torch.no_grad():
        return mc.predict(model, x, samples=samples, seed=seed).samples.float().softmax(-1)  # (T, N, C)


def _scores(probs: torch.Tensor, y: torch.Tensor) -> dict:
    from .. import mc
    from .tasks.classification import reliability

    mean = probs.mean(0) if probs.dim() == 3 else probs
    calib = reliability(mean, y)
    return {"accuracy": float((mean.argmax(-1) == y).double().mean()), "ece": calib["ece"],
            "nll": float(mc.nll(mean, y)), "brier": float(mc.brier_score(mean, y)),
            "reliability": {k: calib[k] for k in ("edges", "confidence", "accuracy", "count")}}


def uncertainty_report(model: nn.Module, test_x: torch.Tensor, test_y: torch.Tensor, *, samples: int = 50,
                       curve: list[int] = (1, 2, 5, 10, 20, 50, 100), eps: list[float] = (0.05, 0.1, 0.2),
                       baseline: nn.Module | None = None, digits: bool = True, seed: int = 0) -> dict:
    """Every number of the report, as plain data (the command adds training and the HTML page)."""
    from .. import mc

    weight_scaled = _eval_probs(model, test_x)
    mc_probs = _mc_probs(model, test_x, samples, seed)
    results: dict = {"samples": samples, "n_test": len(test_y),
                     "calibration": {"weight_scaling": _scores(weight_scaled, test_y), "mc": _scores(mc_probs, test_y)}}
    results["curve"] = mc.compare_to_weight_scaling(model, [(test_x, test_y)], samples=list(curve), seed=seed)

    in_entropy = mc.predictive_entropy(mc_probs)
    in_mi = mc.mutual_information(mc_probs)
    in_ws_entropy = mc.predictive_entropy(weight_scaled[None])
    ood, histograms = {}, {"in-distribution": {"entropy": in_entropy.tolist(), "mi": in_mi.tolist()}}
    for name, shifted in ood_sets(test_x, seed=seed, digits=digits).items():
        probs = _mc_probs(model, shifted, samples, seed)
        entropy, mi = mc.predictive_entropy(probs), mc.mutual_information(probs)
        ws_entropy = mc.predictive_entropy(_eval_probs(model, shifted)[None])
        ood[name] = {"n": len(shifted), "auroc_entropy": auroc(in_entropy, entropy), "auroc_mi": auroc(in_mi, mi),
                     "auroc_entropy_weight_scaling": auroc(in_ws_entropy, ws_entropy)}
        histograms[name] = {"entropy": entropy.tolist(), "mi": mi.tolist()}
    results["ood"], results["ood_scores"] = ood, histograms

    std = float(test_x.std())
    rows = []
    for e in [0.0, *eps]:
        x_adv = fgsm(model, test_x, test_y, e * std) if e > 0 else test_x
        row = {"eps": e, "deterministic": _scores(_eval_probs(model, x_adv), test_y)["accuracy"],
               "mc_dropout": _scores(_mc_probs(model, x_adv, samples, seed), test_y)["accuracy"]}
        if baseline is not None:
            b_adv = fgsm(baseline, test_x, test_y, e * std) if e > 0 else test_x
            row["no_dropout_model"] = _scores(_eval_probs(baseline, b_adv), test_y)["accuracy"]
        rows.append(row)
    results["fgsm"] = rows
    results["fgsm_note"] = NO_DEFENCE
    return results


# ------------------------------------------------------------------------------------------------ report


def _figures(results: dict, out: Path) -> list[tuple[str, str]]:
    from .report import pyplot

    plt = pyplot()
    figures = []

    fig, ax = plt.subplots(figsize=(5, 4.2))
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfect calibration")
    for key, label, colour in (("weight_scaling", "weight scaling", "tab:blue"), ("mc", "MC dropout", "tab:orange")):
        rel = results["calibration"][key]["reliability"]
        pts = [(c, a) for c, a, n in zip(rel["confidence"], rel["accuracy"], rel["count"]) if n > 0]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=colour,
                label=f"{label} (ECE {results['calibration'][key]['ece']:.3f})")
    ax.set(xlabel="confidence", ylabel="accuracy", title="Reliability diagram (test)", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    figures.append(("reliability.png", "Reliability diagram: MC dropout vs the weight-scaled pass"))
    fig.tight_layout()
    save_figure_file(fig, out / figures[-1][0], dpi=110)
    plt.close(fig)

    curve = results["curve"]
    ws = next(r for r in curve if r["method"] == "weight_scaling")
    mc_rows = [r for r in curve if r["method"] == "mc"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, metric in zip(axes, ("accuracy", "nll")):
        ax.plot([r["samples"] for r in mc_rows], [r[metric] for r in mc_rows], "o-", color="tab:orange",
                label="MC average of k samples")
        ax.axhline(ws[metric], color="tab:blue", ls="--", label="weight scaling")
        ax.set(xscale="log", xlabel="k (MC samples)", ylabel=metric, title=f"test {metric}")
        ax.legend(fontsize=8)
    figures.append(("mc_curve.png", "MC averaging over k samples against the weight-scaled pass"))
    fig.tight_layout()
    save_figure_file(fig, out / figures[-1][0], dpi=110)
    plt.close(fig)

    scores = results["ood_scores"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, title in zip(axes, ("entropy", "mi"), ("predictive entropy", "mutual information")):
        top = max(max(v[key]) for v in scores.values()) or 1.0
        for name, values in scores.items():
            ax.hist(values[key], bins=30, range=(0, top), histtype="step", density=True, label=name,
                    lw=2 if name == "in-distribution" else 1)
        ax.set(xlabel=title, ylabel="density", title=f"{title}: in vs shifted")
        ax.legend(fontsize=7)
    figures.append(("ood.png", "Uncertainty of in-distribution vs shifted inputs"))
    fig.tight_layout()
    save_figure_file(fig, out / figures[-1][0], dpi=110)
    plt.close(fig)

    return [*figures, _fgsm_figure(plt, results["fgsm"], out)]


def _fgsm_figure(plt, rows: list[dict], out: Path) -> tuple[str, str]:
    from .report import save_figure

    fig, ax = plt.subplots(figsize=(5, 3.8))
    for key, label in (("deterministic", "dropout model, weight scaling"), ("mc_dropout", "dropout model, MC"),
                       ("no_dropout_model", "model trained without dropout")):
        if key in rows[0]:
            ax.plot([r["eps"] for r in rows], [r[key] for r in rows], "o-", label=label)
    ax.set(xlabel="FGSM epsilon (x input std)", ylabel="test accuracy", title="FGSM", ylim=(0, 1))
    ax.legend(fontsize=8)
    return save_figure(fig, out, "fgsm.png", "FGSM accuracy with and without dropout", dpi=110)


def tables(results: dict) -> dict[str, tuple[list[str], list[list[object]]]]:
    """The report's tables, ``{name: (headers, rows)}``, of a classification ``results``."""
    cal = results["calibration"]
    made = {
        "calibration": (["pass", "accuracy", "ECE", "NLL", "Brier"],
                        [[name, cal[key]["accuracy"], cal[key]["ece"], cal[key]["nll"], cal[key]["brier"]]
                         for key, name in (("weight_scaling", "weight scaling"),
                                           ("mc", f"MC dropout ({results['samples']} samples)"))]),
        "curve": (["method", "k", "accuracy", "NLL"],
                  [[r["method"], r["samples"] if r["samples"] is not None else "-", r["accuracy"], r["nll"]]
                   for r in results["curve"]]),
        "ood": (["shifted set", "n", "AUROC entropy (MC)", "AUROC mutual information (MC)",
                 "AUROC entropy (weight scaling)"],
                [[name, v["n"], v["auroc_entropy"], v["auroc_mi"], v["auroc_entropy_weight_scaling"]]
                 for name, v in results["ood"].items()]),
    }
    fgsm_keys = [k for k in ("deterministic", "mc_dropout", "no_dropout_model") if k in results["fgsm"][0]]
    made["fgsm"] = (["eps (x std)", *fgsm_keys], [[r["eps"], *(r[k] for k in fgsm_keys)] for r in results["fgsm"]])
    return made


def write_report(results: dict, out: Path, title: str) -> Path:
    """``out/index.html`` with the tables and figures, plus ``results.json``."""
    from .files import write_text
    from .report import escape, html_table, write_page

    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "results.json", json.dumps({k: v for k, v in results.items() if k != "ood_scores"}, indent=2))
    if results.get("task") == "regression":
        return _write_regression(results, out, title)
    figures = _figures(results, out)
    tables_ = tables(results)
    sections = [
        ("Calibration: MC dropout vs weight scaling", tables_["calibration"], figures[0]),
        ("MC averaging over k samples vs weight scaling", tables_["curve"], figures[1]),
        ("Out-of-distribution detection", tables_["ood"], figures[2]),
        ("Adversarial (FGSM)", tables_["fgsm"], figures[3]),
    ]
    body = [f"<p>{results['n_test']} test examples; MC dropout with {results['samples']} samples.</p>"]
    for heading, (headers, rows), (png, alt) in sections:
        body.append(f"<h2>{escape(heading)}</h2>{html_table(headers, rows)}"
                    f'<img src="{escape(png)}" alt="{escape(alt)}">')
        if heading.startswith("Adversarial"):
            body.append(f'<p class="warn"><strong>{escape(NO_DEFENCE)}</strong></p>')
    return write_page(out, title, body)


def regression_table(results: dict) -> tuple[list[str], list[list[object]]]:
    """The regression report's table: test RMSE, log-likelihood and coverage of both passes."""
    rows = [[name, results[f"test_rmse_{key}"], results[f"test_ll_{key}"], results[f"coverage90_{key}"]]
            for key, name in (("ws", "weight scaling"), ("mc", f"MC dropout ({results['mc_samples']} samples)"))]
    return ["pass", "test RMSE", "test log-likelihood", "90% interval coverage"], rows


def _write_regression(results: dict, out: Path, title: str) -> Path:
    from .report import html_table, pyplot, save_figure, write_page

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.2))
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="calibrated")
    ax.plot(results["levels"], results["calibration_mc"], "o-", label="MC dropout")
    ax.plot(results["levels"], results["calibration_ws"], "s--", label="weight scaling")
    ax.set(xlabel="nominal interval level", ylabel="observed coverage", title="Interval calibration (test)",
           xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8)
    png, caption = save_figure(fig, out, "calibration.png", "Observed coverage of central predictive intervals")
    headers, rows = regression_table(results)
    return write_page(out, title, [f"<p>{results['n_test']} test examples (regression).</p>",
                                   "<h2>MC dropout vs weight scaling</h2>", html_table(headers, rows),
                                   f'<img src="{png}" alt="{caption}">'])


# ------------------------------------------------------------------------------------------------ engine


def prepare_models(config, *, checkpoint: dict | None = None, baseline: bool = True, progress: bool = False,
                   prepared=None):
    """``(config, splits, model, baseline model or None)``: the model a checkpoint holds, or one trained now.

    Args:
        config: the experiment (for a ``checkpoint``, its stored config with the user's overrides).
        checkpoint: a lab checkpoint (:func:`droplab.lab.trainer.load_checkpoint`); None trains. Default: None.
        baseline: also train the model with every site off (for FGSM; classification only). Default: True.
        progress: progress bars while training. Default: False.
        prepared: what :func:`droplab.lab.preflight.check_before_training` of ``[config]`` loaded and built,
            reused instead of loading and building again. Default: None.

    The returned config holds the rates that ran, one per site.
    """
    from .build import build_model
    from .data import load_dataset
    from .tasks import task_of
    from .trainer import train

    splits = prepared.splits_for(config) if prepared is not None else load_dataset(config)
    if checkpoint is not None:
        torch.manual_seed(config.seed)
        model = build_model(config, splits.input_shape,
                            task_of(splits.task).output_size(splits.n_outputs, config.nll_head))
        model.load_state_dict(checkpoint["model"])
        return config, splits, model, None

    def fit(run_config):
        model = prepared.model_for(run_config) if prepared is not None else None
        return train(run_config, splits=splits, progress=progress, model=model)

    result = fit(config)
    off = None
    if baseline and splits.task == "classification":
        off = fit(config.replace(rates=[0.0], name="off (p=0)")).model
    return result.config, splits, result.model, off


def analyse(model: nn.Module, splits, config, *, samples: int, curve: list[int], eps: list[float],
            baseline: nn.Module | None = None, max_test: int | None = None, seed: int = 0) -> tuple[dict, dict]:
    """``(results, tables)``: every number of the report and its tables, for classification or regression."""
    from .. import sites
    from .errors import UserError

    model.eval()
    if not any(s.p > 0 for s in sites(model)):
        raise UserError("the model has no dropout site with p > 0, so MC dropout has nothing to sample")
    if splits.task == "regression":
        from .tasks.regression import mc_uncertainty

        results = mc_uncertainty(model, splits, samples=samples, seed=seed, nll_head=config.nll_head,
                                 device=config.device)
        results = {**results, "task": "regression", "n_test": len(splits.test)}
        return results, {"regression": regression_table(results)}
    x, y = splits.test.x, splits.test.y
    if max_test is not None:
        x, y = x[:max_test], y[:max_test]
    results = uncertainty_report(model, x, y, samples=samples, curve=curve, eps=eps, baseline=baseline,
                                 digits=config.dataset != "digits", seed=seed)
    return results, tables(results)
