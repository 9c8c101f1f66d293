"""VariationalLSTM / VariationalGRU: contract, rates 0 == torch.nn.LSTM/GRU, masks fixed per sequence."""

import pytest
import torch
from torch import nn

import droplab.functional as F
import droplab.nn as dnn
from contract import Adapter, Case, install


class _Output(Adapter):
    """Contract adapter: output sequence only, one rate ``p`` driving all three dropout sites."""

    @property
    def p(self) -> float:
        return self.inner.input_drop.p

    @p.setter
    def p(self, value: float) -> None:
        F.check_probability(value)  # reject before any of the three changes
        for site in (self.inner.input_drop, self.inner.recurrent_drop, self.inner.output_drop):
            site.p = value

    def forward(self, x):
        return self.inner(x)[0]


def _make(cls):
    def make(p, s):
        torch.manual_seed(0)
        return _Output(cls(4, 4, num_layers=2, input_dropout=p, recurrent_dropout=p, output_dropout=p, seed=s))
    return make


def _torch_eval(mode):
    def rule(module, x):
        ref = getattr(nn, mode)(4, 4, num_layers=2).to(x.dtype)
        ref.load_state_dict(module.inner.state_dict(), strict=False)
        return ref(x)[0]
    return rule


_NOTES = {"expectation": "an RNN is nonlinear, so the mean training output is not the inference output",
          "p01": "p = 0 gives torch's RNN (tested in test_rates_zero_equal_torch), not the identity",
          "fullgraph": "the time loop is a hand-written autograd.Function whose backward redraws the recurrent "
                       "mask from a Python closure over the counters: dynamo breaks the graph there "
                       "(stated in the class docstring; tests/test_graph_breaks.py)"}
CASES = [
    Case("VariationalLSTM", _make(dnn.VariationalLSTM), (3, 2, 4), eval_rule=_torch_eval("LSTM"), expectation=False,
         p_zero_identity=False, repr_args=("input_dropout", "recurrent_dropout", "output_dropout", "seed"),
         fullgraph=False, notes=_NOTES),
    Case("VariationalGRU", _make(dnn.VariationalGRU), (3, 2, 4), eval_rule=_torch_eval("GRU"), expectation=False,
         p_zero_identity=False, fullgraph=False, notes=_NOTES),
]

install(globals(), CASES)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_rates_zero_equal_torch(mode, batch_first):
    torch.manual_seed(0)
    ref = getattr(nn, mode)(5, 7, num_layers=3, batch_first=batch_first)
    ours = getattr(dnn, f"Variational{mode}")(5, 7, num_layers=3, batch_first=batch_first, seed=0)
    missing, unexpected = ours.load_state_dict(ref.state_dict(), strict=False)
    assert not unexpected and all(k.endswith((".seed", ".step")) for k in missing)
    x = torch.randn((4, 6, 5) if batch_first else (6, 4, 5), requires_grad=True)
    h0 = torch.randn(3, 4, 7)
    hx = (h0, torch.randn(3, 4, 7)) if mode == "LSTM" else h0
    for module in (ref, ours):  # train mode: rates 0 draw nothing
        module.train()
    expected, got = ref(x, hx), ours(x, hx)
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=1e-5)
    if mode == "LSTM":
        torch.testing.assert_close(got[1][0], expected[1][0], rtol=0, atol=1e-5)
        torch.testing.assert_close(got[1][1], expected[1][1], rtol=0, atol=1e-5)
    else:
        torch.testing.assert_close(got[1], expected[1], rtol=0, atol=1e-5)
    # gradients too (the LSTM's backward is hand-written)
    g_ref = torch.autograd.grad(expected[0].square().sum(), [x, *ref.parameters()])
    g_ours = torch.autograd.grad(got[0].square().sum(), [x, *ours.parameters()])
    for a, b in zip(g_ref, g_ours):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_unbatched_and_default_init_match_torch_layout():
    torch.manual_seed(0)
    ours = dnn.VariationalLSTM(3, 5, seed=0)
    assert {k for k in ours.state_dict() if not k.endswith((".seed", ".step"))} == set(nn.LSTM(3, 5).state_dict())
    assert all(float(p.detach().abs().max()) <= 1 / 5 ** 0.5 for p in ours.parameters())
    ref = nn.LSTM(3, 5)
    ref.load_state_dict(ours.state_dict(), strict=False)
    x = torch.randn(4, 3)
    out, (h, c) = ours(x)
    torch.testing.assert_close(out, ref(x)[0], rtol=0, atol=1e-5)
    assert h.shape == (1, 5) and c.shape == (1, 5)
    from_torch = dnn.VariationalGRU.from_torch(nn.GRU(3, 5), recurrent_dropout=0.2, seed=1)
    assert from_torch.recurrent_dropout == 0.2


def test_masks_fixed_per_sequence():
    """Input and output masks are one (N, F) draw shared by every time step (layer k: stream k)."""
    torch.manual_seed(0)
    m = dnn.VariationalLSTM(6, 8, num_layers=2, input_dropout=0.3, output_dropout=0.5, seed=2)
    x = torch.randn(10, 5, 6)
    out, _ = m(x)
    in_mask = F.locked_dropout(torch.ones(10, 5, 6), 0.3, seed=2, step=0, stream=0)
    out_masks = [F.locked_dropout(torch.ones(10, 5, 8), 0.5, seed=4, step=0, stream=k) for k in range(2)]
    for mask in (in_mask, *out_masks):
        assert torch.equal(mask, mask[:1].expand_as(mask)) and (mask == 0).any()
    # the same computation with torch's LSTM layers and the masks applied by hand
    h = x * in_mask
    for k in range(2):
        layer = nn.LSTM(6 if k == 0 else 8, 8)
        layer.load_state_dict({name.replace(f"_l{k}", "_l0"): v for name, v in m.state_dict().items()
                               if name.endswith(f"_l{k}")})
        h = layer(h)[0] * out_masks[k]
    torch.testing.assert_close(out, h, rtol=0, atol=1e-5)
    zero_out = out == 0
    assert torch.equal(zero_out, zero_out[:1].expand_as(zero_out))
    # one draw per active site and forward (layers are streams of it); the rate-0 recurrent site draws nothing
    assert (int(m.input_drop.step), int(m.recurrent_drop.step), int(m.output_drop.step)) == (1, 0, 1)


@pytest.mark.parametrize("cls", [dnn.VariationalLSTM, dnn.VariationalGRU])
def test_checkpoint_recomputation_reproduces_masks(cls):
    """Under activation checkpointing the recomputed forward redraws the same masks: same gradients."""
    torch.manual_seed(0)
    m = cls(4, 5, num_layers=2, input_dropout=0.3, recurrent_dropout=0.3, output_dropout=0.3, seed=3)
    x = torch.randn(6, 2, 4, requires_grad=True)
    plain = torch.autograd.grad(m(x)[0].square().sum(), [x, *m.parameters()])
    for site in (m.input_drop, m.recurrent_drop, m.output_drop):
        site.reseed(int(site.seed))
    out = torch.utils.checkpoint.checkpoint(lambda v: m(v)[0], x, use_reentrant=False)
    checkpointed = torch.autograd.grad(out.square().sum(), [x, *m.parameters()])
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


def test_recurrent_mask_is_applied_to_the_hidden_state():
    """With only recurrent dropout, the output equals a reference loop that masks h_{t-1} with that mask."""
    torch.manual_seed(0)
    m = dnn.VariationalLSTM(3, 4, recurrent_dropout=0.5, seed=5)
    x = torch.randn(6, 2, 3)
    out, _ = m(x)
    mask = F.variational_mask((2, 4), 0.5, seed=6, step=0, stream=0)  # recurrent site: seed + 1, layer 0
    h = c = torch.zeros(2, 4)
    expected = []
    for t in range(6):
        gates = x[t] @ m.weight_ih_l0.T + m.bias_ih_l0 + (h * mask) @ m.weight_hh_l0.T + m.bias_hh_l0
        i, f, g, o = gates.chunk(4, 1)
        c = f.sigmoid() * c + i.sigmoid() * g.tanh()
        h = o.sigmoid() * c.tanh()
        expected.append(h)
    torch.testing.assert_close(out, torch.stack(expected), rtol=0, atol=1e-5)
    assert not torch.allclose(out, m.eval()(x)[0], atol=1e-3)


def test_hand_written_bptt_gradcheck():
    torch.manual_seed(0)
    args = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in ((4, 3, 8), (3, 2), (3, 2), (8, 2))]
    mask = F.variational_mask((3, 2), 0.5, seed=1, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *a: F.lstm_recurrence(*a, mask), args)
    assert torch.autograd.gradcheck(lambda *a: F.lstm_recurrence(*a, None), args)


def test_bad_arguments():
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1, but got 1.5"):
        dnn.VariationalLSTM(3, 4, recurrent_dropout=1.5)
    with pytest.raises(ValueError, match="hidden_size must be a positive int"):
        dnn.VariationalGRU(3, 0)
    with pytest.raises(ValueError, match="expects input"):
        dnn.VariationalLSTM(3, 4, seed=0)(torch.ones(2, 3, 4, 5))
    with pytest.raises(ValueError, match="h_0 of shape"):
        dnn.VariationalGRU(3, 4, seed=0)(torch.ones(5, 2, 3), torch.zeros(1, 3, 4))
