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
* bad rates (negative, above 1, NaN) raise the canonical ValueError; integer input raises TypeError.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

P_MESSAGE = "dropout probability has to be between 0 and 1, but got"


@dataclass
class Case:
    """One module under contract.

    ``make(p, seed)`` builds the module; ``shape`` is a valid input shape; ``eval_rule`` is
    ``"identity"``, ``"scale"`` (multiply by 1 - p) or ``callable(module, x) -> expected``.
    ``repr_args`` are the names that must appear in ``repr``. Flags switch off checks a variant
    does not define (each such switch needs a reason in ``notes``).
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
    notes: dict[str, str] = field(default_factory=dict)

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


CHECKS = [check_eval, check_shape_dtype, check_expectation, check_p_zero_and_one, check_repr,
          check_state_dict, check_gradcheck, check_bad_arguments]


def install(namespace: dict, cases: list[Case]) -> None:
    """Add ``test_contract_<check>`` functions, parametrized over ``cases``, to a test module."""
    for check in CHECKS:
        def test(case, _check=check):
            _check(case)

        name = f"test_contract_{check.__name__.removeprefix('check_')}"
        test.__name__ = name
        namespace[name] = pytest.mark.parametrize("case", cases, ids=[c.id for c in cases])(test)
