"""``droplab inspect``: loading MODEL specs, output formats and exit codes through droplab.cli.main."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from droplab.cli import main

MODELS = textwrap.dedent('''
    import torch
    import torch.nn.functional as F
    from torch import nn

    import droplab as dl


    def clean():
        return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), dl.nn.Dropout(0.3, seed=0),
                             nn.Linear(16, 2))


    def before_bn():  # a warning only
        return nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.5), nn.BatchNorm1d(16))


    class AlwaysOn(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            return F.dropout(self.fc(x), 0.5, training=True)


    def always_on():  # an error
        return AlwaysOn()


    class Unscaled(nn.Module):
        def forward(self, x):
            return dl.functional.dropout(x, 0.5, self.training, seed=None, scaling="classic") \\
                if self.training else x


    def unscaled_with_input():  # an error only the runtime probe can see
        return nn.Sequential(nn.Linear(8, 8), Unscaled()), torch.randn(4, 8)


    def not_a_model():
        return 42
''')


@pytest.fixture()
def models(tmp_path):
    path = tmp_path / "zoo.py"
    path.write_text(MODELS)
    return str(path)


def test_clean_model_exits_zero_and_lists_sites(models, capsys):
    assert main(["inspect", f"{models}:clean", "--plain"]) == 0
    out = capsys.readouterr().out
    assert "dropout sites (1)" in out and "findings (0)" in out and "Dropout" in out


def test_warning_only_exits_zero(models, capsys):
    assert main(["inspect", f"{models}:before_bn", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [f["rule"] for f in report["findings"]] == ["dropout-before-batchnorm"]
    assert report["errors"] == 0 and report["traced_with"] == "fx" and report["sites"][0]["kind"] == "torch.nn.Dropout"


def test_error_finding_exits_one(models, capsys):
    assert main(["inspect", f"{models}:always_on", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["errors"] == 1 and report["findings"][0]["rule"] == "functional-dropout-always-on"


def test_runtime_probe_uses_the_factory_example(models, capsys):
    assert main(["inspect", f"{models}:unscaled_with_input", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [f["rule"] for f in report["findings"]] == ["missing-test-time-scale"] and report["example_input"]


def test_for_inference_and_input_shape(models, capsys):
    assert main(["inspect", f"{models}:clean", "--for-inference", "--input-shape", "4,8", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [f["rule"] for f in report["findings"]] == ["train-mode-at-inference"] and report["example_input"]


def test_rich_output(models, capsys):
    pytest.importorskip("rich")
    assert main(["inspect", f"{models}:always_on"]) == 1
    out = capsys.readouterr().out
    assert "functional-dropout-always-on" in out and "findings (1)" in out


def test_package_module_factory(capsys):
    assert main(["inspect", "torch.nn:Identity", "--plain"]) == 0
    assert "none" in capsys.readouterr().out


@pytest.mark.parametrize("spec, message", [
    ("no_such_package_xyz:f", "cannot import no_such_package_xyz: no module named no_such_package_xyz"),
    ("torch.nn:NoSuchThing", "has no attribute"),
    ("nofile_here.py:f", "no such file"),
    ("justaname", "MODEL must be"),
])
def test_load_errors_exit_two(spec, message, capsys):
    assert main(["inspect", spec]) == 2
    assert message in capsys.readouterr().err


def test_not_a_module_and_bad_shape(models, capsys):
    assert main(["inspect", f"{models}:not_a_model"]) == 2
    assert "must give a torch.nn.Module" in capsys.readouterr().err
    assert main(["inspect", f"{models}:clean", "--input-shape", "a,b"]) == 2
    assert "--input-shape" in capsys.readouterr().err


def test_lab_checkpoint(tmp_path, capsys):
    from droplab.lab.config import ExperimentConfig
    from droplab.lab.data import Split, Splits
    from droplab.lab.trainer import train

    g = torch.Generator().manual_seed(0)
    split = Split(torch.randn(64, 10, generator=g), torch.randint(0, 3, (64,), generator=g))
    splits = Splits(split, split, split, n_features=10, n_classes=3, name="toy")
    config = ExperimentConfig(epochs=1)
    result = train(config, splits=splits, save=tmp_path, progress=False)
    import droplab.lab.inspection as inspect_cmd

    original = inspect_cmd._load_checkpoint

    def toy_checkpoint(path):  # the checkpoint's own data is MNIST-1D; use the toy split instead
        from droplab.lab.models import build_model
        from droplab.lab.trainer import load_checkpoint

        state = load_checkpoint(path)
        model = build_model(ExperimentConfig.from_dict(state["config"]), 10, 3)
        model.load_state_dict(state["model"])
        return model.eval(), split.x[:8]

    inspect_cmd._load_checkpoint = toy_checkpoint
    try:
        code = main(["inspect", result.checkpoint, "--json"])
    finally:
        inspect_cmd._load_checkpoint = original
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["source"].startswith("lab checkpoint") and report["sites"]


USER_CODE = """
import torch
from torch import nn


class Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        raise RuntimeError("my forward is broken")


def good():
    return nn.Sequential(nn.Linear(8, 4), nn.Dropout(0.5))


def broken_forward():
    return Broken(), torch.randn(2, 8)


def broken_factory():
    raise ValueError("factory exploded")
"""


@pytest.mark.parametrize("argv, message, user_line", [
    ([":broken_factory"], "broken_factory() raised ValueError: factory exploded", 'raise ValueError("factory'),
    ([":broken_forward"], "the forward of {spec} on an input of shape (2, 8) raised RuntimeError: my forward is broken",
     'raise RuntimeError("my forward'),
    ([":good", "--input-shape", "3,5"], "mat1 and mat2 shapes cannot be multiplied (3x5 and 8x4) (check --input-shape)",
     None),
    ([":good", "--probe-samples", "0"], "--probe-samples must be a positive integer", None),
])
def test_user_code_failures_exit_two_with_only_the_users_frames(tmp_path, capsys, argv, message, user_line):
    path = tmp_path / "user_models.py"
    path.write_text(USER_CODE)
    spec = f"{path}{argv[0]}"
    assert main(["inspect", spec, *argv[1:], "--plain"]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("droplab inspect: error:") and message.format(spec=spec) in last
    assert "droplab/" not in err.replace(str(tmp_path), "") and "site-packages" not in err  # no library frame
    if user_line:
        assert err.startswith("Traceback (your code, most recent call last):") and str(path) in err
        assert user_line in err
    else:
        assert "Traceback" not in err


def test_a_file_that_raises_on_import_shows_its_own_frame(tmp_path, capsys):
    path = tmp_path / "raises.py"
    path.write_text("import torch\nraise ImportError('cannot import on purpose')\n")
    assert main(["inspect", f"{path}:f"]) == 2
    err = capsys.readouterr().err
    assert f'File "{path}", line 2' in err
    assert err.strip().splitlines()[-1] == (f"droplab inspect: error: importing {path} raised ImportError: "
                                             "cannot import on purpose")


def test_a_droplab_bug_keeps_its_traceback(tmp_path, monkeypatch):
    path = tmp_path / "user_models.py"
    path.write_text(USER_CODE)

    import droplab.diagnostics
    from droplab.lab.config import parse_schedule

    # a droplab function called wrongly from droplab's own code: the innermost frame is droplab's
    monkeypatch.setattr(droplab.diagnostics, "lint", parse_schedule)
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        main(["inspect", f"{path}:good"])
