"""Claim 3: weight scaling approximates the ensemble of thinned networks (MC averaging meets it near k = 50)."""

from __future__ import annotations

from ..claim import Claim, Effect
from ..data import classification
from ..fit import train_mlp

MARGIN = 0.01  # accuracy difference (1 point) within which MC and weight scaling count as equal


def setup(quick: bool) -> dict:
    return {"dataset": "mnist1d", "width": 256, "depth": 2, "p": 0.5, "epochs": 15 if quick else 60,
            "ks": [1, 2, 5, 10, 20, 50, 100], "margin": MARGIN}


def run(settings: dict, seed: int) -> dict:
    from ...mc import compare_to_weight_scaling

    data = classification(settings["dataset"], seed)
    model = train_mlp(data, seed, epochs=settings["epochs"],
                      mlp_args={"width": settings["width"], "depth": settings["depth"], "p": settings["p"]}).model
    rows = compare_to_weight_scaling(model, [(data.test.x, data.test.y)], samples=settings["ks"], seed=seed)
    ws = rows[0]
    mc = {str(r["samples"]): {"acc": r["accuracy"], "nll": r["nll"]} for r in rows[1:]}
    crossing = next((k for k in settings["ks"] if mc[str(k)]["acc"] >= ws["accuracy"]), None)
    return {"ws_acc": ws["accuracy"], "ws_nll": ws["nll"], "mc": mc, "crossing_k": crossing}


def measure(raw: dict, settings: dict) -> dict:
    return {"mc50_ws_distance": abs(raw["mc"]["50"]["acc"] - raw["ws_acc"]) - settings["margin"],
            "ws_minus_mc1": raw["ws_acc"] - raw["mc"]["1"]["acc"]}


def plot(ax, raws: list[dict], settings: dict) -> None:
    ks = settings["ks"]
    for i, raw in enumerate(raws):
        ax.plot(ks, [raw["mc"][str(k)]["acc"] for k in ks], color="C0", marker=".", alpha=0.7,
                label="MC average of k samples" if i == 0 else None)
        ax.axhline(raw["ws_acc"], color="C1", alpha=0.7, label="weight scaling" if i == 0 else None)
    ax.set_xscale("log")
    ax.set(title="test accuracy against MC samples k", xlabel="k", ylabel="test acc")
    ax.legend(fontsize=8)


CLAIM = Claim(
    number=3, key="weight-scaling", title="Weight scaling approximates the dropout ensemble",
    setup_text="MLP 40-256-256-10, p = 0.5, 60 epochs on MNIST-1D; on the test set, the single eval pass "
               "(weight scaling) against the average of k = 1..100 MC dropout samples (droplab.mc).",
    expected="MC averaging with k = 50 is within 1 accuracy point of weight scaling (|difference| - 0.01 < 0), "
             "and weight scaling beats a single thinned network (> 0)",
    source="Srivastava et al. 2014, JMLR 15, sec. 7.5 and fig. 11",
    effects=(Effect("mc50_ws_distance", "|acc(MC, k=50) - acc(weight scaling)| - 0.01", -1),
             Effect("ws_minus_mc1", "acc(weight scaling) - acc(MC, k=1)", +1, primary=False)),
    seeds=5, setup=setup, run=run, measure=measure, plot=plot)
