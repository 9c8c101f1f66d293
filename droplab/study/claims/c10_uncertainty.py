"""Claim 10: MC dropout gives useful uncertainty (calibrated intervals; more uncertainty on shifted inputs)."""

from __future__ import annotations

import torch

from ..claim import Claim, Effect
from ..data import classification, diabetes
from ..fit import fit, train_mlp
from ..stats import auroc, spearman

Z90 = 1.6448536269514722  # standard normal 95th percentile: a central 90% interval


def setup(quick: bool) -> dict:
    return {"regression": {"width": 64, "depth": 2, "p": 0.1, "epochs": 60 if quick else 300, "lr": 1e-3,
                           "batch_size": 32, "samples": 100, "nominal": 0.9, "tolerance": 0.05},
            "shift": {"dataset": "mnist1d", "width": 256, "depth": 2, "p": 0.5, "epochs": 15 if quick else 60,
                      "samples": 50, "noise": 1.0}}


def _regression(settings: dict, seed: int) -> dict:
    """Coverage of the 90% MC interval on diabetes; the noise variance is set on the validation split."""
    from ...mc import predict
    from ..nets import mlp

    data = diabetes(seed)
    torch.manual_seed(seed)
    model = mlp(data.x_train.shape[1], 1, width=settings["width"], depth=settings["depth"], p=settings["p"])
    fit(model, (data.x_train, data.y_train), (data.x_val, data.y_val), epochs=settings["epochs"], seed=seed,
        lr=settings["lr"], batch_size=settings["batch_size"], task="regress", eval_every=settings["epochs"])

    def moments(x):
        samples = predict(model, x, samples=settings["samples"], seed=seed).samples.squeeze(-1)
        return samples.mean(0), samples.var(0)

    val_mean, val_var = moments(data.x_val)
    # homoscedastic noise (Gal's tau^-1): what the validation errors show beyond the model's own spread
    noise = max(float(((data.y_val - val_mean) ** 2).mean() - val_var.mean()), 1e-6)
    mean, var = moments(data.x_test)
    std = (var + noise).sqrt()
    error = (data.y_test - mean).abs()
    return {"coverage": float((error <= Z90 * std).float().mean()), "noise_var": noise,
            "mc_var": float(var.mean()), "rmse": float(error.pow(2).mean().sqrt()) * data.y_scale,
            "std_error_spearman": spearman(var.tolist(), error.tolist())}


def _shift(settings: dict, seed: int) -> dict:
    """Predictive entropy and mutual information of MC dropout on clean vs noise-shifted MNIST-1D test inputs."""
    from ...mc import mutual_information, predict, predictive_entropy

    data = classification(settings["dataset"], seed)
    model = train_mlp(data, seed, epochs=settings["epochs"],
                      mlp_args={"width": settings["width"], "depth": settings["depth"], "p": settings["p"]}).model
    noise = torch.randn(data.test.x.shape, generator=torch.Generator().manual_seed(seed)) * settings["noise"]
    scores = {}
    for name, x in (("clean", data.test.x), ("shifted", data.test.x + noise)):
        probs = predict(model, x, samples=settings["samples"], seed=seed).samples.softmax(-1)
        scores[name] = {"entropy": predictive_entropy(probs).tolist(), "mi": mutual_information(probs).tolist()}
    return {key: auroc(scores["clean"][key], scores["shifted"][key]) for key in ("entropy", "mi")} | {
        "mean_entropy_clean": sum(scores["clean"]["entropy"]) / len(data.test.y),
        "mean_entropy_shifted": sum(scores["shifted"]["entropy"]) / len(data.test.y)}


def run(settings: dict, seed: int) -> dict:
    return {"regression": _regression(settings["regression"], seed), "shift": _shift(settings["shift"], seed)}


def measure(raw: dict, settings: dict) -> dict:
    reg = settings["regression"]
    return {"coverage_error": abs(raw["regression"]["coverage"] - reg["nominal"]) - reg["tolerance"],
            "auroc_entropy": raw["shift"]["entropy"] - 0.5, "auroc_mi": raw["shift"]["mi"] - 0.5,
            "std_error_spearman": raw["regression"]["std_error_spearman"]}


def plot(ax, raws: list[dict], settings: dict) -> None:
    seeds = range(len(raws))
    ax.plot(seeds, [raw["regression"]["coverage"] for raw in raws], "o", label="diabetes 90% interval coverage")
    ax.plot(seeds, [raw["shift"]["entropy"] for raw in raws], "s", label="AUROC, predictive entropy")
    ax.plot(seeds, [raw["shift"]["mi"] for raw in raws], "^", label="AUROC, mutual information")
    ax.axhline(settings["regression"]["nominal"], color="C0", linestyle=":")
    ax.axhline(0.5, color="gray", linestyle=":")
    ax.set(title="per seed", xlabel="seed", ylim=(0.3, 1.02))
    ax.set_xticks(list(seeds))
    ax.legend(fontsize=7)


CLAIM = Claim(
    number=10, key="uncertainty", title="MC dropout gives useful uncertainty",
    setup_text="(a) diabetes regression, MLP 10-64-64-1 with p = 0.1, 300 epochs; 100 MC samples; 90% interval "
               "mean +- 1.645 sqrt(MC variance + noise), the noise variance estimated on the validation split; "
               "coverage on the test split. (b) MNIST-1D MLP with p = 0.5, 60 epochs; 50 MC samples on the test "
               "set clean and with N(0, 1) noise added (standardized units); AUROC of predictive entropy and of "
               "mutual information for telling shifted from clean.",
    expected="coverage within 5 points of 90% (|coverage - 0.9| - 0.05 < 0); AUROC above 0.5 for entropy and for "
             "mutual information (> 0); MC spread correlates with the error (Spearman > 0)",
    source="Gal & Ghahramani 2016, ICML, 'Dropout as a Bayesian Approximation'",
    effects=(Effect("coverage_error", "|coverage of 90% interval - 0.9| - 0.05", -1),
             Effect("auroc_entropy", "AUROC(predictive entropy, shifted vs clean) - 0.5", +1),
             Effect("auroc_mi", "AUROC(mutual information, shifted vs clean) - 0.5", +1),
             Effect("std_error_spearman", "Spearman(MC variance, |error|), diabetes test", +1, primary=False)),
    seeds=5, setup=setup, run=run, measure=measure, plot=plot)
