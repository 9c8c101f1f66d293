"""WeightDrop: contract, flat weights stay valid (no warnings), train/eval, state_dict."""

import warnings

import pytest
import torch
from torch import nn

import droplab.functional as F
import droplab.nn as dnn
from contract import Adapter, Case, install


class _Output(Adapter):
    """Contract adapter: the RNN's output sequence only (the contract needs tensor -> tensor)."""

    def forward(self, x):
        return self.inner(x)[0]


def _lstm(p, s, cls=nn.LSTM):
    torch.manual_seed(0)
    return _Output(dnn.WeightDrop(cls(4, 4, num_layers=2), p, seed=s))


_NOTES = {"expectation": "an RNN is nonlinear in its weights, so E[train] != eval",
          "p01": "p = 0 gives the plain RNN (test_p_zero_and_eval_are_the_plain_rnn); p = 1 only zeroes W_hh",
          "fullgraph": "the dropped weights reach torch's RNN by swapping its _flat_weights for the call, which "
                       "dynamo does not trace as one graph (stated in the class docstring)"}
CASES = [
    Case("WeightDrop-LSTM", _lstm, (3, 2, 4), eval_rule=lambda m, x: m.inner.module(x)[0], expectation=False,
         p_zero_identity=False, p_one_zeros=False, repr_args=("p", "weights", "seed"), fullgraph=False,
         notes=_NOTES),
    Case("WeightDrop-GRU", lambda p, s: _lstm(p, s, nn.GRU), (3, 2, 4), eval_rule=lambda m, x: m.inner.module(x)[0],
         expectation=False, p_zero_identity=False, p_one_zeros=False, fullgraph=False, notes=_NOTES),
]

install(globals(), CASES)


def _devices():
    cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the cuDNN flat-weight path)")
    return ["cpu", pytest.param("cuda", marks=cuda)]


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_no_flat_weight_warning_in_train_and_eval(device, cls):
    torch.manual_seed(0)
    m = dnn.WeightDrop(cls(8, 16, num_layers=2, batch_first=True), 0.5, seed=1).to(device)
    x = torch.randn(3, 5, 8, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for training in (True, False, True):
            m.train(training)
            out = m(x)[0]
            if training:
                out.sum().backward()
    grads = [p.grad for p in m.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # the module's own flat weights are its parameters again after every call
    assert all(w is getattr(m.module, n) for w, n in zip(m.module._flat_weights, m.module._flat_weights_names))


def test_p_zero_and_eval_are_the_plain_rnn():
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 6, num_layers=2)
    x = torch.randn(5, 3, 4)
    expected = lstm(x)
    for m in (dnn.WeightDrop(lstm, 0.0, seed=0), dnn.WeightDrop(lstm, 0.5, seed=0).eval()):
        out, (h, c) = m(x)
        assert torch.equal(out, expected[0]) and torch.equal(h, expected[1][0]) and torch.equal(c, expected[1][1])


def test_training_uses_dropped_hidden_weights_only():
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 6)
    m = dnn.WeightDrop(lstm, 0.5, seed=3)
    x = torch.randn(5, 3, 4)
    raw = lstm.weight_hh_l0.detach().clone()
    out = m(x)[0]
    reference = nn.LSTM(4, 6)
    reference.load_state_dict(lstm.state_dict())
    with torch.no_grad():
        reference.weight_hh_l0.copy_(F.dropout(raw, 0.5, seed=3, step=0, stream=0))
    torch.testing.assert_close(out, reference(x)[0], rtol=0, atol=1e-6)
    assert torch.equal(lstm.weight_hh_l0, raw)  # the parameter itself is untouched
    out.sum().backward()
    dropped = F.dropout(torch.ones_like(raw), 0.5, seed=3, step=0, stream=0) == 0
    assert torch.count_nonzero(lstm.weight_hh_l0.grad[dropped]) == 0
    assert lstm.weight_ih_l0.grad is not None
    assert int(m.step) == 1


def test_state_dict_is_the_rnn_plus_counters():
    torch.manual_seed(0)
    m = dnn.WeightDrop(nn.LSTM(4, 6, num_layers=2), 0.3, seed=7)
    keys = set(m.state_dict())
    assert keys == {"seed", "step"} | {f"module.{k}" for k in nn.LSTM(4, 6, num_layers=2).state_dict()}
    plain = nn.LSTM(4, 6, num_layers=2)
    plain.load_state_dict({k.removeprefix("module."): v for k, v in m.state_dict().items() if k.startswith("module.")})
    x = torch.randn(3, 2, 4)
    assert torch.equal(plain(x)[0], m.eval()(x)[0])


def test_bad_weights_argument():
    with pytest.raises(ValueError, match="weights must name"):
        dnn.WeightDrop(nn.LSTM(3, 3), 0.5, weights=("weight_hh_l1",))
    with pytest.raises(TypeError, match="WeightDrop wraps"):
        dnn.WeightDrop(nn.Linear(3, 3), 0.5)
    m = dnn.WeightDrop(nn.GRU(3, 3), 0.5, weights="weight_ih_l0", seed=0)
    assert m.weights == ("weight_ih_l0",)
