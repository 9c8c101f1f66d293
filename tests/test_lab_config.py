import re

import pytest
import torch

from droplab.lab.config import ExperimentConfig
from droplab.lab.errors import UserError


def test_every_field_has_a_default_and_a_reason():
    help_ = ExperimentConfig.field_help()
    assert {"dataset", "label_column", "model", "width", "depth", "activation", "batchnorm", "rates",
            "input_site", "variant", "schedule", "epochs", "batch_size", "optimizer", "lr", "momentum",
            "weight_decay", "max_norm", "early_stopping_patience", "augment", "seed"} <= set(help_)
    assert all(text.strip() for text in help_.values())
    ExperimentConfig()  # every field has a default


def test_round_trip_through_dict():
    cfg = ExperimentConfig(rates=[0.1, 0.2], input_site=True, max_norm=3.0)
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg


def test_unknown_key_is_an_error_with_a_suggestion():
    with pytest.raises(ValueError, match=r"unknown config key\(s\): 'dropuot' \(did you mean 'dropout'\? it is "
                                         r"deprecated: rates sets every site's rate\)"):
        ExperimentConfig.from_dict({"dropuot": 0.5})
    with pytest.raises(ValueError, match=r"'rate' \(did you mean 'rates'\?\)"):
        ExperimentConfig.from_dict({"rate": 0.5})


def test_overrides_are_typed():
    cfg = ExperimentConfig().with_overrides(["epochs=5", "rates=[0.1,0.5]", "augment=true", "input_site=true",
                                             "max_norm=null", "model=cnn1d", "lr=1e-3", "schedule=ramp:3"])
    assert cfg.epochs == 5 and cfg.rates == [0.1, 0.5] and cfg.augment is True and cfg.input_site is True
    assert cfg.max_norm is None and cfg.model == "cnn1d" and cfg.lr == 1e-3 and cfg.schedule == "ramp:3"
    assert ExperimentConfig().with_overrides(["rates=0.2,0.4"]).rates == [0.2, 0.4]
    assert ExperimentConfig().with_overrides(["rates=0"]).rates == [0.0]  # one value: every site
    assert isinstance(ExperimentConfig().with_overrides(["rates=0"]).rates[0], float)


@pytest.mark.parametrize("override, message", [
    ("rates=1.5", "dropout probability has to be between 0 and 1, but got 1.5"),
    ("rates=[0.1,-0.5]", "dropout probability has to be between 0 and 1, but got -0.5"),
    ("dropout=1.5", "dropout (deprecated) must be between 0 and 1, but got 1.5"),
    ("epochs=2.5", "epochs must be an integer"),
    ("epochs=many", "epochs must be a number"),
    ("augment=1", "augment must be true or false"),
    ("model=resnet", "model must be one of mlp, cnn1d, gru, transformer, but got 'resnet'"),
    ("schedule=linear", "schedule must be one of ramp:N"),
    ("variant=magic", "variant must be one of"),
    ("nope", "override must look like key=value"),
    ("lr=NaN", "lr must be a finite number, but got nan"),
    ("lr=Infinity", "lr must be a finite number, but got inf"),
    ("weight_decay=-Infinity", "weight_decay must be a finite number"),
    ("max_norm=NaN", "max_norm must be a finite number"),
    ("momentum=NaN", "momentum must be a finite number"),
    ("device=foo", "device must be a torch device such as cpu, cuda or cuda:1, but got 'foo'"),
    ("threads=-1", "threads must be a positive integer or null"),
    ("threads=0", "threads must be a positive integer or null"),
    ("seed=-1", "seed must be an integer in 0..2**64-1, but got -1"),
    ("seed=18446744073709551616", "seed must be an integer in 0..2**64-1"),
    ("val_fraction=0.8", "val_fraction + test_fraction must leave training data"),
    ("variant=dropblock", "variant 'dropblock' drops channels or blocks of a (N, C, L) signal: use model='cnn1d'"),
    ("variant=locked", "variant 'locked' shares one mask over time steps: use model='gru' or 'transformer'"),
    ("device=meta", "device 'meta' holds no data and cannot train"),
])
def test_bad_values_are_rejected(override, message):
    with pytest.raises(UserError, match=re.escape(message)):
        ExperimentConfig().with_overrides([override])


def test_edge_values_are_accepted():
    cfg = ExperimentConfig().with_overrides(["seed=18446744073709551615", "threads=null", "val_fraction=0.5",
                                             "test_fraction=0.49"])
    assert (cfg.seed, cfg.threads, cfg.val_fraction) == (2**64 - 1, None, 0.5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_unavailable_device_is_rejected_at_config_time():
    with pytest.raises(ValueError, match="torch sees no CUDA device here"):
        ExperimentConfig(device="cuda")


def test_toml_nan_and_bad_files(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text("lr = nan\n")
    with pytest.raises(UserError, match="lr must be a finite number"):
        ExperimentConfig.from_toml(path)
    path.write_bytes(b"name = '\xff\xfe'\n")
    with pytest.raises(UserError, match="is not valid TOML"):
        ExperimentConfig.from_toml(path)
    with pytest.raises(UserError, match="is a directory"):
        ExperimentConfig.from_toml(tmp_path)


def test_from_toml(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text('model = "cnn1d"\nwidth = 32\nrates = [0.1, 0.3]\n')
    cfg = ExperimentConfig.from_toml(path)
    assert (cfg.model, cfg.width, cfg.rates) == ("cnn1d", 32, [0.1, 0.3])
    path.write_text("[experiment]\nepochs = 3\n")
    assert ExperimentConfig.from_toml(path).epochs == 3
    path.write_text("widht = 3\n")
    with pytest.raises(ValueError, match="did you mean 'width'"):
        ExperimentConfig.from_toml(path)
    with pytest.raises(FileNotFoundError, match="config file not found"):
        ExperimentConfig.from_toml(tmp_path / "missing.toml")


def test_batchnorm_with_batches_of_one_is_refused():
    with pytest.raises(UserError, match="batchnorm needs batches of at least 2 examples"):
        ExperimentConfig().with_overrides(["batchnorm=before_dropout", "batch_size=1"])
    with pytest.raises(UserError, match="variant 'concrete' learns the rate of the layer it wraps"):
        ExperimentConfig().with_overrides(["model=cnn1d", "variant=concrete"])
    assert ExperimentConfig().with_overrides(["model=cnn1d", "variant=dropblock"]).variant == "dropblock"
