"""``droplab bench models``: the table's structure and the pieces it stands on (timings are not asserted)."""

import json

import pytest
import torch

from droplab.bench import models as bench
from droplab.cli import main


@pytest.mark.slow
def test_bench_models_quick_reports_every_variant_and_mc_approach(tmp_path, capsys):
    pytest.importorskip("transformers")
    out = tmp_path / "models.json"
    assert main(["bench", "models", "--quick", "--models", "mlp", "cnn", "bert-32-eager", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "load average" in text and "| bert-32-eager | droplab, seed=0 |" in text
    data = json.loads(out.read_text())
    assert [(r["model"], r["variant"]) for r in data["steps"]] == [
        (m, v) for m in ("mlp", "cnn", "bert-32-eager") for v in bench.VARIANTS]
    assert [(r["model"], r["approach"]) for r in data["mc"]] == [
        (m, a) for m in ("mlp", "cnn", "bert-32-eager")
        for a in ("torch loop", "droplab loop, seed=None", "droplab mc.predict", "batched floor")]
    assert all(r["train_ms"] > 0 and r["infer_ms"] > 0 for r in data["steps"])
    counts = {(r["model"], r["variant"]): (r["interceptions_per_step"], r["routed_per_step"]) for r in data["steps"]}
    assert counts["mlp", "droplab, seed=None"] == counts["mlp", "torch"] == (0, 0)  # modules only: nothing routed
    assert counts["bert-32-eager", "torch"] == (0, 0) and counts["bert-32-eager", "droplab, seed=0"][1] > 0


def test_variants_share_weights_and_differ_only_in_dropout():
    case = bench.make_case("mlp", quick=True)
    models = bench.variants(case)
    weights = {name: [p.detach() for p in m.parameters()] for name, m in models.items()}
    assert all(all(torch.equal(a, b) for a, b in zip(weights["torch"], w)) for w in weights.values())
    kinds = {name: sorted({type(m).__module__.split(".")[0] for m in model.modules()
                           if "Dropout" in type(m).__name__}) for name, model in models.items()}
    assert kinds == {"no dropout": ["torch"], "torch": ["torch"], "droplab, seed=None": ["droplab"],
                     "droplab, seed=0": ["droplab"]}
    assert all(m.p == 0.0 for m in models["no dropout"].modules() if isinstance(m, torch.nn.Dropout))
    x = case.mc_inputs()
    with torch.no_grad():
        outputs = [model.eval()(x) for model in models.values()]
    assert all(torch.allclose(o, outputs[0]) for o in outputs)  # eval: every variant is the same function


def test_routing_counts_droplab_calls_only():
    from torch.overrides import TorchFunctionMode

    import droplab as dl

    class Foreign(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5))
    x = torch.randn(2, 4)
    assert bench.routing(lambda: model(x)) == (0, 0)
    with Foreign():
        assert bench.routing(lambda: model(x)) == (0, 0)  # a mode that is not droplab's does not count

    class Functional(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.dropout(x, 0.5, self.training)

    converted = dl.convert(Functional(), example_input=x)
    intercepted, routed = bench.routing(lambda: converted(x))
    assert routed == 1 and intercepted >= 0  # the functional call, drawn by droplab
