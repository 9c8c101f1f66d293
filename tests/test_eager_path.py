"""The short eager path of the dropout modules (issue 21).

Where nothing traces or compiles, a module's training forward reaches the numba kernel through a few
Python frames and one autograd node; everywhere else it takes the registered ``torch.library`` op. Both
must draw the same masks bit for bit: the op path is forced here by a pass-through torch-function mode,
which is what any routing or tracing mode does to the modules.
"""

from __future__ import annotations

import copy
import os
import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode

import droplab.nn as dnn
from droplab.kernels import cpu

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
BITS = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
        torch.bfloat16: torch.int16}
MAX_FRAMES = 4  # Python frames from the module's forward (included) to the kernel (excluded)


class PassThrough(TorchFunctionMode):
    """A torch-function mode that changes nothing: with it active the modules take the registered op."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def _draw(module, x, grad, op_path: bool):
    x = x.clone().requires_grad_()
    mode = PassThrough() if op_path else None
    if mode is not None:
        mode.__enter__()
    try:
        y = module(x)
        (gx,) = torch.autograd.grad(y, x, grad)
    finally:
        if mode is not None:
            mode.__exit__(None, None, None)
    return y.detach(), gx, type(y.grad_fn).__name__


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(BITS[t.dtype])


CASES = [
    ("Dropout seeded, 16", lambda: dnn.Dropout(0.3, seed=5), (16,), None),
    ("Dropout unseeded, 64x128", lambda: dnn.Dropout(0.5), (64, 128), None),
    ("Dropout classic, odd size", lambda: dnn.Dropout(0.25, seed=2**64 - 3, scaling="classic"), (7, 13), None),
    ("Dropout p=1", lambda: dnn.Dropout(1.0, seed=1), (5, 3), None),
    ("Dropout two threads' worth", lambda: dnn.Dropout(0.4, seed=9), (300_000,), None),
    ("Dropout transposed input", lambda: dnn.Dropout(0.5, seed=3), (6, 10), "transpose"),
    ("Dropout1d", lambda: dnn.Dropout1d(0.5, seed=4), (3, 5, 7), None),
    ("Dropout2d channels_last", lambda: dnn.Dropout2d(0.5, seed=6), (2, 5, 3, 4), "channels_last"),
    ("Dropout3d", lambda: dnn.Dropout3d(0.5), (2, 3, 2, 2, 3), None),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name,make,shape,layout", CASES, ids=[c[0] for c in CASES])
def test_eager_path_and_registered_op_draw_the_same_bits(name, make, shape, layout, dtype):
    """Same seed and step (or the same torch.manual_seed): same output and gradient bits on both paths,
    two steps each, and the same output layout."""
    gen = torch.Generator().manual_seed(len(shape))
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    if layout == "transpose":
        x = x.t()
    elif layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    grad = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype)
    eager_module = make()
    op_module = copy.deepcopy(eager_module)
    for step in range(2):
        torch.manual_seed(step)
        y_e, g_e, node_e = _draw(eager_module, x, grad, op_path=False)
        torch.manual_seed(step)
        y_o, g_o, node_o = _draw(op_module, x, grad, op_path=True)
        assert node_e == "_EagerDropoutBackward" and "masked_scale" in node_o, (node_e, node_o)
        assert torch.equal(_bits(y_e), _bits(y_o)) and torch.equal(_bits(g_e), _bits(g_o)), (name, dtype, step)
        assert y_e.stride() == y_o.stride() and y_e.dtype == dtype
    if eager_module.seeded:
        assert int(eager_module.step) == int(op_module.step) == 2


def _kernel_codes() -> set:
    """Where the numba kernels' code starts: numba reports a jitted call to a profiler as a Python frame
    with a code object of its own, named (file, name, first line) as the Python function."""
    codes = set()
    for value in vars(cpu).values():
        for candidate in (value, getattr(value, "serial", None), getattr(value, "parallel", None)):
            py_func = getattr(candidate, "py_func", None)
            if py_func is not None:
                code = py_func.__code__
                codes.add((code.co_filename, code.co_name, code.co_firstlineno))
    return codes


def _frames_to_kernel(fn, forward_code) -> tuple[list[list[str]], int]:
    """Run ``fn`` under ``sys.setprofile``; for each kernel entry, the Python frames between the module's
    ``forward`` (included) and the kernel (excluded), and the number of calls into droplab's code (the
    kernel included; torch's own Python, such as ``autograd.grad``'s, is not counted).

    The stack is kept from call and return events (a frame called back from C++, as the registered op's
    implementation is, has no ``f_back`` to walk).
    """
    kernels = _kernel_codes()
    chains: list[list[str]] = []
    stack: list = []
    calls = 0

    def profile(frame, event, arg):
        nonlocal calls
        if event == "return":
            if stack:
                stack.pop()
            return
        if event != "call":
            return
        code = frame.f_code
        calls += f"{os.sep}droplab{os.sep}" in code.co_filename
        if (code.co_filename, code.co_name, code.co_firstlineno) in kernels:
            starts = [i for i, c in enumerate(stack) if c is forward_code]
            chains.append([c.co_name for c in stack[starts[-1]:]] if starts else ["<no forward on the stack>"])
        stack.append(code)

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return chains, calls


@pytest.mark.parametrize("seed", [None, 11], ids=["unseeded", "seeded"])
@pytest.mark.parametrize("shape", [(16,), (64, 128)], ids=["16", "64x128"])
def test_training_forward_reaches_the_kernel_through_few_frames_and_one_node(seed, shape):
    """The hot path cannot silently grow: <= 4 frames from forward to the kernel, forward and backward each
    enter the kernel once, and the output's graph is one node over the input's accumulator."""
    module = dnn.Dropout(0.5, seed=seed)
    x = torch.randn(shape, requires_grad=True)
    grad = torch.randn(shape)
    torch.autograd.grad(module(x), x, grad)  # compile or load the kernels first
    forward_code = dnn.Dropout.forward.__code__
    out = {}
    chains, calls = _frames_to_kernel(lambda: out.setdefault("y", module(x)), forward_code)
    assert len(chains) == 1 and len(chains[0]) <= MAX_FRAMES, chains
    assert calls <= 10, calls  # 66 calls per forward+backward before the eager path
    y = out["y"]
    assert type(y.grad_fn).__name__ == "_EagerDropoutBackward"
    assert [type(n).__name__ for n, _ in y.grad_fn.next_functions] == ["AccumulateGrad"]
    backward_code = type(y.grad_fn)._forward_cls.backward.__code__
    chains, calls = _frames_to_kernel(lambda: torch.autograd.grad(y, x, grad), backward_code)
    assert len(chains) == 1 and len(chains[0]) <= MAX_FRAMES - 1, chains
    assert calls <= 3, calls


def test_the_frame_counter_sees_the_registered_op_path_as_longer():
    """The counter above can fail: under a mode the same forward goes through the functional and the op."""
    module = dnn.Dropout(0.5, seed=1)
    x = torch.randn(16)
    module(x)
    with PassThrough():
        chains, calls = _frames_to_kernel(lambda: module(x), dnn.Dropout.forward.__code__)
    assert len(chains) == 1 and len(chains[0]) > MAX_FRAMES and calls > 10, (chains, calls)


@pytest.mark.parametrize("make", [lambda: dnn.Dropout(0.5, seed=1).eval(), lambda: dnn.Dropout(0.5).eval(),
                                  lambda: dnn.Dropout(0.0, seed=1), lambda: dnn.Dropout2d(0.3).eval()],
                         ids=["eval seeded", "eval unseeded", "p=0 training", "Dropout2d eval"])
def test_inference_and_p_zero_return_before_anything(make):
    """Evaluation (inverted scaling) and p = 0 return the input itself from forward: no call, no counter,
    no draw from torch's generator."""
    module = make()
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    state = torch.get_rng_state()
    step = None if not module.seeded else int(module.step)
    names = []

    def profile(frame, event, arg):
        if event == "call":
            names.append(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        y = module(x)
    finally:
        sys.setprofile(None)
    assert y is x
    assert names.count("forward") == 1 and not [n for n in names if n not in ("forward", "_call_impl",
                                                                              "_wrapped_call_impl")], names
    assert torch.equal(torch.get_rng_state(), state) and (step is None or int(module.step) == step)


def test_the_eager_path_steps_aside_for_every_transform():
    """vmap, fx, compile-time flags, forced backends and subclasses all take the registered op (which they
    can see), and draw what the eager path draws."""
    from droplab.kernels import use_backend

    module = dnn.Dropout(0.5, seed=3)
    x = torch.randn(4, 6)
    expected = copy.deepcopy(module)(x)
    with use_backend("reference"):
        assert torch.equal(copy.deepcopy(module)(x), expected)
    traced = torch.fx.symbolic_trace(torch.nn.Sequential(copy.deepcopy(module)))
    assert [n.op for n in traced.graph.nodes] == ["placeholder", "call_module", "output"]
    assert torch.equal(traced(x), expected)
    batched = torch.func.vmap(lambda row: copy.deepcopy(module)(row), randomness="same")(x[:1])
    assert batched.shape == (1, 6)

    class Sub(torch.Tensor):
        pass

    y = copy.deepcopy(module)(x.as_subclass(Sub))
    assert torch.equal(y.as_subclass(torch.Tensor), expected)


def test_checkpoint_recomputation_replays_the_eager_draw():
    """A checkpointed region recomputed in backward draws the mask its forward drew (eager path both times)."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(8, 8), dnn.Dropout(0.5))
    x = torch.randn(4, 8, requires_grad=True)
    reference = copy.deepcopy(layer)
    x_ref = x.detach().clone().requires_grad_()
    torch.manual_seed(1)
    checkpoint(layer, x, use_reentrant=False).sum().backward()
    torch.manual_seed(1)
    reference(x_ref).sum().backward()
    assert torch.equal(x.grad, x_ref.grad)


def test_double_backward_and_forward_mode_on_the_eager_path():
    """The node is the linear map ``x -> mask * scale * x``: its backward can be differentiated again
    (create_graph), and forward-mode AD pushes a tangent through the same mask."""
    module = dnn.Dropout(0.4, seed=8)
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    y = module(x)
    assert type(y.grad_fn).__name__ == "_EagerDropoutBackward"
    mask_scale = dnn.Dropout(0.4, seed=8)(torch.ones(5, 7, dtype=torch.float64))  # same seed and step
    v = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(y, x, v, create_graph=True)
    assert torch.equal(gx, v * mask_scale)
    (gv,) = torch.autograd.grad(gx.sum(), v)  # d/dv of sum(mask * scale * v)
    assert torch.equal(gv, mask_scale)
    import torch.autograd.forward_ad as fwAD

    tangent = torch.randn(5, 7, dtype=torch.float64)
    again = dnn.Dropout(0.4, seed=8)
    with fwAD.dual_level():
        out = again(fwAD.make_dual(x.detach(), tangent))
        primal, jvp = fwAD.unpack_dual(out)
    assert torch.equal(primal, y.detach()) and torch.equal(jvp, tangent * mask_scale)
