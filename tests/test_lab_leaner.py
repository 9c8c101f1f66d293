"""The leaner lab (issue 22, item 3): one rate field, one layout for every command, preflight's work reused,
one comparison row, one InputDropout, the library's public face only, the error path with the CLI."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import json
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

import droplab
from droplab.cli import COMMANDS, main
from droplab.lab.config import ExperimentConfig
from droplab.lab.errors import UserError
from droplab.lab.store import RunStore

ROOT = Path(__file__).resolve().parents[1]


# one rate field ------------------------------------------------------------------------------------------

def test_one_field_sets_the_rates():
    names = [f.name for f in dataclasses.fields(ExperimentConfig)]
    assert [n for n in names if "rate" in n or "dropout" in n] == ["rates"]
    assert ExperimentConfig().input_site is False  # structural: whether the input gets a site, not a rate
    assert len(inspect.getsource(ExperimentConfig.__post_init__).splitlines()) <= 5  # named checks, not 52 lines


# a config as droplab 0.2 stored it for the three runs of a default comparison with --input-dropout 0.2
OLD_STORED = {"name": "halved", "dataset": "mnist1d", "label_column": "label", "val_fraction": 0.1,
              "test_fraction": 0.2, "model": "mlp", "width": 8, "depth": 2, "activation": "relu", "batchnorm": "none",
              "dropout": 0.5, "layer_rates": None, "input_dropout": 0.2, "variant": "dropout", "schedule": None,
              "rates": None, "rate_scale": 0.5, "task": "auto", "nll_head": False, "epochs": 60, "batch_size": 100,
              "optimizer": "adamw", "lr": 0.002, "momentum": 0.9, "weight_decay": 0.0, "max_norm": None,
              "early_stopping_patience": None, "augment": False, "seed": 0, "device": "cpu", "threads": 1}


def test_old_stored_configs_load_as_the_rates_the_old_lab_built():
    with pytest.warns(DeprecationWarning, match=r"deprecated config keys \(dropout, layer_rates, input_dropout, "
                                                r"rate_scale\).*rates = \[0.1, 0.25, 0.25\]"):
        halved = ExperimentConfig.from_dict(OLD_STORED)
    # the old lab: an input site at 0.2 and hidden sites at 0.5, every rate times rate_scale 0.5
    assert halved.input_site and halved.rates == [0.1, 0.25, 0.25]
    from droplab.lab.build import build_model

    model = build_model(halved, (40,), 10)
    found = droplab.sites(model)
    assert found[0].name == "input_drop" and [s.p for s in found] == [0.1, 0.25, 0.25]
    with pytest.warns(DeprecationWarning):
        off = ExperimentConfig.from_dict({**OLD_STORED, "rate_scale": 0.0})
        built = ExperimentConfig.from_dict({**OLD_STORED, "rate_scale": 1.0, "input_dropout": 0.0})
        transformer = ExperimentConfig.from_dict({"model": "transformer", "layer_rates": [0.1, 0.3]})
        given = ExperimentConfig.from_dict({**OLD_STORED, "rates": [0.3]})  # rates won over the rest, as it did
    assert off.rates == [0.0] and built.rates == [0.5] and not built.input_site and given.rates == [0.3]
    assert transformer.rates == [0.1] * 4 + [0.3] * 4  # four sites per block
    assert "dropout" not in halved.to_dict() and "rates" in halved.to_dict()


def test_old_config_files_load_and_untranslatable_ones_say_what_to_write(tmp_path, capsys):
    toml = tmp_path / "old.toml"
    toml.write_text("dropout = 0.3\ninput_dropout = 0.2\nwidth = 8\n")
    with pytest.warns(DeprecationWarning, match="write that instead"):
        assert ExperimentConfig.from_toml(toml).rates == [0.2, 0.3, 0.3]
    assert main(["compare", "--config", str(toml), "--dry-run"]) == 0  # the command says it too
    captured = capsys.readouterr()
    assert "droplab compare: warning: deprecated config keys (dropout, input_dropout)" in captured.err
    assert json.loads(captured.out)[1]["config"]["rates"] == [0.2, 0.3, 0.3]
    with pytest.raises(UserError, match=r"give the rates instead \(rates = \[\.\.\.\]"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ExperimentConfig.from_dict({"model": "my.py:build", "rate_scale": 0.5})  # a factory's own rates: unknown


# one layout for every command ----------------------------------------------------------------------------

def test_every_command_is_a_thin_module_in_droplab_commands():
    assert set(COMMANDS) == {"compare", "runs", "sweep", "inspect", "uncertainty", "bench", "study"}
    for name, (module_name, _) in COMMANDS.items():
        assert module_name == f"droplab.commands.{name}"
        module = importlib.import_module(module_name)
        assert callable(module.configure) and callable(module.run)
    # no engine module carries a command's argparse code any more
    for path in [*(ROOT / "droplab" / "lab").rglob("*.py"), ROOT / "droplab" / "study" / "__init__.py",
                 ROOT / "droplab" / "bench" / "__init__.py"]:
        tree = ast.parse(path.read_text())
        defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert not {"configure", "run"} <= defined, path
    assert not (ROOT / "droplab" / "lab" / "api.py").exists() and not (ROOT / "droplab" / "study" / "cli.py").exists()


def test_the_error_path_lives_with_the_cli():
    from droplab import cli
    from droplab.lab import errors

    assert callable(cli.user_frames) and not hasattr(errors, "user_frames")


def test_one_input_dropout_class():
    from droplab.lab import build

    assert not hasattr(build, "InputDropout")
    model = build.build_model(ExperimentConfig(width=8, input_site=True), (6,), 2)
    first = droplab.sites(model)[0]
    assert first.name == "input_drop" and type(first.module) is droplab.nn.InputDropout and first.p == 0.2


# the library's public face only ------------------------------------------------------------------------

PUBLIC = {"droplab": droplab, "droplab.functional": droplab.functional, "droplab.nn": droplab.nn,
          "droplab.mc": droplab.mc, "droplab.diagnostics": droplab.diagnostics, "droplab.schedules": droplab.schedules}
OWN = ("droplab.lab", "droplab.commands", "droplab.bench", "droplab.study", "droplab.cli")


def _imports(path: Path):
    """``(module, [names])`` of every ``from X import ...`` in ``path``, relative imports made absolute."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            yield module, [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []


def test_the_lab_imports_only_the_librarys_public_face():
    files = [*(ROOT / "droplab" / "lab").rglob("*.py"), *(ROOT / "droplab" / "commands").rglob("*.py"),
             ROOT / "droplab" / "cli.py"]
    for path in files:
        for module, names in _imports(path):
            if not module.startswith("droplab") or module.startswith(OWN):
                continue
            assert module in PUBLIC, f"{path.name} imports {module}"
            public = set(PUBLIC[module].__all__) | ({"nn", "functional", "mc"} if module == "droplab" else set())
            assert set(names) <= public, f"{path.name} imports {set(names) - public} from {module}"


# preflight's data and models reused, one comparison row ---------------------------------------------------

COUNTING = '''
import torch
from torch import nn

CALLS = {"model": 0, "data": 0}


def build(input_shape, n_outputs):
    CALLS["model"] += 1
    return nn.Sequential(nn.Linear(input_shape[0], 16), nn.ReLU(), nn.Dropout(0.4), nn.Linear(16, n_outputs))


def data():
    CALLS["data"] += 1
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 5, generator=g)
    y = (x[:, 0] > 0).long()
    ds = torch.utils.data.TensorDataset
    return ds(x[:80], y[:80]), ds(x[80:100], y[80:100]), ds(x[100:], y[100:])
'''


@pytest.fixture
def counting(tmp_path, monkeypatch):
    (tmp_path / "counting.py").write_text(textwrap.dedent(COUNTING))
    monkeypatch.chdir(tmp_path)
    from droplab.lab.factories import resolve

    return resolve("counting.py:build", "model").__globals__["CALLS"]


def test_compare_builds_the_model_and_loads_the_data_once(counting, tmp_path, monkeypatch, capsys):
    saves = []
    original = RunStore.save_comparison
    monkeypatch.setattr(RunStore, "save_comparison", lambda self, *a, **k: (saves.append(a), original(self, *a, **k)))
    counting.update(model=0, data=0)
    assert main(["compare", "--model", "counting.py:build", "--dataset", "counting.py:data", "--epochs", "2",
                 "--db", str(tmp_path / "r.db"), "--report-dir", str(tmp_path / "rep"), "--no-progress",
                 "--no-coadaptation"]) == 0
    capsys.readouterr()
    assert counting == {"model": 1, "data": 1}  # the checks before training built and loaded; the runs reused it
    (row,) = saves  # one write of the comparison row, and it names the report written
    assert Path(row[3]).is_file() and row[3].endswith("index.html")
    with RunStore(tmp_path / "r.db") as store:
        assert store.get_comparison(row[0])["report"] == row[3]


def test_a_reused_model_trains_exactly_as_a_fresh_build(counting, tmp_path):
    from droplab.lab.comparison import plan, run_comparison
    from droplab.lab.trainer import train

    base = ExperimentConfig(model="counting.py:build", dataset="counting.py:data", epochs=2, batch_size=20, seed=4)
    configs = plan(base, [0.0, 0.4])
    assert [c.rates for c in configs] == [[0.0], [0.4]]  # one rate per site: the model has one
    result = run_comparison(configs, coadaptation=False)
    for config, reused in zip(configs, result.results):
        fresh = train(config, progress=False)  # builds its own model after torch.manual_seed(seed)
        assert [m["train_loss"] for m in fresh.history] == [m["train_loss"] for m in reused.history]
        for (name, p), (_, q) in zip(fresh.model.state_dict().items(), reused.model.state_dict().items()):
            assert torch.equal(p, q), name


def test_train_takes_a_built_model_and_stores_the_rates_that_ran(counting, tmp_path):
    from droplab.lab.build import build_model
    from droplab.lab.trainer import train

    config = ExperimentConfig(model="counting.py:build", dataset="counting.py:data", epochs=1, rates=[0.25])
    torch.manual_seed(config.seed)
    model = build_model(config.replace(rates=None), (5,), 2)
    with RunStore(tmp_path / "r.db") as store:
        result = train(config, store=store, progress=False, model=model)
        stored = store.get_run(result.run_id)["config"]
    assert result.model is model and droplab.sites(model)[0].p == 0.25
    assert stored["rates"] == [0.25] and result.config.rates == [0.25]
    # the factory takes no width, depth, activation, batchnorm or variant: they did not apply, so are not stored
    assert not {"width", "depth", "activation", "batchnorm", "variant"} & set(stored) and stored["seed"] == 0


def test_per_site_rates_that_do_not_fit_the_model_fail_the_dry_run(counting, tmp_path, capsys):
    db = tmp_path / "r.db"
    assert main(["compare", "--model", "counting.py:build", "--dataset", "counting.py:data", "--rates",
                 "0,0.1/0.2/0.3", "--db", str(db), "--dry-run"]) == 2
    assert "gives 3 per-site rates but the model has 1 dropout site" in capsys.readouterr().err
    assert not db.exists()
