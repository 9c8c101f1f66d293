"""Mode guards (inference_mode, assert_inference), quantization calibration, and autocast scaling."""

import pytest
import torch
import torch.nn.functional as TF
from torch import nn

import droplab as dl
from droplab.guards import InferenceModeError


class Net(nn.Module):
    def __init__(self, functional=None):
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.bn = nn.BatchNorm1d(8)
        self.drop = dl.nn.Dropout(0.5, seed=1)
        self.head = nn.Linear(8, 3)
        self.functional = functional

    def forward(self, x):
        h = self.drop(torch.relu(self.bn(self.fc(x))))
        if self.functional == "torch":
            h = TF.dropout(h, 0.3, training=True)  # the classic bug: hard-coded training=True
        elif self.functional == "droplab":
            h = dl.functional.dropout(h, 0.3, training=True, seed=5)
        return self.head(h)


def _x(n=5):
    return torch.randn(n, 6, generator=torch.Generator().manual_seed(0))


def test_assert_inference_passes_for_eval_model():
    model = Net().eval()
    dl.assert_inference(model)
    dl.assert_inference(model, _x())


def test_assert_inference_catches_train_mode_and_restores_buffers():
    model = Net().train()
    with pytest.raises(InferenceModeError, match=r"drop \(Dropout, p=0.5\) is in train mode"):
        dl.assert_inference(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    with pytest.raises(InferenceModeError) as info:
        dl.assert_inference(model, _x())
    message = str(info.value)
    assert "drop: a droplab dropout mask was drawn" in message
    assert "differs between two runs" in message
    for k, v in model.state_dict().items():  # step counter and BatchNorm statistics as before
        assert torch.equal(v, before[k]), k
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize("kind,expected", [("torch", r"<model>: torch.nn.functional.dropout\(training=True\)"),
                                           ("droplab", "<model>: a droplab dropout mask was drawn")])
def test_assert_inference_catches_functional_dropout_in_eval_model(kind, expected):
    model = Net(functional=kind).eval()
    dl.assert_inference(Net().eval(), _x())  # the same network without the call passes
    with pytest.raises(InferenceModeError, match=expected):
        dl.assert_inference(model, _x())


def test_assert_inference_catches_torch_rnn_dropout_in_train_mode():
    model = nn.LSTM(4, 4, num_layers=2, dropout=0.2).train()
    with pytest.raises(InferenceModeError, match=r"torch.nn.LSTM\(dropout=\)"):
        dl.assert_inference(model)


def test_inference_mode_is_deterministic_and_restores_modes():
    model = Net(functional="torch").train()
    x = _x()
    with dl.inference_mode(model) as m:
        assert m is model and not model.training and not model.drop.training
        a, b = model(x), model(x)
    assert torch.equal(a, b)
    expected = Net(functional=None)
    expected.load_state_dict(model.state_dict())
    torch.testing.assert_close(a, expected.eval()(x))  # the forced-off functional call is the identity
    assert all(m.training for m in model.modules())
    assert int(model.drop.step) == 0


def test_inference_mode_fails_loudly_on_a_droplab_mask():
    model = Net(functional="droplab")
    with pytest.raises(InferenceModeError, match="stochastic dropout inside inference_mode"):
        with dl.inference_mode(model):
            model(_x())
    assert model.training  # restored after the error
    with pytest.raises(InferenceModeError):
        with dl.inference_mode(model):
            dl.mc.predict(Net(), _x(), 2, seed=0)  # MC sampling inside a deterministic block


def test_quantization_calibration_with_dropout_guaranteed_off():
    tq = pytest.importorskip("torch.ao.quantization")

    def build():
        torch.manual_seed(0)
        return nn.Sequential(tq.QuantStub(), nn.Linear(6, 16), nn.ReLU(), dl.nn.Dropout(0.5, seed=2),
                             nn.Linear(16, 4), tq.DeQuantStub())

    def calibrate(model, guard):
        model.qconfig = tq.get_default_qconfig("fbgemm")
        prepared = tq.prepare(model)
        batches = [_x(32) * (i + 1) for i in range(3)]
        with torch.no_grad():
            if guard:
                with dl.inference_mode(prepared):
                    for xb in batches:
                        prepared(xb)
            else:
                for xb in batches:
                    prepared(xb)
        return prepared

    def observed(prepared):
        obs = prepared[4].activation_post_process  # input observer of the Linear after dropout
        return obs.min_val.item(), obs.max_val.item()

    reference = calibrate(build().eval(), guard=False)  # correct calibration: eval mode
    guarded = calibrate(build().train(), guard=True)  # a model left in train mode, guarded
    unguarded = calibrate(build().train(), guard=False)
    assert observed(guarded) == observed(reference)
    assert observed(unguarded) != observed(reference)  # without the guard dropout skews the observers
    quantized = tq.convert(dl.deploy.strip(guarded))  # droplab's dropout takes float tensors only
    assert not any(isinstance(m, dl.nn.StochasticModule) for m in quantized.modules())
    assert quantized(_x(4)).shape == (4, 4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_training_scales_like_fp32(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), dl.nn.Dropout(0.4, seed=3), nn.Linear(64, 64),
                          dl.nn.Dropout(0.4, seed=4))
    x = torch.randn(32, 16)
    ref = model(x)
    for m in model:
        if isinstance(m, dl.nn.StochasticModule):
            m.reseed(int(m.seed), 0)
    with torch.autocast("cpu", dtype=dtype):
        hidden = model[1](model[0](x))
        out = model[3](model[2](hidden))
    assert hidden.dtype == dtype
    # same mask, and kept units scaled by 1/q: the half-precision output is the fp32 one rounded
    assert torch.equal(out == 0, ref == 0)
    tol = 2 ** -7 if dtype == torch.bfloat16 else 2 ** -10
    torch.testing.assert_close(out.float(), ref, rtol=4 * tol, atol=4 * tol * ref.abs().max().item())
    out.float().sum().backward()  # backward under the same mask works in half precision
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_mc_inference_matches_fp32(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), dl.nn.Dropout(0.5, seed=3), nn.Linear(64, 4)).eval()
    x = torch.randn(20, 16)
    ref = dl.mc.predict(model, x, 16, seed=1).samples
    with torch.autocast("cpu", dtype=dtype):
        half = dl.mc.predict(model, x, 16, seed=1).samples
    assert half.dtype == dtype
    tol = 2 ** -7 if dtype == torch.bfloat16 else 2 ** -10
    torch.testing.assert_close(half.float(), ref, rtol=8 * tol, atol=8 * tol * ref.abs().max().item())
    # the MC mean keeps the fp32 scale (no stray factor q or 1/q)
    ratio = half.float().mean(0).abs().sum() / ref.mean(0).abs().sum()
    assert abs(ratio.item() - 1) < 0.02


def test_assert_inference_counts_sites_not_messages():
    # one site seen three ways (train mode, a mask drawn, outputs differ) is one site
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), dl.nn.Dropout(0.5)).train()
    with pytest.raises(InferenceModeError, match=r"^1 dropout site\(s\) would be stochastic") as caught:
        dl.guards.assert_inference(model, torch.randn(2, 4))
    assert "\n  1: a droplab dropout mask was drawn" in str(caught.value)
    two = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5), torch.nn.Linear(4, 4),
                              torch.nn.Dropout(0.2)).train()
    with pytest.raises(InferenceModeError, match=r"^2 dropout site\(s\)"):
        dl.guards.assert_inference(two, torch.randn(2, 4))
