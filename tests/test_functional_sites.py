"""Functional dropout as a site: found by a probe forward, routed to droplab by convert, sampled by mc.predict."""

import copy
import pickle

import torch
import torch.nn.functional as TF
from scipy.stats import binomtest
from torch import nn

import droplab as dl
from droplab import functional as DF

DT = torch.float64


class TwoCalls(nn.Module):
    """Two functional dropouts in one forward, one of them hard-coded to training=True."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 16)

    def forward(self, x):
        h = TF.dropout(self.a(x), 0.4, self.training)
        return torch.dropout(h, 0.2, True)


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.2, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.encoder(x).mean(1))


def test_sites_lists_calls_with_issuer_and_index():
    model = nn.Sequential(nn.Identity(), TwoCalls()).to(DT)
    found = dl.sites(model, torch.randn(3, 5, dtype=DT))
    assert [(s.name, s.kind, s.p, s.library) for s in found] == [
        ("1#0", "F.dropout", 0.4, "torch"), ("1#1", "torch.dropout", 0.2, "torch")]
    assert found[0].module is model[1]
    assert dl.sites(model) == []  # no example input: module sites only
    assert not model.training or all(m.training for m in model.modules())


def test_probe_leaves_model_generator_and_buffers_as_they_were():
    model = nn.Sequential(nn.Linear(5, 5), nn.BatchNorm1d(5), TwoCalls()).eval()
    stats, x = model[1].running_mean.clone(), torch.randn(1, 5)
    state = torch.get_rng_state()
    assert len(dl.sites(model, x)) == 2  # one row: BatchNorm stays in eval for the probe
    assert torch.equal(model[1].running_mean, stats) and torch.equal(torch.get_rng_state(), state)
    assert not any(m.training for m in model.modules())


def test_transformer_encoder_internal_dropout_found_and_mc_sampled():
    torch.manual_seed(0)
    model, x = Encoder().to(DT).eval(), torch.randn(4, 5, 8, dtype=DT)
    kinds = [(s.name, s.kind) for s in dl.sites(model, x) if "#" in s.name]
    assert kinds == [(f"encoder.layers.{i}.self_attn#0", "F.scaled_dot_product_attention") for i in range(2)]
    res = dl.mc.predict(model, x, 6, seed=3)
    assert res.path != "loop" and res.samples.std(0).min() > 0
    torch.testing.assert_close(res.samples, dl.mc.sample_loop(model, x, 6, seed=3), rtol=1e-9, atol=1e-9)
    assert not model.training


def test_multihead_attention_with_weights_sampled_and_converted():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, dropout=0.5, batch_first=True).to(DT)

    class Attend(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = mha

        def forward(self, x):
            return self.attn(x, x, x)[0]  # need_weights=True: F.dropout on the weights inside torch

    model, x = Attend().eval(), torch.randn(3, 4, 8, dtype=DT)
    assert [s.kind for s in dl.sites(model, x) if "#" in s.name] == ["F.dropout"]
    res = dl.mc.predict(model, x, 5, seed=0)
    assert res.samples.std(0).max() > 0
    converted = dl.convert(model, seed=9, example_input=x).train()
    assert int(converted.attn.dropout_call0.step) == 0
    converted(x)
    assert int(converted.attn.dropout_call0.step) == 1


def test_converted_functional_call_draws_droplab_mask_and_regenerates_it_in_backward():
    model = TwoCalls().to(DT)
    x = torch.randn(6, 5, dtype=DT)
    converted = dl.convert(model, seed=4, example_input=x).train()
    assert [type(m).__name__ for m in converted.children()] == ["Linear", "Dropout", "Dropout"]
    assert converted.dropout_call0.p == 0.4 and converted.dropout_call1.p == 0.2
    h = converted.a(x).detach().requires_grad_(True)
    first = DF.dropout(h, 0.4, True, seed=4, step=0)
    expected = DF.dropout(first, 0.2, True, seed=5, step=0)
    out = converted(x)
    torch.testing.assert_close(out, expected)
    # backward: the gradient of sum() w.r.t. the Linear's output is the product of the two scaled masks
    grad = torch.autograd.grad(converted(x).sum(), converted.a.weight)[0]
    mask = DF.dropout(torch.ones_like(h), 0.4, True, seed=4, step=1) * DF.dropout(torch.ones_like(h), 0.2, True,
                                                                                      seed=5, step=1)
    torch.testing.assert_close(grad, mask.T @ x)
    keep = (DF.dropout(torch.ones(20000, dtype=DT), 0.4, True, seed=4, step=0) != 0).sum()
    assert binomtest(int(keep), 20000, 0.6).pvalue > 1e-3


def test_unseeded_conversion_keeps_state_dict_and_follows_torch_manual_seed():
    model = TwoCalls()
    keys = set(model.state_dict())
    converted = dl.convert(model, example_input=torch.randn(2, 5)).train()
    assert set(converted.state_dict()) == keys
    x = torch.randn(4, 5)
    torch.manual_seed(1)
    a = converted(x)
    torch.manual_seed(1)
    assert torch.equal(converted(x), a)


def test_converted_model_deepcopies_pickles_and_converts_back():
    converted = dl.convert(TwoCalls(), seed=1, example_input=torch.randn(2, 5)).train()
    x = torch.randn(3, 5)
    clone = copy.deepcopy(converted)
    restored = pickle.loads(pickle.dumps(converted))
    out = converted(x)
    assert torch.equal(clone(x), out) and torch.equal(restored(x), out)
    assert int(clone.dropout_call0.step) == 1 and int(converted.dropout_call0.step) == 1
    back = dl.convert(converted, to="torch")
    assert not back._forward_pre_hooks
    torch.manual_seed(0)
    a = back(x)
    torch.manual_seed(0)
    assert torch.equal(a, TwoCalls.forward(back, x))  # torch's generator again


def test_mc_samples_functional_sites_independently_and_reproducibly():
    torch.manual_seed(0)
    model, x = TwoCalls().to(DT).eval(), torch.randn(6, 5, dtype=DT)
    res = dl.mc.predict(model, x, 40, seed=2, max_batch=60)
    torch.testing.assert_close(res.samples, dl.mc.sample_loop(model, x, 40, seed=2))
    h = model.a(x)
    zeros = (res.samples == 0).double().mean().item()
    assert abs(zeros - (1 - 0.6 * 0.8)) < 0.03  # both calls drop, independently: keep = 0.6 * 0.8
    # same masks; the float64 matmul of a row may be summed in another order in another batch or on another CPU
    torch.testing.assert_close(dl.mc.predict(model, x, 40, seed=2, max_batch=60).samples, res.samples,
                               rtol=1e-12, atol=1e-12)
    consistent = dl.mc.predict(model, x[:1].repeat(5, 1), 7, seed=2, consistent=True).samples
    torch.testing.assert_close(consistent, consistent[:, :1].expand_as(consistent), rtol=1e-12, atol=1e-12)
    assert torch.equal(consistent == 0, consistent[:, :1].expand_as(consistent) == 0)  # the masks themselves
    assert h.shape == (6, 16)
