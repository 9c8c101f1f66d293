"""Forward-mode AD and torch.func transforms (grad, jvp, vmap) on every masked op, eager and registered.

Reference for every check: the op itself applied slice by slice, or to the tangent, with the same integers
(a masked op is linear in its input for a fixed mask), or autograd's own backward; torch's gradcheck
compares both with finite differences.
"""

import pytest
import torch
from torch.autograd import forward_ad as fwAD

import droplab.functional as F
from droplab.kernels import variant_ops

torch.manual_seed(0)
X = torch.randn(2, 3, 6, 6, dtype=torch.float64)
IDX = torch.randint(0, 7, (2, 3))
W = torch.randn(7, 4, dtype=torch.float64)
LOGIT = torch.tensor(-1.0, dtype=torch.float64)


def _rows(src):  # the row mask of an embedding output (sparse / scale_grad_by_freq lookups), directly on the op
    return variant_ops.rows_masked_scale(src, IDX, F.seed_tensor(5), torch.tensor(2), 0, 0, 2**31, 2.0)


# (name, f, input): f is linear in its input for a fixed seed; Concrete dropout too (its logit held fixed)
LINEAR = [
    ("dropout", lambda a: F.dropout(a, 0.5, seed=3), X),
    ("dropout-noise-shape", lambda a: F.dropout(a, 0.5, seed=3, noise_shape=(None, 1, None, 1)), X),
    ("dropout2d", lambda a: F.dropout2d(a, 0.3, True, seed=1), X),
    ("dropout3d", lambda a: F.dropout3d(a, 0.3, True, seed=1), X),
    ("gaussian", lambda a: F.gaussian_dropout(a, 0.3, seed=1), X),
    ("dropblock2d", lambda a: F.dropblock2d(a, 0.3, 3, seed=1), X),
    ("dropblock2d-shared", lambda a: F.dropblock2d(a, 0.3, 3, seed=1, per_channel=False), X),
    ("concrete", lambda a: F.concrete_dropout(a, LOGIT, seed=1), X),
    ("embedding", lambda w: F.embedding_dropout(IDX, w, 0.4, seed=1), W),
    ("embedding-padding", lambda w: F.embedding_dropout(IDX, w, 0.4, seed=1, padding_idx=2), W),
    ("rows_masked_scale", _rows, torch.randn(2, 3, 4, dtype=torch.float64)),
]
# affine in the input: the tangent is f(x + t) - f(x)
AFFINE = [
    ("alpha", lambda a: F.alpha_dropout(a, 0.3, True, seed=1), X),
    ("feature_alpha", lambda a: F.feature_alpha_dropout(a, 0.3, True, seed=1), X),
]
ALL = LINEAR + AFFINE
ids = [name for name, _, _ in ALL]


def _linear_part(f, x, t):
    return f(t) if any(f is g for _, g, _ in LINEAR) else f(x + t) - f(x)


@pytest.mark.parametrize("name,f,x", ALL, ids=ids)
def test_forward_ad_tangent_takes_the_forward_mask(name, f, x):
    t = torch.randn_like(x)
    with fwAD.dual_level():
        y = f(fwAD.make_dual(x, t))
        primal, tangent = fwAD.unpack_dual(y)
    torch.testing.assert_close(primal, f(x), rtol=0, atol=0)
    assert tangent is not None  # a registered op alone drops it silently (a zero derivative)
    torch.testing.assert_close(tangent, _linear_part(f, x, t), rtol=1e-12, atol=1e-12)
    out, jvp_tangent = torch.func.jvp(f, (x,), (t,))
    torch.testing.assert_close(jvp_tangent, tangent, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,f,x", ALL, ids=ids)
def test_gradcheck_batched_grad_forward_ad_and_gradgrad(name, f, x):
    leaf = x.clone().requires_grad_()
    # padding_idx: the padding row gets no gradient though the lookup reads it (F.embedding's rule), so
    # backward is not the finite-difference derivative there; its double backward is checked below
    assert name == "embedding-padding" or torch.autograd.gradcheck(
        f, (leaf,), check_batched_grad=True, check_forward_ad=True, check_batched_forward_grad=True,
        check_undefined_grad=True)
    assert torch.autograd.gradgradcheck(f, (leaf,), check_batched_grad=True)
    assert torch.autograd.gradgradcheck(f, (leaf,), check_fwd_over_rev=True, check_rev_over_rev=False,
                                        check_undefined_grad=False)


@pytest.mark.parametrize("name,f,x", ALL, ids=ids)
def test_vmap_equals_the_op_slice_by_slice_and_func_grad_equals_autograd(name, f, x):
    batch = torch.stack([x, 2 * x, -x])
    torch.testing.assert_close(torch.func.vmap(f)(batch), torch.stack([f(b) for b in batch]), rtol=0, atol=0)
    moved = batch.movedim(0, 1)  # a batch axis that is not the first
    torch.testing.assert_close(torch.func.vmap(f, in_dims=1)(moved), torch.stack([f(b) for b in batch]),
                               rtol=0, atol=0)
    leaf = x.clone().requires_grad_()
    f(leaf).pow(2).sum().backward()
    torch.testing.assert_close(torch.func.grad(lambda a: f(a).pow(2).sum())(x), leaf.grad, rtol=1e-12, atol=1e-12)


def test_jacobians_and_hessian_of_dropout_are_the_mask():
    x = torch.randn(3, 4, dtype=torch.float64)
    keep = F.dropout(torch.ones_like(x), 0.5, seed=3)  # the mask, scaled
    jac = torch.func.jacrev(lambda a: F.dropout(a, 0.5, seed=3))(x)
    torch.testing.assert_close(jac, torch.diag(keep.flatten()).reshape(3, 4, 3, 4))
    torch.testing.assert_close(torch.func.jacfwd(lambda a: F.dropout(a, 0.5, seed=3))(x), jac)
    hess = torch.func.hessian(lambda a: F.dropout(a, 0.5, seed=3).pow(2).sum())(x)
    torch.testing.assert_close(hess, torch.diag(2 * keep.flatten() ** 2).reshape(3, 4, 3, 4))


def test_concrete_forward_ad_in_the_logit():
    x = torch.randn(4, 5, dtype=torch.float64)
    f = lambda logit: F.concrete_dropout(x, logit, seed=2)  # noqa: E731
    logit = torch.tensor(-0.5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (logit,), check_forward_ad=True)
    _, tangent = torch.func.jvp(f, (logit.detach(),), (torch.ones((), dtype=torch.float64),))
    torch.testing.assert_close(tangent, torch.func.jacrev(f)(logit.detach()))


def test_vmap_randomness_follows_torch():
    """seed=None draws a key: vmap's randomness flag decides it, as for torch's own dropout."""
    x = torch.ones(4, 64, dtype=torch.float64)
    f = lambda a: F.dropout(a, 0.5)  # noqa: E731
    with pytest.raises(RuntimeError, match="randomness"):
        torch.func.vmap(f)(x)
    with pytest.raises(RuntimeError, match="randomness"):
        torch.func.vmap(torch.nn.functional.dropout)(x)  # torch raises the same
    torch.manual_seed(1)
    same = torch.func.vmap(f, randomness="same")(x)
    torch.manual_seed(1)
    key = F.fresh_key()
    one = F.dropout(x[0], 0.5, seed=key)
    torch.testing.assert_close(same, one.expand_as(x), rtol=0, atol=0)  # one key, one mask for every slice
    different = torch.func.vmap(f, randomness="different")(x)
    masks = {tuple((row != 0).tolist()) for row in different}
    assert len(masks) == 4  # one key per slice: 64 independent draws each, equal with probability 2**-64
    # a fixed seed is a pure function: the same mask for every slice whatever the flag
    fixed = torch.func.vmap(lambda a: F.dropout(a, 0.5, seed=9), randomness="different")(x)
    torch.testing.assert_close(fixed, F.dropout(x[0], 0.5, seed=9).expand_as(x), rtol=0, atol=0)


@pytest.mark.parametrize("op", ["masked_scale", "gaussian_scale", "dropblock_scale", "concrete_scale", "noise",
                                "embedding_dropout", "embedding_dropout_backward", "rows_masked_scale"])
def test_every_registered_op_has_its_own_batching_rule(op):
    # without one, torch.func.vmap runs its per-slice fallback (with a performance warning)
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"droplab::{op}", "FuncTorchBatched")


def test_the_registered_op_batches_like_the_op_slice_by_slice():
    x = torch.randn(3, 5, dtype=torch.float64)
    seed, step = F.seed_tensor(3), torch.tensor(1)
    out = torch.func.vmap(lambda a: torch.ops.droplab.masked_scale(a, seed, step, 0, 0, 2**31, 2.0, [5]))(x)
    torch.testing.assert_close(out, torch.stack([F.dropout(r, 0.5, seed=3, step=1) for r in x]), rtol=0, atol=0)
    seeds = torch.stack([F.seed_tensor(s) for s in (1, 2, 3)])  # batched counters: one call per slice
    out = torch.func.vmap(lambda a, s: torch.ops.droplab.masked_scale(a, s, step, 0, 0, 2**31, 2.0, [5]))(x, seeds)
    torch.testing.assert_close(out, torch.stack([F.dropout(r, 0.5, seed=s, step=1) for r, s in zip(x, (1, 2, 3))]),
                               rtol=0, atol=0)
    noise = torch.func.vmap(lambda a: torch.ops.droplab.noise(a, seed, step, 0, 0, "normal", [4]))(x)
    torch.testing.assert_close(noise, torch.ops.droplab.noise(x, seed, step, 0, 0, "normal", [4]).expand(3, 4),
                               rtol=0, atol=0)  # the noise reads no value of ``like``: the same for every slice
