"""Compile whole: every droplab.nn module traces as one graph in training (0 graph breaks), and the
RNN modules that cannot say so and why."""

import pytest
import torch  # torch._dynamo: imported on first use by a test (torch's lazy attribute), not at collection
from torch import nn

import droplab.nn as dnn

# (module factory taking a seed or None, input): every module of droplab.nn but the RNN ones
MODULES = {
    "Dropout": (lambda s: dnn.Dropout(0.3, seed=s), lambda: torch.randn(4, 6)),
    "Dropout1d": (lambda s: dnn.Dropout1d(0.3, seed=s), lambda: torch.randn(2, 3, 5)),
    "Dropout2d": (lambda s: dnn.Dropout2d(0.3, seed=s), lambda: torch.randn(2, 3, 4, 4)),
    "Dropout3d": (lambda s: dnn.Dropout3d(0.3, seed=s), lambda: torch.randn(2, 3, 2, 2, 2)),
    "AlphaDropout": (lambda s: dnn.AlphaDropout(0.3, seed=s), lambda: torch.randn(4, 6)),
    "FeatureAlphaDropout": (lambda s: dnn.FeatureAlphaDropout(0.3, seed=s), lambda: torch.randn(2, 3, 4)),
    "InputDropout": (lambda s: dnn.InputDropout(0.3, seed=s), lambda: torch.randn(4, 6)),
    "GaussianDropout": (lambda s: dnn.GaussianDropout(0.3, seed=s), lambda: torch.randn(4, 6)),
    "DropBlock1d": (lambda s: dnn.DropBlock1d(0.2, 3, seed=s), lambda: torch.randn(2, 3, 9)),
    "DropBlock2d": (lambda s: dnn.DropBlock2d(0.2, 3, seed=s), lambda: torch.randn(2, 3, 8, 8)),
    "DropBlock3d": (lambda s: dnn.DropBlock3d(0.2, 2, seed=s), lambda: torch.randn(1, 2, 4, 4, 4)),
    "EmbeddingDropout": (lambda s: dnn.EmbeddingDropout(nn.Embedding(20, 4), 0.3, seed=s),
                         lambda: torch.randint(0, 20, (3, 5))),
    "LockedDropout": (lambda s: dnn.LockedDropout(0.3, seed=s), lambda: torch.randn(5, 2, 3)),
    "ConcreteDropout": (lambda s: dnn.ConcreteDropout(nn.Linear(6, 2), 0.2, seed=s), lambda: torch.randn(4, 6)),
    "DropPath": (lambda s: dnn.DropPath(0.3, seed=s), lambda: torch.randn(4, 6)),
    "DropConnect": (lambda s: dnn.DropConnect(nn.Linear(6, 2), 0.3, seed=s), lambda: torch.randn(4, 6)),
    "AttentionDropout": (lambda s: dnn.AttentionDropout(0.3, seed=s), lambda: torch.randn(2, 2, 3, 3)),
    "MultiheadSelfAttention": (lambda s: dnn.MultiheadSelfAttention(8, 2, 0.2, seed=s), lambda: torch.randn(2, 3, 8)),
    "TransformerBlock": (lambda s: dnn.TransformerBlock(8, 2, dropout=0.1, seed=s), lambda: torch.randn(2, 3, 8)),
}
RNN_MODULES = (dnn.VariationalLSTM, dnn.VariationalGRU, dnn.WeightDrop)


def test_every_module_of_droplab_nn_is_covered():
    exported = {name for name in dnn.__all__ if isinstance(getattr(dnn, name), type)
                and issubclass(getattr(dnn, name), nn.Module) and name != "StochasticModule"}
    assert exported == set(MODULES) | {cls.__name__ for cls in RNN_MODULES}


@pytest.mark.parametrize("seeded", [True, False], ids=["seed=int", "seed=None"])
@pytest.mark.parametrize("name", sorted(MODULES))
def test_zero_graph_breaks_in_training(name, seeded):
    make, data = MODULES[name]
    module = make(3 if seeded else None).train()
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(module)(data())
    assert explanation.graph_break_count == 0, [str(b.reason)[:300] for b in explanation.break_reasons]
    assert explanation.graph_count == 1


@pytest.mark.parametrize("name", ["DropBlock2d", "EmbeddingDropout", "GaussianDropout", "ConcreteDropout"])
def test_fullgraph_compile_equals_eager_with_gradients(name):
    """The variants' ops under fullgraph=True (aot_eager): output and gradients bit-identical to eager."""
    make, data = MODULES[name]
    eager, compiled_module = make(11).train(), make(11).train()
    compiled_module.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_module, fullgraph=True, backend="aot_eager")
    torch._dynamo.reset()
    x = data()
    for _ in range(2):  # two steps: backward must use its own forward's mask
        inputs = [x.clone().requires_grad_(x.is_floating_point()) for _ in range(2)]
        outs = [eager(inputs[0]), compiled(inputs[1])]
        assert torch.equal(outs[0], outs[1])
        for out in outs:
            out.pow(2).sum().backward()
        if x.is_floating_point():
            assert torch.equal(inputs[0].grad, inputs[1].grad)
        for p_eager, p_compiled in zip(eager.parameters(), compiled_module.parameters()):
            assert torch.equal(p_eager.grad, p_compiled.grad)


@pytest.mark.parametrize("cls", RNN_MODULES)
def test_rnn_modules_state_why_they_do_not_compile_whole(cls):
    assert "fullgraph" in cls.__doc__ and "graph break" in cls.__doc__
