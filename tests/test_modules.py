"""droplab.nn core modules in the seeded mode: steps, resume, checkpoint recomputation, replicas,
threads, convert/sites, and the version (torch.compile: test_compile.py; the unseeded mode:
test_seed_modes.py)."""

import copy

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import droplab as dl
import droplab.nn as dnn
from droplab.nn import _base


def _mlp(seed=0):
    """An MLP with two seeded dropout sites (the counter-based mode these tests are about)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), dnn.Dropout(0.5, seed=seed + 1), nn.Linear(32, 32),
                         nn.ReLU(), dnn.Dropout(0.3, seed=seed + 2), nn.Linear(32, 3))


def test_step_advances_in_training_only():
    m = dnn.Dropout(0.5, seed=0)
    x = torch.ones(16)
    first, second = m(x), m(x)
    assert int(m.step) == 2 and not torch.equal(first, second)
    m.eval()
    m(x)
    assert int(m.step) == 2


def test_state_dict_resume_draws_the_same_masks():
    x = torch.randn(4, 8)
    model = _mlp()
    for _ in range(5):
        model(x)
    state = copy.deepcopy(model.state_dict())
    expected = [model(x) for _ in range(3)]
    resumed = _mlp(seed=99)  # different weights and seeds until loaded
    assert int(resumed[2].seed) != int(model[2].seed)
    resumed.load_state_dict(state)
    for want in expected:
        torch.testing.assert_close(resumed(x), want, rtol=0, atol=0)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpoint_recompute_reproduces_masks_and_gradients(use_reentrant):
    x = torch.randn(6, 8, requires_grad=True)
    plain = _mlp()
    ckpt = copy.deepcopy(plain)
    for _ in range(2):  # a few iterations, so replay must pick the current step
        plain.zero_grad()
        ckpt.zero_grad()
        xa = x.detach().clone().requires_grad_(True)
        xb = x.detach().clone().requires_grad_(True)
        plain(xa).square().sum().backward()
        h = checkpoint(ckpt[:3], xb, use_reentrant=use_reentrant)
        h = checkpoint(ckpt[3:6], h, use_reentrant=use_reentrant)
        ckpt[6](h).square().sum().backward()
        for (name, pa), pb in zip(plain.named_parameters(), ckpt.parameters()):
            torch.testing.assert_close(pb.grad, pa.grad, rtol=0, atol=0, msg=name)
        torch.testing.assert_close(xb.grad, xa.grad, rtol=0, atol=0)
        assert int(ckpt[2].step) == int(plain[2].step)


def test_replica_is_folded_into_the_counter(monkeypatch):
    x = torch.ones(4096)
    outputs = {}
    for rank in (0, 1):
        monkeypatch.setattr(_base, "current_replica", lambda rank=rank: rank)
        outputs[rank, False] = dnn.Dropout(0.5, seed=3)(x)
        outputs[rank, True] = dnn.Dropout(0.5, seed=3, share_across_ranks=True)(x)
    assert torch.equal(outputs[0, True], outputs[1, True])
    agree = (outputs[0, False] == outputs[1, False]).float().mean().item()
    assert 0.45 < agree < 0.55  # independent masks agree on about half the elements


def test_masks_identical_with_one_and_two_threads():
    x = torch.randn(1 << 18)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = dl.functional.dropout(x, 0.5, seed=21, step=4)
        torch.set_num_threads(2)
        two = dl.functional.dropout(x, 0.5, seed=21, step=4)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(one, two)


def test_counters_stay_on_cpu_as_int64():
    m = _mlp().to(torch.float64)
    assert m[2].seed.dtype == torch.int64 and m[2].step.device.type == "cpu"
    assert m(torch.randn(2, 8, dtype=torch.float64)).dtype == torch.float64
    # a device move (the meta device stands in for an accelerator here) leaves the counters where they are
    seed, step = int(m[2].seed), int(m[2].step)
    moved = m.to("meta")
    assert moved[0].weight.device.type == "meta"
    assert moved[2].seed.device.type == "cpu" and moved[2].step.device.type == "cpu"
    assert (int(moved[2].seed), int(moved[2].step)) == (seed, step)


def test_module_rejects_bad_arguments():
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1, but got 1.5"):
        dnn.Dropout(1.5)
    with pytest.raises(ValueError, match="scaling must be one of"):
        dnn.Dropout(0.5, scaling="other")
    with pytest.raises(TypeError, match="seed must be an int"):
        dnn.Dropout(0.5, seed="7")
    with pytest.raises(RuntimeError, match="dropout1d: Expected 2D or 3D input, but received a 4D input"):
        dnn.Dropout1d(0.5)(torch.ones(2, 3, 4, 5))
    with pytest.raises(TypeError, match="floating-point"):
        dnn.Dropout(0.5)(torch.ones(2, dtype=torch.int32))


def _every_torch_dropout():
    return nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1), nn.Dropout1d(0.2), nn.Dropout2d(0.3),
                         nn.Dropout3d(0.4), nn.AlphaDropout(0.05), nn.FeatureAlphaDropout(0.15),
                         nn.Sequential(nn.Dropout(0.6, inplace=True)))


def test_convert_round_trips_every_torch_dropout_class():
    model = _every_torch_dropout()
    model[3].eval()
    before = [(name, type(m), m.p, m.training, getattr(m, "inplace", False)) for name, m in model.named_modules()
              if isinstance(m, nn.modules.dropout._DropoutNd)]
    converted = dl.convert(model, seed=5)
    droplab_sites = [s for s in dl.sites(converted) if s.library == "droplab"]
    assert len(droplab_sites) == len(before)
    assert [s.p for s in droplab_sites] == [b[2] for b in before]
    assert int(converted[1].seed) == 5 and int(converted[2].seed) == 6
    assert not converted[3].training and converted[1].training
    back = dl.convert(converted, to="torch")
    after = [(name, type(m), m.p, m.training, getattr(m, "inplace", False)) for name, m in back.named_modules()
             if isinstance(m, nn.modules.dropout._DropoutNd)]
    assert after == before


def test_convert_back_refuses_what_torch_cannot_express():
    model = nn.Sequential(dnn.Dropout(0.5, scaling="classic"))
    with pytest.raises(ValueError, match="cannot convert 0 to torch.nn"):
        dl.convert(model, to="torch")
    assert isinstance(model[0], dnn.Dropout)  # nothing was lost
    with pytest.raises(ValueError, match="to must be one of"):
        dl.convert(model, to="keras")


def test_convert_a_bare_dropout_module():
    assert isinstance(dl.convert(nn.Dropout(0.3)), dnn.Dropout)


def test_sites_reports_modules_and_torch_arguments():
    model = nn.Sequential(nn.Linear(4, 4), dnn.Dropout(0.5, scaling="classic"), nn.Dropout(0.2),
                          nn.LSTM(4, 4, num_layers=2, dropout=0.25), nn.MultiheadAttention(4, 2, dropout=0.1))
    rows = [s.as_row() for s in dl.sites(model)]
    assert [(r["name"], r["kind"], r["p"], r["scaling"], r["library"]) for r in rows] == [
        ("1", "Dropout", 0.5, "classic", "droplab"),
        ("2", "torch.nn.Dropout", 0.2, "inverted", "torch"),
        ("3", "torch.nn.LSTM(dropout=)", 0.25, "inverted", "torch"),
        ("4", "torch.nn.MultiheadAttention(dropout=)", 0.1, "inverted", "torch"),
    ]
    model.eval()
    assert not any(s.training for s in dl.sites(model))


def test_set_rate_global_and_by_pattern():
    model = nn.Sequential(nn.Linear(4, 4), dnn.Dropout(0.5), nn.Sequential(dnn.Dropout(0.5), nn.Dropout(0.5)))
    assert dl.set_rate(model, 0.1) == ["1", "2.0", "2.1"]
    dl.set_rate(model, {"2": 0.3, "2.1": 0.7})
    assert [model[1].p, model[2][0].p, model[2][1].p] == [0.1, 0.3, 0.7]
    with pytest.raises(ValueError, match=r"match no dropout site"):
        dl.set_rate(model, {"2.*": 0.2, "encoder": 0.4})
    assert model[2][0].p == 0.3  # a rejected call changes nothing
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1"):
        dl.set_rate(model, 1.2)


def test_version_agrees_across_pyproject_package_and_changelog():
    import pathlib
    import re

    pyproject = (pathlib.Path(__file__).parents[1] / "pyproject.toml").read_text()
    declared = re.search(r'^version = "([^"]+)"', pyproject, re.M).group(1)
    assert dl.__version__ == declared
    changelog = (pathlib.Path(__file__).parents[1] / "CHANGELOG.md").read_text()
    assert f"/ {declared}" in changelog or f"## {declared}" in changelog


def test_a_user_class_registered_onto_droplab_dropout_keeps_torch_dropout_converting_back():
    from droplab.conversion import CONVERSIONS, register_conversion

    class MyDrop(nn.Module):
        def __init__(self, rate):
            super().__init__()
            self.rate = rate

        def forward(self, x):
            return nn.functional.dropout(x, self.rate, self.training)

    saved = dict(CONVERSIONS)
    try:
        register_conversion(MyDrop, dl.nn.Dropout, lambda m, seed: dl.nn.Dropout(m.rate, seed=seed),
                               lambda m: MyDrop(m.p))
        converted = dl.convert(nn.Sequential(nn.Dropout(0.2), MyDrop(0.3)), seed=0)
        assert [type(m) for m in converted] == [dl.nn.Dropout, dl.nn.Dropout]
        back = dl.convert(converted, to="torch")
        assert type(back[0]) is nn.Dropout and back[0].p == 0.2 and back[1].p == 0.3
    finally:
        CONVERSIONS.clear()
        CONVERSIONS.update(saved)
