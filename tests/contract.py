"""The contract every droplab dropout module passes.

A test module describes its modules as :class:`Case` objects and calls
``install(globals(), CASES)``, which adds one parametrized test per check:

* eval: identity (inverted scaling) or exact multiplication by q (classic), or a custom rule;
* shape and dtype preserved (float32, float64);
* expectation: the mean training output over many steps matches the inference output;
* p = 0 is the identity and p = 1 gives zeros in training (where the variant defines them);
* repr lists every constructor argument;
* state_dict round trip: a fresh module loaded from another's state draws the same next mask;
* gradcheck in float64 with the mask held fixed;
* bad rates (negative, above 1, NaN) raise the canonical ValueError; integer input raises TypeError;
* ``torch.compile(fullgraph=True)`` equals eager, outputs and gradients bit for bit over two steps,
  without recompiling for the second step;
* float16 and bfloat16 inputs give that dtype, equal to the float32 computation rounded;
* moved to the ``meta`` device it still runs (shapes only), and back on the CPU it draws what it drew;
* a deepcopy and a pickled copy draw the same masks as the original;
* ``torch.fx.symbolic_trace`` of a model holding it keeps it as one ``call_module`` node that runs as before;
* channels_last input gives channels_last output, equal to the contiguous result (4-D inputs);
* autograd saves no mask for backward, and a parameter-free module nothing but integers and the input;
* built with ``seed=None`` it keeps no counters in its ``state_dict`` and ``torch.manual_seed`` replays it.
"""

from __future__ import annotations

import copy
import math
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

P_MESSAGE = "dropout probability has to be between 0 and 1, but got"


@dataclass
class Case:
    """One module under contract.

    ``make(p, seed)`` builds the module (``seed=None``: the unseeded mode); ``shape`` is a valid input
    shape; ``eval_rule`` is ``"identity"``, ``"scale"`` (multiply by 1 - p) or
    ``callable(module, x) -> expected``.
    ``repr_args`` are the names that must appear in ``repr``. Flags switch off checks a variant
    does not define (each such switch needs a reason in ``notes``): ``half_dtypes`` lists the
    reduced-precision dtypes the variant supports, ``channels_last`` whether the op is element-wise
    (its 4-D output then keeps a channels_last layout), ``fullgraph`` whether it compiles as one graph
    (``notes["fullgraph"]`` says why not). ``known_failures`` maps a check's name (``"channels_last"``)
    to the reason it fails today: that check is a strict xfail for the case, so fixing it is noticed.
    """

    id: str
    make: Callable[[float, int], nn.Module]
    shape: tuple[int, ...]
    eval_rule: str | Callable = "identity"
    repr_args: tuple[str, ...] = ("p", "seed")
    p_zero_identity: bool = True
    p_one_zeros: bool = True
    expectation: bool = True
    expectation_p: float = 0.3
    expectation_steps: int = 400
    gradcheck: bool = True
    rejects_bad_p: bool = True
    make_input: Callable[[tuple[int, ...], torch.dtype], torch.Tensor] | None = None
    half_dtypes: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16)
    channels_last: bool = True
    fullgraph: bool = True
    notes: dict[str, str] = field(default_factory=dict)
    known_failures: dict[str, str] = field(default_factory=dict)

    def input(self, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
        if self.make_input is not None:
            return self.make_input(self.shape, dtype)
        g = torch.Generator().manual_seed(seed)
        return torch.randn(self.shape, generator=g, dtype=torch.float64).to(dtype)


class Adapter(nn.Module):
    """Base of contract adapters: wraps ``inner`` (whose forward is not tensor -> tensor) and forwards ``p``.

    A subclass defines ``forward`` as the tensor -> tensor map to check.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    @property
    def p(self) -> float:
        return self.inner.p

    @p.setter
    def p(self, value: float) -> None:
        self.inner.p = value


def _reset(module: nn.Module) -> None:
    """Rewind every droplab counter in ``module`` so the next forward redraws the same masks."""
    for m in module.modules():
        step = getattr(m, "step", None)
        if isinstance(step, torch.Tensor) and step.dtype == torch.int64:
            step.zero_()
        issued = getattr(m, "_issued", None)
        if issued is not None:
            issued.clear()


def _eval_expected(case: Case, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if callable(case.eval_rule):
        return case.eval_rule(module, x)
    if case.eval_rule == "identity":
        return x
    if case.eval_rule == "scale":
        return x * (1.0 - module.p)
    raise ValueError(case.eval_rule)


def check_eval(case: Case) -> None:
    module = case.make(0.4, 1).eval()
    x = case.input()
    expected = _eval_expected(case, module, x)
    torch.testing.assert_close(module(x), expected, rtol=1e-6, atol=1e-6)
    # inference draws no mask, so it does not advance the step
    step = getattr(module, "step", None)
    if isinstance(step, torch.Tensor):
        assert int(step) == 0


def check_shape_dtype(case: Case) -> None:
    for dtype in (torch.float32, torch.float64):
        module = case.make(0.3, 2).to(dtype).train()
        x = case.input(dtype)
        y = module(x)
        assert y.shape == x.shape and y.dtype == dtype


def check_expectation(case: Case) -> None:
    if not case.expectation:
        pytest.skip(case.notes.get("expectation", "variant does not preserve the expectation"))
    p = case.expectation_p
    module = case.make(p, 3).to(torch.float64)
    x = case.input(torch.float64)
    with torch.no_grad():
        expected = _eval_expected(case, module.eval(), x)
        module.train()
        total = torch.zeros_like(x)
        for _ in range(case.expectation_steps):
            total += module(x)
        mean = total / case.expectation_steps
    # per element the training output has variance about x^2 p/q (scaled); allow 5 standard errors
    # of the mean over the whole tensor rather than per element
    diff = (mean - expected).mean().abs().item()
    scale = x.abs().mean().item() * math.sqrt(p / (1 - p)) / math.sqrt(case.expectation_steps * x.numel())
    assert diff < 6 * scale + 1e-9, f"mean training output deviates by {diff:.3g} (allowed {6 * scale:.3g})"
    # and elementwise, loosely: no element is systematically off
    err = (mean - expected).abs().max().item()
    assert err < 8 * x.abs().max().item() * math.sqrt(p / (1 - p) / case.expectation_steps) + 1e-9


def check_p_zero_and_one(case: Case) -> None:
    x = case.input()
    if case.p_zero_identity:
        torch.testing.assert_close(case.make(0.0, 4).train()(x), x, rtol=0, atol=0)
    if case.p_one_zeros:
        y = case.make(1.0, 4).train()(x)
        assert torch.count_nonzero(y) == 0
    if not (case.p_zero_identity or case.p_one_zeros):
        pytest.skip(case.notes.get("p01", "variant defines neither endpoint"))


def check_repr(case: Case) -> None:
    text = repr(case.make(0.25, 5))
    for name in case.repr_args:
        assert f"{name}=" in text, f"{name} missing from repr: {text}"


def check_state_dict(case: Case) -> None:
    x = case.input()
    a = case.make(0.5, 6).train()
    for _ in range(3):
        a(x)
    b = case.make(0.5, 999).train()
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)


def check_gradcheck(case: Case) -> None:
    if not case.gradcheck:
        pytest.skip(case.notes.get("gradcheck", "not differentiable"))
    module = case.make(0.4, 7).to(torch.float64).train()
    x = case.input(torch.float64).requires_grad_(True)

    def fixed_mask(inp):
        _reset(module)
        return module(inp)

    assert torch.autograd.gradcheck(fixed_mask, (x,), eps=1e-6, atol=1e-5)


def check_bad_arguments(case: Case) -> None:
    if case.rejects_bad_p:
        for bad in (-0.1, 1.5, float("nan")):
            with pytest.raises(ValueError, match=P_MESSAGE):
                case.make(bad, 0)
        module = case.make(0.5, 0)
        with pytest.raises(ValueError, match=P_MESSAGE):
            module.p = 2.0
        assert module.p == 0.5  # a rejected assignment loses nothing
    module = case.make(0.5, 0).train()
    with pytest.raises(TypeError):
        module(torch.ones(case.shape, dtype=torch.int64))


def _train_step(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list]:
    """One training forward and backward: the output and the gradients of the input and every parameter."""
    x = x.detach().clone().requires_grad_(True)
    module.zero_grad()
    y = module(x)
    y.backward(torch.linspace(-1.0, 1.0, y.numel(), dtype=y.dtype).reshape(y.shape))
    grads = [x.grad] + [p.grad for p in module.parameters() if p.grad is not None]
    return y.detach(), grads


def check_compile_fullgraph(case: Case) -> None:
    if not case.fullgraph:
        pytest.skip(case.notes.get("fullgraph", "does not compile as one graph"))
    torch._dynamo.reset()
    x = case.input()
    eager = case.make(0.4, 8).train()
    compiled_module = case.make(0.4, 8).train()
    compiled_module.load_state_dict(eager.state_dict())
    # aot_eager runs the functionalized, partitioned forward and backward graphs with eager kernels:
    # the graph-level behaviour inductor sees, compared bit for bit (tests/test_compile.py runs inductor)
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(compiled_module, backend=counter, fullgraph=True)
    for step in range(2):
        y_c, grads_c = _train_step(compiled, x)
        y_e, grads_e = _train_step(eager, x)
        torch.testing.assert_close(y_c, y_e, rtol=0, atol=0, msg=f"output at step {step}")
        assert len(grads_c) == len(grads_e)
        for i, (a, b) in enumerate(zip(grads_c, grads_e)):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"gradient {i} at step {step}")
    # the counters advance inside the graph: a new step is not a new graph
    assert counter.frame_count == 1, f"compiled {counter.frame_count} times in two steps"


def check_half_precision(case: Case) -> None:
    if not case.half_dtypes:
        pytest.skip(case.notes.get("half", "variant does not support reduced precision"))
    for dtype in case.half_dtypes:
        module = case.make(0.4, 9).train()
        reference = copy.deepcopy(module)
        x = case.input().to(dtype)
        y = module.to(dtype)(x)
        assert y.dtype == dtype and y.shape == x.shape
        # the same masks in float32 on the same (rounded) input, rounded once more
        want = reference(x.float()).to(dtype)
        torch.testing.assert_close(y, want, rtol=1e-2, atol=1e-2, msg=str(dtype))


def check_meta_and_back(case: Case) -> None:
    module = case.make(0.4, 10).train()
    x = case.input()
    state = copy.deepcopy(module.state_dict())
    expected = copy.deepcopy(module)(x)
    meta = module.to("meta")
    y = meta(x.to("meta"))
    assert y.device.type == "meta" and y.shape == expected.shape and y.dtype == expected.dtype
    back = meta.to_empty(device="cpu")
    back.load_state_dict(state)
    _reset_to(back, state)
    torch.testing.assert_close(back(x), expected, rtol=0, atol=0)


def _reset_to(module: nn.Module, state: dict) -> None:
    """Load the counters of ``state`` again: a forward on the meta device advanced them."""
    module.load_state_dict(state)
    for m in module.modules():
        issued = getattr(m, "_issued", None)
        if issued is not None:
            issued.clear()


def check_deepcopy_and_pickle(case: Case) -> None:
    module = case.make(0.4, 11).train()
    x = case.input()
    module(x)  # a step taken, so the copies must carry the counters
    copies = [copy.deepcopy(module), pickle.loads(pickle.dumps(module))]
    expected = module(x)
    for other in copies:
        assert repr(other) == repr(module)
        torch.testing.assert_close(other(x), expected, rtol=0, atol=0)


class _Holder(nn.Module):
    """A model that holds the module under test (as a torch user's model would)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def _is_droplab(module: nn.Module) -> bool:
    """A droplab module (any class of droplab.nn, the RNN modules included), or an adapter around one."""
    if isinstance(module, Adapter):
        return _is_droplab(module.inner)
    return type(module).__module__.startswith("droplab.nn.")


def check_fx_trace(case: Case) -> None:
    model = _Holder(case.make(0.4, 12)).train()
    traced = torch.fx.symbolic_trace(model)
    called = [traced.get_submodule(node.target) for node in traced.graph.nodes if node.op == "call_module"]
    # a droplab module is one leaf node: its mask is drawn when the graph runs, never at trace time
    assert any(_is_droplab(m) for m in called), f"no droplab module left as a call_module node: {called}"
    inside = {id(sub) for m in called if _is_droplab(m) for sub in list(m.modules())[1:]}
    assert not any(id(m) in inside for m in called), "a droplab module was traced through"
    x = case.input()
    reference = copy.deepcopy(model)
    for _ in range(2):  # training: the traced graph draws what the model draws, step after step
        torch.testing.assert_close(traced(x), reference(x), rtol=0, atol=0)
    traced.eval()
    torch.testing.assert_close(traced(x), _eval_expected(case, traced.inner, x), rtol=1e-6, atol=1e-6)


def check_channels_last(case: Case) -> None:
    if len(case.shape) != 4:
        pytest.skip("a channels_last input needs a 4-D input shape")
    if not case.channels_last:
        pytest.skip(case.notes.get("channels_last", "not an element-wise op"))
    x = case.input()
    expected = case.make(0.4, 13).train()(x)
    y = case.make(0.4, 13).train()(x.contiguous(memory_format=torch.channels_last))
    assert y.is_contiguous(memory_format=torch.channels_last), f"strides {y.stride()}"
    # the same mask; a wrapped layer (a convolution) may round differently in the other layout
    torch.testing.assert_close(y, expected)


def _saved(module: nn.Module, x: torch.Tensor) -> list[tuple[str, torch.dtype, tuple[int, ...], int]]:
    """What autograd saves in a forward of ``module`` beyond integer scalars, the input and parameters:
    ``(kind, dtype, shape, bytes)`` with kind ``"mask"`` for a mask-like tensor (bool, or values 0 and
    one other constant) and ``"tensor"`` otherwise."""
    x = x.detach().clone().requires_grad_(True)
    allowed = {x.untyped_storage().data_ptr()} | {p.untyped_storage().data_ptr() for p in module.parameters()}
    saved = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        integer_scalar = t.numel() == 1 and not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)
        if not integer_scalar and t.untyped_storage().data_ptr() not in allowed:
            values = t.detach().unique() if t.numel() > 1 and t.dtype != torch.uint8 else None
            mask_like = values is not None and (t.dtype == torch.bool or (
                t.is_floating_point() and len(values) == 2 and bool((values == 0).any())))
            saved.append(("mask" if mask_like else "tensor", t.dtype, tuple(t.shape), t.numel() * t.element_size()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = module(x)
    y.sum().backward()
    return saved


def check_saves_no_mask(case: Case) -> None:
    if not case.gradcheck:
        pytest.skip(case.notes.get("gradcheck", "not differentiable"))
    x = case.input()
    module = case.make(0.4, 14).train()
    saved = _saved(module, x)
    masks = [entry for entry in saved if entry[0] == "mask"]
    assert not masks, f"a mask is saved for backward (it must be regenerated): {masks}"
    if not list(module.parameters()):
        # a parameter-free dropout module needs nothing but its counters to run backward: it saves no
        # more than it does in evaluation mode, where it draws no mask
        baseline = _saved(module.eval(), x)
        assert sum(e[-1] for e in saved) <= sum(e[-1] for e in baseline), (
            f"saved for backward beyond integers and the input: {saved} (in eval mode: {baseline})")


def check_unseeded(case: Case) -> None:
    module = case.make(0.4, None).train()
    counters = [k for k in module.state_dict() if k.rsplit(".", 1)[-1] in ("seed", "step")]
    assert not counters, f"an unseeded module keeps counters in its state_dict (torch's has none): {counters}"
    x = case.input()
    with torch.no_grad():
        torch.manual_seed(0)
        first = module(x)
        torch.manual_seed(0)
        again = module(x)
    torch.testing.assert_close(again, first, rtol=0, atol=0, msg="torch.manual_seed does not replay the mask")


CHECKS = [check_eval, check_shape_dtype, check_expectation, check_p_zero_and_one, check_repr,
          check_state_dict, check_gradcheck, check_bad_arguments, check_compile_fullgraph, check_half_precision,
          check_meta_and_back, check_deepcopy_and_pickle, check_fx_trace, check_channels_last, check_saves_no_mask,
          check_unseeded]


def install(namespace: dict, cases: list[Case]) -> None:
    """Add ``test_contract_<check>`` functions, parametrized over ``cases``, to a test module."""
    for check in CHECKS:
        def test(case, _check=check):
            _check(case)

        short = check.__name__.removeprefix("check_")
        name = f"test_contract_{short}"
        test.__name__ = name
        params = [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.known_failures[short])]
                               if short in c.known_failures else []) for c in cases]
        namespace[name] = pytest.mark.parametrize("case", params)(test)
