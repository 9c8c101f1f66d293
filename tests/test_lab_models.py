import pytest
import torch
from lab_fixtures import write_npz

import droplab
from droplab.lab.config import ExperimentConfig
from droplab.lab.models import build_model, dropout_modules
from droplab.lab.trainer import train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_npz(tmp_path_factory.mktemp("data") / "d.npz", n=120, features=16)


@pytest.mark.parametrize("model, extra", [
    ("mlp", {"batchnorm": "before_dropout", "input_site": True}),
    ("mlp", {"batchnorm": "after_dropout", "activation": "gelu", "max_norm": 2.0}),
    ("cnn1d", {"variant": "channel"}),
    ("cnn1d", {"variant": "dropout", "input_site": True}),
    ("gru", {}),
    ("transformer", {}),
])
def test_each_model_trains_one_epoch(data, model, extra):
    per_layer = 4 if model == "transformer" else 1  # a transformer block has four sites
    rates = [0.1] * extra.get("input_site", False) + [0.1] * per_layer + [0.3] * per_layer
    cfg = ExperimentConfig(dataset=str(data), model=model, width=8, depth=2, epochs=1, batch_size=32,
                           rates=rates, **extra)
    result = train(cfg, progress=False)
    assert result.history[0]["epoch"] == 1 and result.final["epochs"] == 1
    for key in ("train_acc", "val_acc", "test_acc", "train_loss", "gap", "grad_norm", "ece"):
        assert key in result.history[0] or key in result.final
    assert result.history[0]["grad_norm"] > 0
    # the per-layer rates reach the sites, in order
    rates = [m.p for _, m in dropout_modules(result.model) if m.p in (0.1, 0.3)]
    assert rates[:1] == [0.1] and 0.3 in rates


def test_mlp_sites_and_batchnorm_placement():
    cfg = ExperimentConfig(width=8, depth=2, rates=[0.2, 0.4, 0.4], input_site=True, batchnorm="after_dropout")
    model = build_model(cfg, 40, 10)
    sites = droplab.sites(model)
    assert [s.p for s in sites] == [0.2, 0.4, 0.4]
    assert sites[0].name == "input_drop"  # the lab wraps the input: the first site
    kinds = [type(m).__name__ for m in model.model.net]
    assert kinds[kinds.index("Dropout", 2) + 1] == "BatchNorm1d"  # BN sits after the hidden site
    before = [type(m).__name__ for m in build_model(cfg.replace(batchnorm="before_dropout"), 40, 10).model.net]
    assert before[before.index("BatchNorm1d") + 2] == "Dropout"


def test_gru_dropout_is_variational():
    model = build_model(ExperimentConfig(model="gru", width=8, depth=1, rates=[0.5]), 40, 10)
    (_, site), = dropout_modules(model)
    assert site.noise_shape == (None, 1, None)  # one mask per sequence, shared over time


def test_variants_need_the_right_model():
    with pytest.raises(ValueError, match="variant 'channel' drops channels or blocks.*use model='cnn1d'"):
        build_model(ExperimentConfig(variant="channel"), 40, 10)


def test_missing_variant_has_a_clear_error(monkeypatch):
    from droplab.lab import models

    monkeypatch.setitem(models._VARIANT_CLASSES, "gaussian", "NoSuchDropout")
    with pytest.raises(ValueError, match="variant 'gaussian' is not available"):
        build_model(ExperimentConfig(variant="gaussian"), 40, 10)


def test_seeded_init_and_masks_are_reproducible():
    cfg = ExperimentConfig(width=8)
    torch.manual_seed(cfg.seed)
    a = build_model(cfg, 40, 10)
    torch.manual_seed(cfg.seed)
    b = build_model(cfg, 40, 10)
    x = torch.randn(4, 40)
    assert torch.equal(a.train()(x), b.train()(x))


@pytest.mark.parametrize("model, variant, cls", [
    ("cnn1d", "dropblock", "DropBlock1d"), ("gru", "locked", "LockedDropout"), ("mlp", "gaussian", "GaussianDropout"),
    ("mlp", "alpha", "AlphaDropout"), ("mlp", "concrete", "ConcreteDropout"),
])
def test_variants_fill_the_sites(data, model, variant, cls):
    cfg = ExperimentConfig(dataset=str(data), model=model, variant=variant, width=8, epochs=1, batch_size=40,
                           rates=[0.3])
    result = train(cfg, progress=False)
    kinds = {type(m).__name__ for _, m in dropout_modules(result.model)}
    assert kinds == {cls} and result.history[0]["grad_norm"] > 0
