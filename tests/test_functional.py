"""droplab.functional: conventions, noise shapes, exact endpoints, backward and bad input."""

import warnings

import pytest
import torch

import droplab.functional as F
from droplab import rng
from droplab.kernels import use_backend

P_MESSAGE = "dropout probability has to be between 0 and 1, but got"


def test_inverted_training_scales_kept_units():
    x = torch.ones(1000)
    y = F.dropout(x, 0.25, seed=3)
    assert torch.equal(y.unique(), torch.tensor([0.0, 1 / 0.75]))
    keep = rng.keep_mask(1000, 0.25, seed=3)
    assert torch.equal(y != 0, keep)


def test_classic_training_does_not_scale_and_inference_multiplies_by_q():
    x = torch.randn(64, 32)
    y = F.dropout(x, 0.4, seed=1, scaling="classic")
    keep = rng.keep_mask(x.shape, 0.4, seed=1)
    assert torch.equal(y, torch.where(keep, x, 0.0))
    torch.testing.assert_close(F.dropout(x, 0.4, training=False, scaling="classic"), x * 0.6)
    assert F.dropout(x, 0.4, training=False) is x  # inverted inference is the identity


@pytest.mark.parametrize("scaling", ["inverted", "classic"])
def test_expectation_matches_inference_for_both_conventions(scaling):
    x = torch.linspace(-2, 3, 50, dtype=torch.float64)
    p, steps = 0.3, 4000
    mean = sum(F.dropout(x, p, seed=9, step=s, scaling=scaling) for s in range(steps)) / steps
    expected = F.dropout(x, p, training=False, scaling=scaling)
    # per element the sample mean has std |x| * sqrt(p q) / q_or_1 / sqrt(steps); allow 5 sigma
    sigma = x.abs() * (p * (1 - p)) ** 0.5 / ((1 - p) if scaling == "inverted" else 1.0) / steps**0.5
    assert ((mean - expected).abs() <= 5 * sigma + 1e-12).all()


def test_conventions_convert_into_each_other():
    # classic training output times 1/q is exactly the inverted training output for the same mask
    x = torch.randn(33, 17, dtype=torch.float64)
    inverted = F.dropout(x, 0.2, seed=4)
    classic = F.dropout(x, 0.2, seed=4, scaling="classic")
    torch.testing.assert_close(classic / 0.8, inverted, rtol=1e-15, atol=0)


def test_p_zero_and_one_exact_with_inf_and_nan():
    x = torch.tensor([1.0, float("inf"), float("nan"), -3.0])
    assert F.dropout(x, 0.0, seed=0) is x
    y = F.dropout(x, 1.0, seed=0)
    assert torch.equal(y, torch.zeros(4))


@pytest.mark.parametrize("noise_shape,shared_axes", [((None, None, 1, 1), (2, 3)), ((1, None, None, None), (0,)),
                                                     ((None, 1, None, 1), (1, 3)), ((None, 5, 4, 6), ())])
def test_noise_shape_shares_mask_along_size_one_axes(noise_shape, shared_axes):
    x = torch.ones(3, 5, 4, 6)
    y = F.dropout(x, 0.5, seed=2, noise_shape=noise_shape)
    kept = y != 0
    for axis in shared_axes:
        first = kept.narrow(axis, 0, 1)
        assert torch.equal(kept, first.expand_as(kept))
    mask_shape = F.resolve_noise_shape(x.shape, noise_shape)
    assert torch.equal(kept, rng.keep_mask(mask_shape, 0.5, seed=2).expand_as(kept))


@pytest.mark.parametrize("fn, shape, leading", [
    (F.dropout1d, (4, 6, 9), 2), (F.dropout1d, (6, 9), 1),
    (F.dropout2d, (4, 6, 3, 5), 2), (F.dropout2d, (4, 6, 9), 2),  # 3-D is (N, C, L), as in torch
    (F.dropout3d, (2, 6, 2, 3, 4), 2), (F.dropout3d, (6, 2, 3, 4), 1),
])
def test_channel_variants_drop_whole_channels(fn, shape, leading):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dropout2d's 3-D warning is checked below
        kept = fn(torch.ones(shape), 0.5, seed=8) != 0
    groups = kept.flatten(leading)
    assert (groups.all(-1) | (~groups).all(-1)).all()  # one value per leading index
    assert 0 < groups[..., 0].float().mean() < 1
    # and the mask is the one of the noise shape (leading sizes, then ones)
    mask_shape = shape[:leading] + (1,) * (len(shape) - leading)
    assert torch.equal(kept, rng.keep_mask(mask_shape, 0.5, seed=8).expand(shape))


def test_channel_variants_follow_torch_rank_rules():
    # torch.nn.functional raises RuntimeError for dropout1d's ranks; ours is also a ValueError
    for bad in ((4, 6, 9, 2), (9,)):
        with pytest.raises(RuntimeError, match=f"dropout1d: Expected 2D or 3D input, but received a {len(bad)}D"):
            F.dropout1d(torch.ones(bad), 0.5)
        with pytest.raises(ValueError):
            F.dropout1d(torch.ones(bad), 0.5)
    with pytest.warns(UserWarning, match="assuming that channel-wise 1D dropout behavior is desired"):
        F.dropout2d(torch.ones(2, 3, 4), 0.5, seed=1)
    with pytest.warns(UserWarning, match="Received a 2-D input to dropout2d"):
        y = F.dropout2d(torch.ones(64, 64), 0.5, seed=1)
    assert torch.equal(y != 0, rng.keep_mask((64, 64), 0.5, seed=1))  # torch: element-wise on 2-D
    with pytest.warns(UserWarning, match="Received a 3-D input to dropout3d"):
        y = F.dropout3d(torch.ones(5, 2, 2), 0.5, seed=1)
    assert torch.equal(y != 0, rng.keep_mask((5, 1, 1), 0.5, seed=1).expand(5, 2, 2))  # read as (C, *)
    with pytest.raises(RuntimeError, match="Feature dropout requires at least 2 dimensions"), \
            pytest.warns(UserWarning):
        F.dropout2d(torch.ones(3), 0.5)


def test_noncontiguous_input_gets_the_mask_of_its_logical_shape():
    base = torch.randn(8, 12)
    view = base.t()
    assert torch.equal(F.dropout(view, 0.5, seed=1), F.dropout(view.contiguous(), 0.5, seed=1))


def test_inplace_writes_into_input():
    x = torch.randn(100)
    expected = F.dropout(x.clone(), 0.5, seed=6)
    y = F.dropout(x, 0.5, seed=6, inplace=True)
    assert y is x and torch.equal(x, expected)


def test_backward_applies_the_same_mask():
    x = torch.randn(40, 30, requires_grad=True)
    y = F.dropout(x, 0.5, seed=12, step=3)
    g = torch.randn_like(y)
    y.backward(g)
    keep = rng.keep_mask(x.shape, 0.5, seed=12, step=3)
    torch.testing.assert_close(x.grad, torch.where(keep, g * 2.0, 0.0), rtol=0, atol=0)


def test_gradcheck_float64():
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: F.dropout(t, 0.4, seed=1, noise_shape=(None, 1)), (x,))
    assert torch.autograd.gradcheck(lambda t: F.dropout(t, 0.4, seed=1, scaling="classic"), (x,))


def test_nothing_but_integers_saved_for_backward():
    saved = []

    def pack(t):
        saved.append(t)
        return t

    x = torch.randn(1000, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = F.dropout(x, 0.5, seed=1)
        z = F.dropout2d(x.view(10, 10, 10), 0.5, seed=1)
    (y.sum() + z.sum()).backward()
    assert all(not t.is_floating_point() for t in saved)
    assert sum(t.numel() * t.element_size() for t in saved) <= 64


def test_unseeded_calls_follow_torch_manual_seed():
    x = torch.ones(256)
    torch.manual_seed(0)
    a = F.dropout(x, 0.5)
    torch.manual_seed(0)
    b = F.dropout(x, 0.5)
    c = F.dropout(x, 0.5)
    assert torch.equal(a, b) and not torch.equal(b, c)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_bad_rate(bad):
    with pytest.raises(ValueError, match=P_MESSAGE):
        F.dropout(torch.ones(3), bad)


def test_bad_arguments():
    with pytest.raises(TypeError, match="floating-point"):
        F.dropout(torch.ones(3, dtype=torch.int64), 0.5)
    with pytest.raises(TypeError, match="torch.Tensor"):
        F.dropout([1.0, 2.0], 0.5)
    with pytest.raises(ValueError, match="scaling must be one of"):
        F.dropout(torch.ones(3), 0.5, scaling="weird")
    with pytest.raises(ValueError, match="noise_shape must have one entry per input dimension"):
        F.dropout(torch.ones(3, 4), 0.5, noise_shape=(1,))
    with pytest.raises(ValueError, match="axis 1 has size 4"):
        F.dropout(torch.ones(3, 4), 0.5, noise_shape=(None, 2))
    with pytest.raises(ValueError, match="step must be a non-negative int"):
        F.dropout(torch.ones(3), 0.5, step=-2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_every_dtype_matches_the_reference_definition(dtype):
    x = torch.randn(7, 9).to(dtype)
    y = F.dropout(x, 0.3, seed=5)
    keep = rng.keep_mask(x.shape, 0.3, seed=5)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    expected = torch.where(keep, x.to(compute) * torch.tensor(1 / 0.7, dtype=compute), 0.0).to(dtype)
    assert torch.equal(y, expected)
    with use_backend("reference"):
        assert torch.equal(F.dropout(x, 0.3, seed=5), expected)


class _CallsFunctionals(torch.nn.Module):
    """A model that calls droplab's functional ops in its forward, as a torch user calls F.dropout."""

    def forward(self, x):
        h = F.dropout(x, 0.5, self.training)
        h = F.dropout2d(h, 0.3, self.training, seed=4)
        return F.alpha_dropout(h, 0.2, self.training)


def test_functional_ops_trace_under_fx_and_draw_at_run_time():
    model = _CallsFunctionals()
    traced = torch.fx.symbolic_trace(model)
    targets = [n.target.__name__ for n in traced.graph.nodes if n.op == "call_function"]
    assert targets == ["dropout", "dropout2d", "alpha_dropout"]
    x = torch.randn(2, 3, 4, 4)
    for seed in (0, 1):  # the traced graph draws fresh keys from torch's generator, as the model does
        torch.manual_seed(seed)
        want = model(x)
        torch.manual_seed(seed)
        assert torch.equal(traced(x), want)
    assert torch.equal(torch.fx.symbolic_trace(model.eval())(x), x)


def test_layout_of_the_input_is_kept():
    x = torch.randn(2, 3, 4, 5)
    want = F.dropout(x, 0.5, seed=1)
    permuted = x.permute(2, 0, 3, 1).contiguous().permute(1, 3, 0, 2)  # same values, another dimension order
    for view in (x.contiguous(memory_format=torch.channels_last), permuted):
        y = F.dropout(view, 0.5, seed=1)
        assert y.stride() == view.stride()
        assert torch.equal(y, want)  # the mask of the logical shape, whatever the layout
