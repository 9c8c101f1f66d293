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
