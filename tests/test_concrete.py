"""Concrete dropout: contract, the relaxed mask, the regularizer, and a learned rate that moves."""

import math

import pytest
import torch
from scipy import stats
from torch import nn

import droplab
import droplab.functional as F
import droplab.nn as dnn
from contract import Case, install

NOTES = {"p01": "a learned rate lives in (0, 1): its logit is infinite at p = 0 and p = 1, so both are rejected"}


def _linear(p, s):
    torch.manual_seed(0 if s is None else s)  # s=None: the unseeded mode
    return dnn.ConcreteDropout(nn.Linear(5, 5), p, seed=s)


CASES = [
    Case("ConcreteDropout-Linear", _linear, (6, 5), eval_rule=lambda m, x: m.layer(x),
         p_zero_identity=False, p_one_zeros=False, notes=NOTES,
         repr_args=("p", "temperature", "weight_regularizer", "dropout_regularizer", "input_dim", "noise_shape",
                    "seed")),
    Case("ConcreteDropout-Identity", lambda p, s: dnn.ConcreteDropout(nn.Identity(), p, seed=s), (6, 7),
         p_zero_identity=False, p_one_zeros=False, notes=NOTES),
]

install(globals(), CASES)


def test_relaxed_mask_is_nearly_binary_with_keep_rate_q():
    p, n = 0.3, 20_000
    keep = F.concrete_keep(torch.tensor(math.log(p / (1 - p)), dtype=torch.float64), (n,), seed=4)
    assert ((keep >= 0) & (keep <= 1)).all()
    # P(keep > 1/2) = 1 - p exactly for the binary concrete distribution: binomial test, p-value > 1e-3
    assert stats.binomtest(int((keep > 0.5).sum()), n, 1 - p).pvalue > 1e-3
    # at temperature 0.1 few values are far from {0, 1}
    assert ((keep > 0.05) & (keep < 0.95)).double().mean() < 0.2


def test_gradient_reaches_the_logit_and_noise_is_replayable():
    m = dnn.ConcreteDropout(nn.Linear(4, 3), 0.2, seed=0)
    x = torch.randn(5, 4)
    y = m(x)
    y.sum().backward()
    assert m.p_logit.grad is not None and m.p_logit.grad.item() != 0.0
    m.reseed(0, 0)
    assert torch.equal(m(x), y)  # the noise is a function of (seed, step)


def test_regularization_matches_gal_et_al():
    layer = nn.Linear(6, 2)
    m = dnn.ConcreteDropout(layer, 0.25, weight_regularizer=1e-3, dropout_regularizer=2e-2)
    p = 0.25
    squares = sum(float(w.detach().pow(2).sum()) for w in layer.parameters())
    expected = 1e-3 * squares / (1 - p) + 2e-2 * 6 * (p * math.log(p) + (1 - p) * math.log(1 - p))
    assert m.regularization().item() == pytest.approx(expected, rel=1e-5)
    model = nn.Sequential(m, nn.ReLU(), dnn.ConcreteDropout(nn.Linear(2, 1), 0.1))
    total = dnn.total_regularization(model)
    assert total.item() == pytest.approx(m.regularization().item() + model[2].regularization().item(), rel=1e-6)
    with pytest.raises(ValueError, match="no ConcreteDropout"):
        dnn.total_regularization(nn.Linear(2, 2))
    with pytest.raises(RuntimeError, match="run one forward"):
        dnn.ConcreteDropout(nn.Identity()).regularization()


def test_p_property_and_setter():
    m = dnn.ConcreteDropout(nn.Linear(3, 3), 0.2, seed=0)
    assert isinstance(m.p, float) and m.p == pytest.approx(0.2, rel=1e-6)
    m.p = 0.4
    assert m.p == pytest.approx(0.4, rel=1e-6) and m.p_logit.requires_grad
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match="a learned rate needs 0 < p < 1"):
            m.p = bad
    assert m.p == pytest.approx(0.4, rel=1e-6)
    with pytest.raises(ValueError, match="temperature must be a positive"):
        dnn.ConcreteDropout(nn.Identity(), temperature=0.0)


def test_set_rate_leaves_learned_rates_alone_unless_named():
    model = nn.Sequential(dnn.Dropout(0.1, seed=0), dnn.ConcreteDropout(nn.Linear(3, 3), 0.2, seed=1))
    assert droplab.set_rate(model, 0.5) == ["0"]
    assert model[1].p == pytest.approx(0.2, rel=1e-6)
    assert droplab.set_rate(model, {"1": 0.35}) == ["1"]
    assert model[1].p == pytest.approx(0.35, rel=1e-6)
    site = droplab.sites(model)[1]
    assert (site.kind, site.scaling, site.p) == ("ConcreteDropout", "inverted", pytest.approx(0.35, rel=1e-6))


def _train(n: int, steps: int = 150) -> tuple[float, float]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = torch.sin(x @ torch.randn(4, generator=g))[:, None] + 0.3 * torch.randn(n, 1, generator=g)
    torch.manual_seed(0)
    # Gal et al.'s settings: weight regularizer l^2 / N (l = 0.1), dropout regularizer 2 / N
    kw = {"p": 0.1, "weight_regularizer": 1e-2 / n, "dropout_regularizer": 2.0 / n}
    model = nn.Sequential(dnn.ConcreteDropout(nn.Linear(4, 32), seed=1, **kw), nn.ReLU(),
                          dnn.ConcreteDropout(nn.Linear(32, 1), seed=2, **kw))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = (model(x) - y).pow(2).mean() + dnn.total_regularization(model)
        loss.backward()
        opt.step()
    return model[0].p, model[2].p


@pytest.mark.slow
def test_learned_rate_rises_on_a_tiny_overparameterized_problem():
    # 8 points, 4 -> 32 -> 1 MLP (161 weights): the KL term dominates and both rates rise from 0.1;
    # with 16x the data the input rate falls instead, so the rise is the data size's doing
    small_in, small_hidden = _train(8)
    large_in, _ = _train(128)
    assert small_in > 0.2 and small_hidden > 0.2
    assert large_in < 0.1 < small_in
