"""DropConnect: contract, inference == full-weight layer, a fresh weight mask per step."""

import pytest
import torch
from scipy.stats import binomtest
from torch import nn

import droplab.functional as F
import droplab.nn as dnn
from contract import Case, install


def _linear(p, s, **kw):
    torch.manual_seed(0)
    return dnn.DropConnect(nn.Linear(5, 5, bias=False), p, seed=s, **kw)


def _conv(p, s):
    torch.manual_seed(0)
    return dnn.DropConnect(nn.Conv2d(3, 3, 3, padding=1, bias=False), p, seed=s)


def _full(module, x):
    return module.layer(x)


def _scaled(module, x):
    with torch.no_grad():
        return nn.functional.linear(x, module.layer.weight * (1 - module.p))


_P0 = "p = 0 gives the wrapped layer, not the identity (tested in test_p_zero_is_the_layer)"

CASES = [
    Case("DropConnect-Linear", _linear, (6, 5), eval_rule=_full, p_zero_identity=False,
         repr_args=("p", "drop_bias", "seed", "scaling"), notes={"p01": _P0}),
    Case("DropConnect-Linear-classic", lambda p, s: _linear(p, s, scaling="classic"), (6, 5), eval_rule=_scaled,
         p_zero_identity=False, notes={"p01": _P0}),
    Case("DropConnect-Conv2d", _conv, (1, 3, 4, 4), eval_rule=_full, p_zero_identity=False, notes={"p01": _P0}),
    # Wan et al.'s form without an activation: the Gaussian inference of a linear unit is its mean, the full layer
    Case("DropConnect-Linear-per-example", lambda p, s: _linear(p, s, per_example=True, inference="gaussian"),
         (6, 5), eval_rule=_full, p_zero_identity=False, repr_args=("p", "per_example", "inference", "seed"),
         notes={"p01": _P0}),
]

install(globals(), CASES)


def _effective_weight(m: dnn.DropConnect) -> torch.Tensor:
    """The weight a Linear DropConnect used at its next forward, read off by probing with the identity."""
    return m(torch.eye(m.layer.in_features)).t()


def test_inference_is_the_full_weight_layer():
    for layer, x in ((nn.Linear(7, 4), torch.randn(3, 7)), (nn.Conv1d(2, 3, 3), torch.randn(2, 2, 9)),
                     (nn.Conv3d(2, 2, 2), torch.randn(1, 2, 3, 4, 3))):
        m = dnn.DropConnect(layer, 0.5, seed=1).eval()
        assert torch.equal(m(x), layer(x))


def test_p_zero_is_the_layer():
    layer = nn.Linear(4, 3)
    x = torch.randn(2, 4)
    assert torch.equal(dnn.DropConnect(layer, 0.0, seed=0)(x), layer(x))


def test_fresh_weight_mask_per_step():
    torch.manual_seed(0)
    p = 0.4
    m = dnn.DropConnect(nn.Linear(48, 48, bias=False), p, seed=3)
    w = m.layer.weight
    masks = []
    for _ in range(3):
        with torch.no_grad():
            effective = _effective_weight(m)
        keep = effective != 0
        torch.testing.assert_close(effective, w.detach() * keep / (1 - p))  # kept weights scaled by 1/q
        assert binomtest(int(keep.sum()), keep.numel(), 1 - p).pvalue > 1e-3
        masks.append(keep)
    # consecutive steps are independent: they agree with probability p^2 + q^2, not 1
    for a, b in zip(masks, masks[1:]):
        agree = int((a == b).sum())
        assert binomtest(agree, a.numel(), p * p + (1 - p) ** 2).pvalue > 1e-3
    assert int(m.step) == 3


def test_masked_weights_are_scaled_and_gradient_only_reaches_kept_weights():
    torch.manual_seed(0)
    m = dnn.DropConnect(nn.Linear(16, 8), 0.5, seed=9)
    x = torch.randn(4, 16)
    y = m(x)
    expected_w = F.dropout(m.layer.weight, 0.5, seed=9, step=0)
    torch.testing.assert_close(y, nn.functional.linear(x, expected_w, m.layer.bias))
    y.sum().backward()
    dropped = expected_w == 0
    assert torch.count_nonzero(m.layer.weight.grad[dropped]) == 0
    assert torch.count_nonzero(m.layer.weight.grad[~dropped]) == int((~dropped).sum())
    assert torch.equal(m.layer.bias.grad, torch.full((8,), 4.0))  # the bias is not dropped


def test_drop_bias_uses_an_independent_mask():
    m = dnn.DropConnect(nn.Linear(3, 400), 0.5, drop_bias=True, seed=2)
    with torch.no_grad():
        m.layer.weight.fill_(1.0)
        m.layer.bias.fill_(1.0)
    y = m(torch.zeros(1, 3))[0]  # zero input: the output is the dropped bias
    assert set(y.unique().tolist()) <= {0.0, 2.0}
    assert binomtest(int((y != 0).sum()), y.numel(), 0.5).pvalue > 1e-3


def test_rejects_other_layers():
    with pytest.raises(TypeError, match="nn.Linear or nn.Conv1d/2d/3d"):
        dnn.DropConnect(nn.LSTM(3, 3), 0.5)


# ---- Wan et al. 2013: per-example masks and moment-matched Gaussian inference -----------------------------------

def test_per_example_linear_is_the_hand_computation_with_the_reference_masks():
    from droplab.rng import keep_mask

    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(3, 4, generator=g), torch.randn(2, 4, generator=g), torch.randn(2, generator=g)
    p, q, seed, step = 0.4, 0.6, 11, 5
    y = F.dropconnect_linear(x, w, b, p, True, per_example=True, drop_bias=True, seed=seed, step=step)
    wmask = keep_mask((3, 2, 4), p, seed, step, stream=0).double()  # droplab.rng's pure-torch reference
    bmask = keep_mask((3, 2), p, seed, step, stream=1).double()
    expected = torch.zeros(3, 2, dtype=torch.float64)
    for n in range(3):
        for j in range(2):
            kept = sum(wmask[n, j, k] * w[j, k].double() * x[n, k].double() for k in range(4))
            expected[n, j] = kept / q + bmask[n, j] * b[j].double() / q
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-6)
    assert not torch.equal(wmask[0], wmask[1])  # the rows' masks differ


def test_per_example_masks_are_independent_across_examples():
    p = 0.5
    w = torch.ones(64, 64)
    kept = F.dropconnect_linear(torch.ones(2, 64), w, None, p, True, per_example=True, seed=3) * (1 - p)
    assert torch.equal(kept, kept.round())  # each entry counts a row's kept connections of one unit
    # the two rows' counts of one unit are independent Binomial(64, q): their difference has variance 2*64*p*q
    diff = kept[0] - kept[1]
    assert abs(float(diff.mean())) < 4 * (2 * 64 * 0.25 / 64) ** 0.5
    assert 0.5 * 32 < float(diff.var()) < 1.6 * 32


def test_per_example_gradient_and_expectation():
    torch.manual_seed(0)
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda x, w, b: F.dropconnect_linear(x, w, b, 0.3, True, per_example=True, seed=2,
                                                                  drop_bias=True), (x, w, b))
    with torch.no_grad():  # over many steps the mean output is the full-weight layer's
        mean = sum(F.dropconnect_linear(x, w, b, 0.3, True, per_example=True, seed=2, step=s)
                   for s in range(4000)) / 4000
        torch.testing.assert_close(mean, x @ w.T + b, atol=0.15, rtol=0.0)


@pytest.mark.parametrize("scaling,drop_bias,mean,var", [
    ("inverted", False, 4.0, 5.0),       # W v + b = 1 + 2 + 1; (p/q) (1 + 4) = 5
    ("classic", False, 2.5, 1.25),       # q W v + b = 1.5 + 1; q p (1 + 4)
    ("inverted", True, 4.0, 6.0),        # the bias is one more dropped connection of input 1: + (p/q) 1^2
    ("classic", True, 2.0, 1.5),         # q (3 + 1); q p (5 + 1)
])
def test_moments_by_hand_and_by_sampling_masks(scaling, drop_bias, mean, var):
    x, w, b = torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 2.0]]), torch.tensor([1.0])
    m, v = F.dropconnect_moments(x, w, b, 0.5, drop_bias=drop_bias, scaling=scaling)
    assert (m.item(), v.item()) == pytest.approx((mean, var))
    rows = x.expand(200_000, 2)  # per-example masks: each row is one draw of the unit's pre-activation
    u = F.dropconnect_linear(rows, w, b, 0.5, True, per_example=True, seed=9, drop_bias=drop_bias,
                             scaling=scaling).double()
    assert float(u.mean()) == pytest.approx(mean, abs=4 * (var / 200_000) ** 0.5)
    assert float(u.var()) == pytest.approx(var, rel=0.02)


def test_gaussian_inference_of_a_relu_unit_is_the_closed_form():
    from scipy.stats import norm

    x, w = torch.tensor([[1.0, 1.0], [1.0, -1.0]]), torch.tensor([[1.0, 2.0]])
    mu, sigma = torch.tensor([3.0, -1.0]), torch.tensor([5.0, 5.0]).sqrt()  # unit means 3 and -1, variance 5
    expected = mu * torch.tensor(norm.cdf(mu / sigma)) + sigma * torch.tensor(norm.pdf(mu / sigma))
    z = 20_000
    r = F.dropconnect_gaussian(x, w, p=0.5, activation=torch.relu, samples=z, seed=4).reshape(-1)
    se = sigma / z ** 0.5  # relu(u) has a smaller spread than u: 4 standard errors of u bound the error
    assert torch.all((r - expected.float()).abs() < 4 * se)
    # Jensen: averaging relu over the spread is not relu of the mean (the mean network Wan et al. replace)
    assert torch.all(r > torch.relu(mu) + 0.05)
    again = F.dropconnect_gaussian(x, w, p=0.5, activation=torch.relu, samples=z, seed=4).reshape(-1)
    assert torch.equal(r, again)  # a pure function of the counters


def test_module_in_wan_form():
    torch.manual_seed(0)
    layer = nn.Linear(6, 3)
    m = dnn.DropConnect(layer, 0.5, per_example=True, inference="gaussian", activation=nn.ReLU(), seed=1,
                        samples=50)
    x = torch.randn(4, 6)
    y = m(x)
    assert (y >= 0).all() and int(m.step) == 1  # the activation is the layer's, in training too
    m.eval()
    first, second = m(x), m(x)
    assert torch.equal(first, second) and int(m.step) == 1  # deterministic, no counter drawn
    expected = F.dropconnect_gaussian(x, layer.weight, layer.bias, 0.5, activation=torch.relu, samples=50, seed=1)
    torch.testing.assert_close(first, expected)
    assert "per_example=True" in repr(m) and "inference='gaussian'" in repr(m)
    with pytest.raises(ValueError, match="inference must be 'mean' or 'gaussian'"):
        dnn.DropConnect(nn.Linear(2, 2), inference="mode")
    with pytest.raises(ValueError, match="nn.Linear"):
        dnn.DropConnect(nn.Conv1d(2, 2, 3), per_example=True)
    with pytest.raises(TypeError, match="activation must be an nn.Module"):
        dnn.DropConnect(nn.Linear(2, 2), activation=torch.relu)
    with pytest.raises(ValueError, match="samples must be a positive int"):
        dnn.DropConnect(nn.Linear(2, 2), samples=0)
