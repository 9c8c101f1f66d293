"""Claim 3: weight scaling matches the Monte-Carlo average of thinned networks (equivalence, TOST)."""

from __future__ import annotations

from ..claim import Arm, Claim, Effect, Part
from .common import LR_CANDIDATES, mlp_arm, summary

KS = (1, 2, 5, 10, 20, 50, 100)


def settings(tier: str) -> dict:
    return {"tier": tier, "p": 0.5, "ks": list(KS)}


def run(settings: dict, arm: str, seed: int, hp: dict) -> dict:
    from ...mc import compare_to_weight_scaling
    from .common import mnist1d_splits

    trained = mlp_arm(seed, settings["tier"], lr=hp["lr"], p=settings["p"])
    test = mnist1d_splits(seed).test
    rows = compare_to_weight_scaling(trained.model, [(test.x, test.y)], samples=settings["ks"], seed=seed)
    out = summary(trained)
    out.update(ws_acc=rows[0]["accuracy"], ws_nll=rows[0]["nll"],
               mc={str(r["samples"]): {"acc": r["accuracy"], "nll": r["nll"]} for r in rows[1:]})
    return out


def measure(raws: dict, settings: dict) -> dict:
    raw = raws["dropout"]
    return {"mc50_minus_ws": raw["mc"]["50"]["acc"] - raw["ws_acc"],
            "ws_minus_mc1": raw["ws_acc"] - raw["mc"]["1"]["acc"],
            "mc50_minus_ws_nll": raw["mc"]["50"]["nll"] - raw["ws_nll"]}


def plot(ax, raws: list[dict], settings: dict) -> None:
    ks = settings["ks"]
    for i, raw in enumerate(raws):
        ax.plot(ks, [raw["dropout"]["mc"][str(k)]["acc"] - raw["dropout"]["ws_acc"] for k in ks], color="C0",
                marker=".", alpha=0.6, label="per seed" if i == 0 else None)
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.set_xscale("log")
    ax.set(title="acc(MC average of k) - acc(weight scaling)", xlabel="k samples", ylabel="accuracy difference")
    ax.legend(fontsize=7)


CLAIM = Claim(
    number=3, key="weight-scaling", title="Weight scaling matches the Monte-Carlo dropout ensemble",
    source="Srivastava et al. 2014, JMLR 15, sec. 7.5 and fig. 11",
    statement="Scaling the weights by the retention probability at test time approximates averaging the "
              "predictions of the exponentially many thinned networks: Monte-Carlo averaging of k sampled "
              "networks reaches the weight-scaled network's test error at about k = 50.",
    regime="A trained dropout network (p = 0.5) large enough that the thinned networks differ; the comparison "
           "is on the 1000 test signals of each seed's draw.",
    mechanism="The full curve of MC accuracy against k (1 to 100) and the NLL of MC-50 against weight scaling.",
    setup_text="The claim-1 dropout arm (MLP 40-256-256-10, p = 0.5, learning rate tuned in {0.003, 0.001}, best-"
               "validation checkpoint); droplab.mc.compare_to_weight_scaling on the test split, k = 1..100 "
               "nested samples.",
    parts=(Part("a", "MC averaging of 50 thinned networks and weight scaling have the same test accuracy"),),
    arms=(Arm("dropout", LR_CANDIDATES),),
    effects=(Effect("mc50_minus_ws", "acc(MC, k=50) - acc(weight scaling)", +1, 0.01,
                    "equivalence margin of 1 accuracy point, the study's smallest accuracy difference of interest "
                    "(the paper's fig. 11 shows MC-50 and weight scaling within about 0.1 points of error on MNIST)",
                    kind="equivalence"),
             Effect("ws_minus_mc1", "acc(weight scaling) - acc(MC, k=1)", +1, 0.01,
                    "1 accuracy point: one thinned network against the averaged ensemble", primary=False),
             Effect("mc50_minus_ws_nll", "NLL(MC, k=50) - NLL(weight scaling)", -1, 0.02,
                    "0.02 nats per example: a few percent of the test NLL", primary=False)),
    settings=settings, run=run, measure=measure, plot=plot, baselines=("mnist1d-mlp",))
