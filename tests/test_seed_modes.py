"""The two seed modes: ``seed=None`` behaves as torch.nn does; ``seed=int`` keeps resumable counters."""

import copy
import io

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import droplab as dl
import droplab.nn as dnn
from droplab import rng


def freeze_rng_state():
    """Restore torch's CPU generator on exit (torch's test helper of the same name does this)."""
    return torch.random.fork_rng(devices=[])


# every droplab class that replaces a torch.nn class, with an input it accepts
DROP_INS = [(dnn.Dropout, nn.Dropout, (4, 6)), (dnn.Dropout1d, nn.Dropout1d, (2, 3, 5)),
            (dnn.Dropout2d, nn.Dropout2d, (2, 3, 4, 4)), (dnn.Dropout3d, nn.Dropout3d, (2, 3, 2, 2, 2)),
            (dnn.AlphaDropout, nn.AlphaDropout, (4, 6)), (dnn.FeatureAlphaDropout, nn.FeatureAlphaDropout, (2, 3, 4))]


def _model(kinds, p=0.3):
    """Linear layers with a dropout module of each kind between them, built under manual_seed(0)."""
    torch.manual_seed(0)
    layers = []
    for kind in kinds:
        layers += [nn.Linear(6, 6), kind(p)]
    return nn.Sequential(*layers, nn.Linear(6, 2))


@pytest.mark.parametrize("ours, theirs, shape", DROP_INS, ids=[c[0].__name__ for c in DROP_INS])
def test_drop_in_is_a_subclass_with_torchs_state_dict(ours, theirs, shape):
    m = ours(0.25)
    assert isinstance(m, theirs) and not m.seeded
    assert m.state_dict() == {} == theirs(0.25).state_dict()
    assert repr(m).startswith(f"{theirs.__name__}(p=0.25, inplace=False") and "seed" not in repr(m)
    assert "seed=7" in repr(ours(0.25, seed=7))


def test_construction_draws_nothing_so_initial_weights_match_torch():
    ours = _model([c[0] for c in DROP_INS])
    theirs = _model([c[1] for c in DROP_INS])
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("ours, theirs, shape", DROP_INS, ids=[c[0].__name__ for c in DROP_INS])
def test_checkpoints_load_strictly_in_both_directions(ours, theirs, shape):
    a, b = _model([ours]), _model([theirs])
    a.load_state_dict(b.state_dict(), strict=True)
    b.load_state_dict(a.state_dict(), strict=True)
    assert not a[1].seeded


def test_manual_seed_and_freeze_rng_state_replay_the_mask():
    m = dnn.Dropout(0.5)
    x = torch.ones(64)
    torch.manual_seed(3)
    first = m(x)
    torch.manual_seed(3)
    assert torch.equal(m(x), first)
    with freeze_rng_state():
        frozen = m(x)
    assert torch.equal(m(x), frozen)  # freeze_rng_state restored the generator
    assert not torch.equal(m(x), frozen)  # and each forward draws a fresh key


def test_unseeded_mask_is_the_philox_mask_of_a_key_from_the_default_generator():
    x = torch.ones(3, 50)
    with freeze_rng_state():
        key = int(torch.randint(-2**63, 2**63 - 1, (), dtype=torch.int64)) % 2**64
    y = dnn.Dropout(0.5)(x)
    after = torch.get_rng_state()
    assert torch.equal(y != 0, rng.keep_mask((3, 50), 0.5, key))
    # one draw per forward, as a torch.nn dropout call consumes the generator; none in eval or at p = 0
    torch.set_rng_state(after)
    dnn.Dropout(0.5).eval()(x)
    dnn.Dropout(0.0)(x)
    assert torch.equal(torch.get_rng_state(), after)


def test_unseeded_backward_regenerates_its_own_mask():
    m = dnn.Dropout(0.5)
    for _ in range(3):
        x = torch.randn(40, requires_grad=True)
        y = m(x)
        y.backward(torch.ones(40))
        assert torch.equal(x.grad != 0, y != 0)
        torch.testing.assert_close(x.grad, (y != 0).float() * 2.0, rtol=0, atol=0)


@pytest.mark.parametrize("use_reentrant", [False, True])
@pytest.mark.parametrize("preserve_rng_state", [True, False])
def test_unseeded_checkpoint_recompute_reproduces_the_mask(preserve_rng_state, use_reentrant):
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(8, 8), dnn.Dropout(0.5), nn.Linear(8, 8))
    x = torch.randn(4, 8, requires_grad=True)
    with freeze_rng_state():
        plain = block(x)
        plain.sum().backward()
    want, x.grad = x.grad.clone(), None
    out = checkpoint(block, x, use_reentrant=use_reentrant, preserve_rng_state=preserve_rng_state)
    assert torch.equal(out, plain)
    out.sum().backward()
    assert torch.equal(x.grad, want)


def _legacy_checkpoint() -> bytes:
    """A state_dict as droplab 0.1 wrote it for ``Sequential(Linear, Dropout(0.5))``: seed and step buffers."""
    torch.manual_seed(0)
    state = {"0.weight": torch.randn(4, 4), "0.bias": torch.zeros(4),
             "1.seed": torch.tensor(-1234567890123, dtype=torch.int64), "1.step": torch.tensor(7, dtype=torch.int64)}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def test_legacy_checkpoint_seeds_an_unseeded_module():
    state = torch.load(io.BytesIO(_legacy_checkpoint()), weights_only=True)
    model = nn.Sequential(nn.Linear(4, 4), dnn.Dropout(0.5))
    model.load_state_dict(state, strict=True)
    site = model[1]
    assert site.seeded and int(site.seed) == -1234567890123 and int(site.step) == 7
    y = site(torch.ones(64))
    assert int(site.step) == 8
    assert torch.equal(y != 0, rng.keep_mask(64, 0.5, -1234567890123 % 2**64, step=7))
    assert f"seed={-1234567890123 % 2**64}" in repr(site)


def test_seeded_mode_resumes_exactly_and_keeps_counters_on_cpu():
    a = dnn.Dropout(0.5, seed=5)
    x = torch.ones(32)
    for _ in range(3):
        a(x)
    b = dnn.Dropout(0.5)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    assert torch.equal(a(x), b(x)) and int(b.step) == 4
    with pytest.raises(RuntimeError, match="Missing key"):
        dnn.Dropout(0.5, seed=1).load_state_dict({}, strict=True)
    moved = copy.deepcopy(a).to("meta")
    assert moved.seed.device.type == "cpu" and int(moved.step) == 4


def test_reseed_makes_an_unseeded_module_seeded():
    m = dnn.Dropout(0.5)
    m.reseed(9, step=2)
    assert m.seeded and set(m.state_dict()) == {"seed", "step"}
    assert torch.equal(m(torch.ones(16)), dl.functional.dropout(torch.ones(16), 0.5, seed=9, step=2))


@pytest.mark.filterwarnings("ignore:dropout[23]d. Received")  # 2-D input to Dropout2d/3d warns, as in torch
def test_convert_keeps_the_state_dict_so_torch_checkpoints_load_strictly():
    torch_model = _model([c[1] for c in DROP_INS])
    converted = dl.convert(copy.deepcopy(torch_model))
    assert all(isinstance(m, ours) for m, ours in zip(converted[1::2], [c[0] for c in DROP_INS]))
    assert converted.state_dict().keys() == torch_model.state_dict().keys()
    converted.load_state_dict(torch_model.state_dict(), strict=True)
    torch_model.load_state_dict(converted.state_dict(), strict=True)
    x = torch.randn(3, 6)
    torch.testing.assert_close(converted.eval()(x), torch_model.eval()(x), rtol=0, atol=0)


def test_eager_forward_keeps_the_step_buffer_identity():
    # DDP's buffer list, hooks and user references hold the buffer object: eager forwards advance it in place
    m = dnn.Dropout(0.5, seed=2)
    step = m.step
    m(torch.ones(8))
    assert m.step is step and int(step) == 1
