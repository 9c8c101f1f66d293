"""The lab's last rough edges (issue 20, items 4 and 5): each one clear error before anything is stored, or a
warning where the input is legal but suspicious; user strings never drive the terminal; files only ever replace
regular files; dead runs are marked failed by whoever opens the store."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from lab_fixtures import write_npz

from droplab.cli import main
from droplab.lab.store import RunStore

ROOT = Path(__file__).resolve().parents[1]


def digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def user_error(capsys, argv: list[str], contains: str, store: Path | None = None) -> str:
    """``droplab ARGV`` is one short error (exit 2, no traceback) and leaves ``store`` as it was."""
    before = digest(store) if store is not None else None
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback (most recent" not in err and f"droplab {argv[0]}: error:" in err, err
    assert contains in err, err
    if store is not None:
        assert digest(store) == before, "the run store changed"
    return err


MODELS = '''
import torch
from torch import nn


def narrow(input_shape, n_outputs):
    return nn.Sequential(nn.Linear(input_shape[0], 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, n_outputs - 1))


def wide(input_shape, n_outputs):
    return nn.Sequential(nn.Linear(input_shape[0], 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, n_outputs + 2))


def no_site(input_shape, n_outputs):
    return nn.Sequential(nn.Linear(input_shape[0], 8), nn.ReLU(), nn.Linear(8, n_outputs))


class TrainOnly(nn.Module):
    def __init__(self, d, k):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, 8), nn.Dropout(0.5), nn.Linear(8, k))

    def forward(self, x):
        if self.training:
            raise RuntimeError("my model breaks in training mode")
        return self.net(x)


def train_only(input_shape, n_outputs):
    return TrainOnly(input_shape[0], n_outputs)


def factory_own(input_shape, n_outputs):
    return nn.Sequential(nn.Linear(input_shape[0], 8), nn.ReLU(), nn.Dropout(0.4), nn.Linear(8, 8), nn.ReLU(),
                         nn.Dropout(0.4), nn.Linear(8, n_outputs))


def ragged_data():
    ds = torch.utils.data.TensorDataset
    return ds(torch.randn(40, 4), torch.arange(40) % 2), ds(torch.randn(10, 3), torch.arange(10) % 2)
'''


@pytest.fixture
def folder(tmp_path, monkeypatch):
    (tmp_path / "models.py").write_text(textwrap.dedent(MODELS))
    write_npz(tmp_path / "d.npz", n=90, features=6)  # three classes
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _compare(folder: Path, model: str, *extra: str) -> list[str]:
    return ["compare", "--model", f"models.py:{model}", "--dataset", "d.npz", "--db", str(folder / "r.db"),
            "--set", "epochs=1", "--no-report", "--no-progress", "--no-coadaptation", *extra]


# item 4 ----------------------------------------------------------------------------------------------------

def test_a_head_narrower_than_the_classes_is_one_error_and_a_wider_one_a_warning(folder, capsys):
    user_error(capsys, _compare(folder, "narrow"), "head gives (2,) per example, but the data has 3 classes")
    assert not (folder / "r.db").exists()
    assert main(_compare(folder, "wide", "--dry-run")) == 0
    err = capsys.readouterr().err
    assert "droplab compare: warning: model models.py:wide's head gives 5 logits per example for 3 classes" in err


def test_a_model_files_directory_is_importable_as_python_file_py_makes_it(tmp_path, monkeypatch, capsys):
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "blocks.py").write_text("from torch import nn\n\ndef head(d, k):\n"
                                                 "    return nn.Sequential(nn.Linear(d, 8), nn.Dropout(0.3),"
                                                 " nn.Linear(8, k))\n")
    (tmp_path / "proj" / "net.py").write_text("from blocks import head\n\ndef build(input_shape, n_outputs):\n"
                                              "    from blocks import head as late  # a lazy import works too\n"
                                              "    return late(input_shape[0], n_outputs)\n")
    write_npz(tmp_path / "d.npz", n=60, features=5)
    monkeypatch.chdir(tmp_path)  # not the model's directory
    assert main(["compare", "--model", "proj/net.py:build", "--dataset", "d.npz", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)[1]["config"]["rates"] == [0.3]
    assert main(["inspect", "proj/net.py:build", "--plain"]) in (0, 2)  # imported; the factory needs arguments
    assert "No module named 'blocks'" not in capsys.readouterr().err


def test_compare_refuses_a_model_without_a_dropout_site(folder, capsys):
    user_error(capsys, _compare(folder, "no_site", "--dry-run"), "has no dropout site, so compare has nothing")
    user_error(capsys, _compare(folder, "no_site"), "has no dropout site")
    assert not (folder / "r.db").exists()


@pytest.mark.slow  # trains, or starts a fresh interpreter
def test_a_closed_pipe_ends_quietly(tmp_path):
    db = tmp_path / "r.db"
    with RunStore(db) as store:
        run_id = store.start_run({"x": 1}, name="long")
        for epoch in range(1, 400):
            store.log_epoch(run_id, epoch, {"val_acc": 0.5})
        store.finish_run(run_id, {"val_acc": 0.5})
    read, write = os.pipe()
    os.close(read)  # the reader is gone before droplab writes a byte: `droplab runs show 1 | head -0`
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "droplab.cli", "runs", "show", str(run_id), "--db", str(db)],
                          stdout=write, stderr=subprocess.PIPE, text=True, env=env, timeout=300)
    os.close(write)
    assert done.returncode == 141 and done.stderr == ""  # as a shell reports SIGPIPE, and no traceback


@pytest.mark.slow  # trains, or starts a fresh interpreter
def test_resume_of_a_run_saved_without_a_checkpoint_is_one_error(folder, capsys):
    assert main(_compare(folder, "factory_own", "--rates", "0,0.4")) == 0
    capsys.readouterr()
    user_error(capsys, ["compare", "--resume", "1", "--db", str(folder / "r.db"), "--set", "epochs=3"],
               "run 1 has no checkpoint to resume from: it was trained without --save", store=folder / "r.db")


@pytest.mark.slow  # trains, or starts a fresh interpreter
def test_stored_configs_and_report_names_show_what_the_factory_built(folder, capsys):
    assert main(_compare(folder, "factory_own")) == 0
    capsys.readouterr()
    with RunStore(folder / "r.db") as store:
        runs = {run["name"]: run for run in store.list_runs()}
        comparison = store.get_comparison(runs["as built"]["group_id"])
    as_built = runs["as built"]["config"]
    assert as_built["rates"] == [0.4, 0.4] and runs["halved"]["config"]["rates"] == [0.2, 0.2]
    for config in (as_built, *comparison["config"]["runs"]):  # the lab's defaults the factory did not take
        assert not {"width", "depth", "activation", "batchnorm", "variant", "dropout"} & set(config), config
    out = folder / "out"
    assert main(["uncertainty", "--model", "models.py:factory_own", "--dataset", "d.npz", "--set", "epochs=1",
                 "--samples", "3", "--curve", "1,2", "--eps", "0.1", "--no-baseline", "--no-progress", "--out",
                 str(out)]) == 0
    capsys.readouterr()
    (report,) = out.iterdir()
    assert report.name.endswith("-p-0.4") and "dropout" not in json.loads((report / "results.json").read_text())[
        "config"]


def test_regression_reports_use_regression_words(tmp_path):
    from droplab.lab.report import write_report

    history = [{"epoch": 1, "train_rmse": 1.0, "val_rmse": 1.2, "train_loss": 1.0, "val_loss": 1.2, "gap": 0.2}]
    runs = [{"label": "as built", "history": history, "correlation": 0.3, "effective_rank": 4.0,
             "mean_activation": 0.2, "near_zero": 0.1, "coadaptation_s": 0.5, "levels": [0.5],
             "calibration_mc": [0.5], "calibration_ws": [0.4]}]
    page = write_report(tmp_path / "r", runs, title="t", task="regression").read_text()
    assert "Co-adaptation" in page and "accuracy lost" not in page and "ablation drop" not in page
    from droplab.lab.report import coadaptation_columns, format_table

    assert "ablation" not in format_table(runs, coadaptation_columns("regression"))
    assert "ablation drop" in format_table(runs, coadaptation_columns("classification"))


# item 5: the fuzz campaign ---------------------------------------------------------------------------------

def test_a_dataset_factory_with_splits_of_different_shapes_is_one_error(folder, capsys):
    user_error(capsys, ["compare", "--dataset", "models.py:ragged_data", "--db", str(folder / "r.db")],
               "the splits' features differ in shape (train (4,), val (3,)")
    assert not (folder / "r.db").exists()


def test_a_model_that_raises_only_in_training_is_one_error_before_anything_is_stored(folder, capsys):
    err = user_error(capsys, _compare(folder, "train_only"), "my model breaks in training mode")
    assert "training step" in err and 'models.py", line' in err  # the user's own frame
    assert not (folder / "r.db").exists()


def test_names_with_newlines_never_forge_lines(tmp_path, capsys):
    db = tmp_path / "r.db"
    data = write_npz(tmp_path / "d.npz", n=60, features=4)
    assert main(["compare", "--dataset", str(data), "--set", "name=x\nFAKE-LINE verdict: dropout hurts\x1b[2J",
                 "--rates", "0,0.5", "--set", "epochs=1", "--set", "width=8", "--db", str(tmp_path / "c.db"),
                 "--no-report", "--no-progress", "--no-coadaptation"]) == 2
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    assert "name must be a string without control characters" in printed and "Traceback" not in printed
    assert not any(line.startswith("FAKE-LINE") for line in printed.splitlines())
    assert "\x1b" not in printed  # the refused name is shown escaped (repr)
    assert not (tmp_path / "c.db").exists()  # refused before anything is stored
    with RunStore(db) as store:  # names stored by another writer, or before droplab refused them
        run_id = store.start_run({"x": 1}, name="ok\nFAKE-LINE verdict: dropout hurts", study="s\n\x1b[2Jx",
                                 group="g\x07")
        store.finish_run(run_id, {"val_acc": 0.5})
    for argv in (["runs", "--db", str(db)], ["runs", "show", str(run_id), "--db", str(db)]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert not any(line.startswith("FAKE-LINE") for line in out.splitlines())
        assert "\x1b" not in out and "\x07" not in out and "okFAKE-LINE" in out


def test_control_characters_in_a_sweep_name(tmp_path, capsys):
    import optuna

    from droplab.lab import sweep as S

    user_error(capsys, ["sweep", "--name", "a\x1b]0;pwned\x07\x1b[2J", "--storage", str(tmp_path / "s.db"),
                        "--db", str(tmp_path / "r.db")], "study name must not contain control characters")
    assert not (tmp_path / "s.db").exists() and not (tmp_path / "r.db").exists()
    # a study stored with such a name (another writer): sweep show prints it harmlessly
    name = "evil\x1b[2J\x07"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = S.open_storage(str(tmp_path / "s.db"))
    study = optuna.create_study(study_name=name, storage=storage)
    study.set_user_attr("droplab_sweep", S.SweepSpec(name="placeholder", base={"epochs": 1}).to_json())
    capsys.readouterr()
    assert main(["sweep", "show", name, "--storage", str(tmp_path / "s.db"), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "sweep evil: 0 complete" in out


def test_atomic_writes_never_replace_anything_but_a_regular_file(tmp_path, capsys):
    import stat

    from droplab.lab.errors import UserError
    from droplab.lab.files import write_json

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="is a FIFO, not a regular file"):
        write_json(fifo, {"a": 1})
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and sorted(p.name for p in tmp_path.iterdir()) == ["fifo"]
    user_error(capsys, ["bench", "kernel", "--quick", "--json", str(fifo)], "is a FIFO, not a regular file")
    user_error(capsys, ["bench", "kernel", "--quick", "--json", "/dev/full"], "/dev/full is a device")
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)
    target = tmp_path / "real.json"
    (tmp_path / "link.json").symlink_to(target)
    write_json(tmp_path / "link.json", {"b": 2})  # a symlink: the file it points to is replaced
    assert (tmp_path / "link.json").is_symlink() and json.loads(target.read_text()) == {"b": 2}


def test_report_and_output_directories_are_checked_before_any_work(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for place in (a_file, "/proc/droplab-x"):
        user_error(capsys, ["study", "overfitting", "--quick", "--report-dir", str(place), "--db",
                            str(tmp_path / "r.db")], "--report-dir")
    assert not (tmp_path / "r.db").exists()
    user_error(capsys, ["sweep", "show", "any", "--storage", str(tmp_path / "none.db"), "--out", "/proc/droplab-x"],
               "--out /proc/droplab-x is not writable")


def test_an_input_shape_too_large_for_memory_is_one_error(tmp_path, capsys):
    (tmp_path / "m.py").write_text("from torch import nn\n\ndef build():\n    return nn.Sequential(nn.Linear(4, 4),"
                                   " nn.Dropout(0.5))\n")
    user_error(capsys, ["inspect", f"{tmp_path / 'm.py'}:build", "--input-shape", "100000,100000,100"],
               "--input-shape 100000,100000,100 asks for 1,000,000,000,000 elements")


def test_a_bad_storage_url_leaves_no_run_store_behind(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    user_error(capsys, ["sweep", "--storage", "foo://bar", "--db", "runs.db"], "unknown database scheme 'foo'")
    assert list(tmp_path.iterdir()) == []


def test_every_command_that_opens_the_store_marks_dead_runs_failed(tmp_path, capsys):
    db = tmp_path / "r.db"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with RunStore(db) as store:
        run_id = store.start_run({"x": 1}, name="orphan")
    with sqlite3.connect(db) as conn:  # as a killed process leaves it: "running", its pid gone
        conn.execute("UPDATE runs SET pid = ?, host = ?, status = 'running' WHERE id = ?",
                     (dead.pid, socket.gethostname(), run_id))
    data = write_npz(tmp_path / "d.npz", n=60, features=4)
    assert main(["compare", "--dataset", str(data), "--db", str(db), "--set", "epochs=1", "--set", "width=8",
                 "--no-report", "--no-progress", "--no-coadaptation"]) == 0
    capsys.readouterr()
    with sqlite3.connect(db) as conn:
        status, error = conn.execute("SELECT status, error FROM runs WHERE id = ?", (run_id,)).fetchone()
    assert status == "failed" and "exited without finishing" in error


def test_fractional_labels_are_not_classes(tmp_path, capsys):
    rows = "a,b,label\n" + "".join(f"{i},{i % 3},{i * 0.37:.2f}\n" for i in range(40))
    (tmp_path / "f.csv").write_text(rows)
    user_error(capsys, ["compare", "--dataset", str(tmp_path / "f.csv"), "--task", "classification", "--dry-run"],
               "labels must be class ids (integers or strings), but got fractional values such as")
    many = "a,label\n" + "".join(f"{i},id{i}\n" for i in range(40))  # legal, but one class per example
    (tmp_path / "m.csv").write_text(many)
    assert main(["compare", "--dataset", str(tmp_path / "m.csv"), "--task", "classification", "--dry-run"]) == 0
    assert "droplab compare: warning: " in capsys.readouterr().err


def test_library_frames_are_known_outside_the_standard_paths(tmp_path, monkeypatch):
    """A package installed where the interpreter's paths do not say (PYTHONPATH, pip install --target)."""
    site = tmp_path / "elsewhere"
    (site / "fakelib").mkdir(parents=True)
    (site / "fakelib" / "__init__.py").write_text("def boom():\n    raise ValueError('inside the library')\n")
    info = site / "fakelib-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakelib\nVersion: 1.0\n")
    (info / "top_level.txt").write_text("fakelib\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.chdir(ROOT)
    import importlib

    from droplab.lab import errors

    cached = getattr(errors, "_distributed_packages", None)  # the installed packages, read once per process
    if cached is not None:
        cached.cache_clear()
    fakelib = importlib.import_module("fakelib")
    assert errors.is_library_file(fakelib.__file__)
    from droplab.cli import user_frames

    try:
        fakelib.boom()
    except ValueError as error:
        shown = user_frames(error)
    assert "__init__.py" not in shown and "test_lab_edges.py" in shown  # only this test's frame: the user's
    assert not errors.is_library_file(__file__)
    sys.modules.pop("fakelib", None)
    cached.cache_clear()
