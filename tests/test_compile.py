"""torch.compile: backward regenerates the forward's own mask under every backend.

Seeded modules: compiled and eager outputs and gradients agree bit for bit over several steps.
Unseeded modules (whose key may come from inductor's own generator): each step's input gradient is
zero exactly where that step's output is. The matrix is kept small: inductor compiles are slow.
"""

import copy

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import droplab.nn as dnn

BACKENDS = ["eager", "aot_eager", pytest.param("inductor", marks=pytest.mark.slow)]


class _Scale(nn.Module):
    """An element-wise learned scale: no reduction, so compiled arithmetic is eager's bit for bit."""

    def __init__(self, shape) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(shape))

    def forward(self, x):
        return x * self.w


def _mlp() -> nn.Sequential:
    """Two seeded dropout sites (element-wise, channel) around element-wise parameters."""
    torch.manual_seed(0)
    return nn.Sequential(_Scale((5, 4, 8)), dnn.Dropout(0.5, seed=3), _Scale((5, 4, 8)),
                         dnn.Dropout1d(0.3, seed=4), _Scale((5, 4, 8)))


def _step(model: nn.Module, x: torch.Tensor):
    """One training step's output and the gradients of the input and every parameter."""
    x = x.detach().clone().requires_grad_(True)
    model.zero_grad()
    y = model(x)
    y.backward(torch.linspace(-1, 1, y.numel()).reshape(y.shape))
    return y.detach(), [x.grad] + [p.grad.clone() for p in model.parameters()]


def _assert_steps_equal(compiled_model, eager, x, steps=3):
    for t in range(steps):
        y_c, grads_c = _step(compiled_model, x)
        y_e, grads_e = _step(eager, x)
        torch.testing.assert_close(y_c, y_e, rtol=0, atol=0, msg=f"output, step {t}")
        for i, (a, b) in enumerate(zip(grads_c, grads_e)):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"gradient {i}, step {t}")


@pytest.mark.parametrize("fullgraph", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_seeded_compiled_equals_eager_outputs_and_gradients(backend, fullgraph):
    torch._dynamo.reset()
    eager = _mlp()
    model = copy.deepcopy(eager)
    compiled = torch.compile(model, backend=backend, fullgraph=fullgraph)
    x = torch.randn(5, 4, 8)
    _assert_steps_equal(compiled, eager, x)
    assert int(model[1].step) == int(eager[1].step) == 3


class _Checkpointed(nn.Module):
    """The MLP with its first half under torch.utils.checkpoint (recomputed in backward)."""

    def __init__(self, mlp: nn.Sequential) -> None:
        super().__init__()
        self.mlp = mlp

    def forward(self, x):
        h = checkpoint(self.mlp[:2], x, use_reentrant=False)
        return self.mlp[2:](h)


@pytest.mark.parametrize("backend", BACKENDS)
def test_seeded_checkpoint_inside_the_compiled_region(backend):
    torch._dynamo.reset()
    eager = _mlp()
    model = _Checkpointed(copy.deepcopy(eager))
    compiled = torch.compile(model, backend=backend)
    _assert_steps_equal(compiled, eager, torch.randn(5, 4, 8))


@pytest.mark.parametrize("backend, fullgraph", [("aot_eager", True), ("aot_eager", False),
                                                pytest.param("inductor", True, marks=pytest.mark.slow)])
def test_unseeded_gradient_is_zero_exactly_where_its_own_output_is(backend, fullgraph):
    torch._dynamo.reset()
    site = dnn.Dropout(0.5)
    compiled = torch.compile(site, backend=backend, fullgraph=fullgraph)
    outputs = []
    for _ in range(3):
        x = (torch.rand(256) + 0.5).requires_grad_(True)  # no zeros in the input
        y = compiled(x)
        y.backward(torch.ones_like(y))
        assert torch.equal(x.grad == 0, y == 0)
        torch.testing.assert_close(x.grad[y != 0], torch.full_like(x.grad[y != 0], 2.0), rtol=0, atol=0)
        outputs.append(y != 0)
    assert not torch.equal(outputs[0], outputs[1])  # a fresh mask each step


@pytest.mark.slow
def test_unseeded_checkpoint_inside_the_compiled_region():
    torch._dynamo.reset()
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(8, 8), dnn.Dropout(0.5))
    compiled = torch.compile(lambda x: checkpoint(block, x, use_reentrant=False) * 1.0, backend="inductor")
    for _ in range(2):
        x = torch.randn(6, 8, requires_grad=True)
        y = compiled(x)
        y.backward(torch.ones_like(y))
        # d y / d x = (mask * 2) W: the mask this forward used, read off its output
        mask = (y != 0).float() * 2.0
        torch.testing.assert_close(x.grad, mask @ block[0].weight, rtol=1e-6, atol=1e-6)


def test_set_rate_costs_no_graph_break():
    # a new rate used to break the graph (math.isnan on the symbolic float dynamo makes of a changing rate)
    import droplab

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = nn.Sequential(nn.Linear(4, 4), dnn.Dropout(0.1, seed=0))
    compiled = torch.compile(model, backend="eager")
    x = torch.ones(2, 4)
    for p in (0.1, 0.2, 0.3, 0.4):
        droplab.set_rate(model, p)
        compiled(x)
        explanation = torch._dynamo.explain(model)(x)
        assert explanation.graph_break_count == 0, explanation.break_reasons
    assert not torch._dynamo.utils.counters["graph_break"], dict(torch._dynamo.utils.counters["graph_break"])
    # and the compiled model uses the new rate: the same mask as eager at the same step
    droplab.set_rate(model, 0.5)
    model[1].reseed(3, step=7)
    y = compiled(x)
    model[1].reseed(3, step=7)
    torch.testing.assert_close(y, model(x), rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_functional_ops_compiled_regenerate_their_masks(backend):
    import droplab.functional as F

    torch._dynamo.reset()

    def f(x, step):
        h = F.dropout(x, 0.5, True, seed=11, step=step)
        h = F.dropout2d(h, 0.3, True, seed=12, step=step)
        return F.alpha_dropout(h, 0.2, True, seed=13, step=step) * 3.0

    compiled = torch.compile(f, backend=backend, fullgraph=True)
    g = torch.linspace(-1, 1, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    for t in range(2):
        step = torch.tensor(t)
        xs = [torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(t)).requires_grad_(True)
              for _ in range(2)]
        y_c, y_e = compiled(xs[0], step), f(xs[1], step)
        y_c.backward(g)
        y_e.backward(g)
        torch.testing.assert_close(y_c, y_e, rtol=0, atol=0)
        torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=0, atol=0)
    # unseeded: a fresh key per call, and the gradient follows that call's own mask
    unseeded = torch.compile(lambda x: F.dropout(x, 0.5, True), backend=backend, fullgraph=True)
    x = (torch.rand(128) + 0.5).requires_grad_(True)
    y = unseeded(x)
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad == 0, y == 0)


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_seeded_checkpoint_under_fullgraph_with_dynamos_side_effect_switch(backend):
    # dynamo refuses a side effect (the step advance) inside a checkpointed region under fullgraph=True
    # unless told not to replay it in backward, which is exactly right for a counter: the recomputed
    # region reads the step value it was given, and the step advances once per forward
    torch._dynamo.reset()
    eager = _mlp()
    model = _Checkpointed(copy.deepcopy(eager))
    with torch._dynamo.config.patch(skip_fwd_side_effects_in_bwd_under_checkpoint=True):
        compiled = torch.compile(model, backend=backend, fullgraph=True)
        _assert_steps_equal(compiled, eager, torch.randn(5, 4, 8))
    assert int(model.mlp[1].step) == 3


def test_unseeded_checkpoint_under_fullgraph():
    torch._dynamo.reset()
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(8, 8), dnn.Dropout(0.5))
    compiled = torch.compile(lambda x: checkpoint(block, x, use_reentrant=False) * 1.0, backend="aot_eager",
                             fullgraph=True)
    for _ in range(2):
        x = torch.randn(6, 8, requires_grad=True)
        y = compiled(x)
        y.backward(torch.ones_like(y))
        torch.testing.assert_close(x.grad, ((y != 0).float() * 2.0) @ block[0].weight, rtol=1e-6, atol=1e-6)
