"""Gaussian, alpha, feature-alpha and input dropout: contract, statistics, torch's formulas, conversion."""

import math

import pytest
import torch
from scipy import stats
from torch import nn

import droplab
import droplab.functional as F
import droplab.nn as dnn
from contract import Case, install
from droplab import rng
from droplab.functional.noise import ALPHA_PRIME, alpha_dropout_coefficients

NO_P1 = {"p01": "Gaussian dropout rejects p = 1 (infinite noise variance p/(1-p)); p = 0 is still the identity"}
ALPHA_NOTES = {"expectation": "alpha dropout preserves the mean and variance of normalized input, not each unit's "
                              "expectation (E[y_i] = a (1-p) x_i); tested by test_alpha_preserves_moments"}

CASES = [
    Case("GaussianDropout", lambda p, s: dnn.GaussianDropout(p, seed=s), (6, 7), p_one_zeros=False, notes=NO_P1,
         repr_args=("p", "inplace", "noise_shape", "seed")),
    Case("GaussianDropout-noise-shape", lambda p, s: dnn.GaussianDropout(p, seed=s, noise_shape=(None, 1, None)),
         (4, 3, 5), p_one_zeros=False, expectation_steps=800, notes=NO_P1),
    Case("AlphaDropout", lambda p, s: dnn.AlphaDropout(p, seed=s), (6, 7), expectation=False, notes=ALPHA_NOTES,
         repr_args=("p", "inplace", "seed")),
    Case("FeatureAlphaDropout", lambda p, s: dnn.FeatureAlphaDropout(p, seed=s), (3, 4, 5), expectation=False,
         notes=ALPHA_NOTES),
    Case("InputDropout", lambda p, s: dnn.InputDropout(p, seed=s), (6, 7),
         repr_args=("p", "inplace", "share_across_batch", "seed", "scaling")),
    Case("InputDropout-shared", lambda p, s: dnn.InputDropout(p, seed=s, share_across_batch=True), (5, 8),
         expectation_steps=800),
    Case("InputDropout-classic", lambda p, s: dnn.InputDropout(p, seed=s, scaling="classic"), (5, 6),
         eval_rule="scale"),
]

install(globals(), CASES)


# ---- the generator's floats (droplab.rng.random_uniform / random_normal follow their written spec)

def test_uniform_and_normal_follow_the_spec():
    words = rng.random_words(10, seed=123, step=4, replica=1, stream=2)
    u = rng.random_uniform(10, seed=123, step=4, replica=1, stream=2)
    assert torch.equal(u, (words >> 8).to(torch.float32) * 2.0**-24)
    z = rng.random_normal(6, seed=123, step=4, replica=1, stream=2, dtype=torch.float64)
    w = words.tolist()
    for j in range(3):  # elements 2j, 2j + 1: cos and sin of one Box-Muller pair (float32 polynomials)
        u1 = ((w[2 * j] >> 8) + 1) * 2.0**-24
        u2 = (w[2 * j + 1] >> 8) * 2.0**-24
        r = math.sqrt(-2 * math.log(u1))
        assert z[2 * j].item() == pytest.approx(r * math.cos(2 * math.pi * u2), rel=1e-5, abs=1e-6)
        assert z[2 * j + 1].item() == pytest.approx(r * math.sin(2 * math.pi * u2), rel=1e-5, abs=1e-6)


def test_logistic_follows_the_spec():
    w = rng.random_words(50, seed=8, step=1).tolist()
    got = rng.random_logistic(50, seed=8, step=1, dtype=torch.float64)
    for i, word in enumerate(w):
        u = (2 * (word >> 9) + 1) * 2.0**-24
        assert got[i].item() == pytest.approx(math.log(u / (1 - u)), rel=1e-5, abs=1e-5)
    sample = rng.random_logistic(50_000, seed=3, dtype=torch.float64)
    assert stats.kstest(sample.numpy(), "logistic").pvalue > 1e-3


@pytest.mark.parametrize("kind", ["normal", "logistic"])
def test_cpu_noise_is_bit_identical_to_the_reference(kind):
    from droplab.kernels import cpu, reference
    for numel in (1, 3, 4, 1023, 70_001):
        got = cpu.noise(kind, numel, (0xDEADBEEF, 17), 5, 1, 2)
        want = reference.noise(kind, numel, (0xDEADBEEF, 17), 5, 1, 2)
        assert torch.equal(got, want), (kind, numel)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mask_shape", [(37, 111), (37, 1), (1, 111)])
def test_cpu_gaussian_is_bit_identical_to_the_reference(dtype, mask_shape):
    from droplab.kernels import cpu, reference
    x = torch.randn(37, 111, generator=torch.Generator().manual_seed(0)).to(dtype)
    got = cpu.gaussian_scale(x, (99, 3), 4, 0, 1, 0.7, mask_shape)
    assert torch.equal(got, reference.gaussian_scale(x, (99, 3), 4, 0, 1, 0.7, mask_shape))


def test_gaussian_backward_regenerates_the_noise_and_saves_no_float_tensor():
    x = torch.randn(64, 32, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = F.gaussian_dropout(x, 0.3, seed=4, step=2)
    assert all(not t.is_floating_point() or t is x for t in saved)
    grad = torch.randn_like(y)
    (g,) = torch.autograd.grad(y, x, grad)
    z = rng.random_normal((64, 32), seed=4, step=2)
    torch.testing.assert_close(g, grad * (1 + math.sqrt(0.3 / 0.7) * z), rtol=1e-6, atol=1e-6)


def test_normal_is_standard_normal():
    z = rng.random_normal(50_000, seed=1, dtype=torch.float64)
    # Kolmogorov-Smirnov against N(0, 1): p-value > 1e-3 at this fixed seed
    assert stats.kstest(z.numpy(), "norm").pvalue > 1e-3


# ---- Gaussian dropout

@pytest.mark.parametrize("p", [0.2, 0.5])
def test_gaussian_noise_is_normal_with_dropout_variance(p):
    y = F.gaussian_dropout(torch.ones(40_000, dtype=torch.float64), p, seed=11)
    sigma = math.sqrt(p / (1 - p))
    assert stats.kstest(((y - 1) / sigma).numpy(), "norm").pvalue > 1e-3


def test_gaussian_backward_regenerates_the_noise():
    x = torch.randn(50, dtype=torch.float64, requires_grad=True)
    y = F.gaussian_dropout(x, 0.3, seed=3, step=2)
    (g,) = torch.autograd.grad(y.sum(), x)
    factor = F.gaussian_dropout(torch.ones(50, dtype=torch.float64), 0.3, seed=3, step=2)
    assert torch.equal(g, factor)
    torch.testing.assert_close(y, x.detach() * factor, rtol=1e-15, atol=0)


def test_gaussian_rejects_p_one_everywhere():
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1, but got 1.0"):
        dnn.GaussianDropout(1.0)
    with pytest.raises(ValueError, match="Gaussian dropout needs p < 1"):
        F.gaussian_dropout(torch.ones(3), 1.0, seed=0)
    model = nn.Sequential(dnn.Dropout(0.1, seed=0), dnn.GaussianDropout(0.2, seed=1))
    with pytest.raises(ValueError, match="Gaussian dropout needs p < 1"):
        droplab.set_rate(model, 1.0)
    assert (model[0].p, model[1].p) == (0.1, 0.2)  # validated before anything changed


# ---- alpha dropout

def _torch_alpha_coefficients(p, feature=False):
    """torch's (a, b) read off its outputs: x = 0 gives b (kept) or a alpha' + b (dropped); x = 1 gives a + b."""
    fn = torch.nn.functional.feature_alpha_dropout if feature else torch.nn.functional.alpha_dropout
    shape = (4000, 1) if feature else (4000,)
    torch.manual_seed(0)
    zero_out = fn(torch.zeros(shape, dtype=torch.float64), p, True)
    one_out = fn(torch.ones(shape, dtype=torch.float64), p, True)
    b = zero_out.max().item()
    return one_out.max().item() - b, b, zero_out.min().item()


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5, 0.8])
def test_alpha_coefficients_match_torch(p):
    a, b = alpha_dropout_coefficients(p)
    for feature in (False, True):
        ta, tb, dropped = _torch_alpha_coefficients(p, feature)
        assert a == pytest.approx(ta, rel=1e-12) and b == pytest.approx(tb, rel=1e-12)
        assert a * ALPHA_PRIME + b == pytest.approx(dropped, rel=1e-12)


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_alpha_output_uses_droplabs_keep_mask(p):
    x = torch.randn(7, 9, dtype=torch.float64)
    y = F.alpha_dropout(x, p, training=True, seed=21, step=5)
    keep = F.dropout(torch.ones_like(x), p, seed=21, step=5) != 0
    a, b = alpha_dropout_coefficients(p)
    torch.testing.assert_close(y, torch.where(keep, a * x + b, torch.full_like(x, a * ALPHA_PRIME + b)),
                               rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_alpha_preserves_moments(p):
    # standard-normal input: mean 0 and variance 1 kept within 0.02 (about 6 standard errors at 2e5 values)
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = F.alpha_dropout(x, p, training=True, seed=2)
    assert abs(y.mean().item()) < 0.02 and abs(y.var().item() - 1) < 0.02
    yf = F.feature_alpha_dropout(x.reshape(2000, 100, 1), p, training=True, seed=2)
    assert abs(yf.mean().item()) < 0.02 and abs(yf.var().item() - 1) < 0.02


def test_alpha_keep_rate_binomial():
    p, n = 0.3, 20_000
    y = F.alpha_dropout(torch.zeros(n, dtype=torch.float64), p, training=True, seed=9)
    dropped = int((y < 0).sum())  # a alpha' + b < 0 < b
    assert stats.binomtest(dropped, n, p).pvalue > 1e-3


def test_feature_alpha_shares_the_mask_over_trailing_dims():
    y = F.feature_alpha_dropout(torch.zeros(6, 5, 3, 4), 0.5, training=True, seed=4)
    assert torch.equal(y, y[:, :, :1, :1].expand_as(y))
    assert (y < 0).any() and (y > 0).any()
    with pytest.raises(RuntimeError, match="Feature dropout requires at least 2 dimensions"):
        F.feature_alpha_dropout(torch.zeros(5), 0.5, training=True, seed=0)


def test_alpha_eval_identity_and_p_one_zeros_like_torch():
    x = torch.randn(5, 4)
    assert F.alpha_dropout(x, 0.4, training=False) is x
    # training defaults to False, as in torch.nn.functional
    assert F.alpha_dropout(x, 0.4) is x and F.feature_alpha_dropout(x, 0.4) is x
    assert torch.equal(torch.nn.functional.alpha_dropout(x, 0.4), x)
    assert torch.count_nonzero(F.alpha_dropout(x, 1.0, training=True, seed=0)) == 0
    assert torch.count_nonzero(torch.nn.functional.alpha_dropout(x, 1.0, True)) == 0


# ---- input dropout

def test_input_dropout_shared_mask_and_keep_rate():
    p, features = 0.4, 5000
    y = F.input_dropout(torch.ones(3, features), p, share_across_batch=True, seed=8)
    assert torch.equal(y, y[:1].expand_as(y))
    assert stats.binomtest(int((y[0] == 0).sum()), features, p).pvalue > 1e-3
    per_example = F.input_dropout(torch.ones(2, features), p, seed=8)
    assert not torch.equal(per_example[0], per_example[1])  # independent masks per example by default


# ---- conversion and sites

def test_convert_swaps_torch_alpha_dropouts_both_ways():
    model = nn.Sequential(nn.Linear(4, 4), nn.AlphaDropout(0.2), nn.SELU(), nn.FeatureAlphaDropout(0.1)).eval()
    converted = droplab.convert(model, seed=3)
    assert type(converted[1]) is dnn.AlphaDropout and type(converted[3]) is dnn.FeatureAlphaDropout
    assert converted[1].p == 0.2 and converted[3].p == 0.1 and not converted[1].training
    assert int(converted[1].seed) == 3 and int(converted[3].seed) == 4
    rows = [(s.kind, s.scaling) for s in droplab.sites(converted)]
    assert rows == [("AlphaDropout", "noise"), ("FeatureAlphaDropout", "noise")]
    back = droplab.convert(converted, to="torch")
    assert type(back[1]) is nn.AlphaDropout and type(back[3]) is nn.FeatureAlphaDropout and back[3].p == 0.1


def test_sites_report_noise_variants():
    model = nn.Sequential(dnn.InputDropout(0.2, seed=0), dnn.GaussianDropout(0.3, seed=1),
                          nn.AlphaDropout(0.1), dnn.FeatureAlphaDropout(0.2, seed=2))
    rows = [(s.kind, s.p, s.scaling, s.library) for s in droplab.sites(model)]
    assert rows == [("InputDropout", 0.2, "inverted", "droplab"), ("GaussianDropout", 0.3, "noise", "droplab"),
                    ("torch.nn.AlphaDropout", 0.1, "noise", "torch"),
                    ("FeatureAlphaDropout", 0.2, "noise", "droplab")]


def test_variants_compile_fullgraph_and_match_eager():
    # the noise ops are torch.library custom ops with fake kernels: one graph, same values and gradients
    torch.manual_seed(0)
    model = nn.Sequential(dnn.GaussianDropout(0.3, seed=1), dnn.ConcreteDropout(nn.Linear(6, 6), 0.2, seed=3)).train()
    x = torch.randn(4, 6, requires_grad=True)
    torch._dynamo.reset()
    y = torch.compile(model, backend="aot_eager", fullgraph=True)(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    for m in model:
        m.reseed(int(m.seed), 0)
    y_eager = model(x)
    (g_eager,) = torch.autograd.grad(y_eager.sum(), x)
    torch.testing.assert_close(y, y_eager)
    torch.testing.assert_close(g, g_eager)
