"""The command line's one error path: every bad input named in issue 14 is one short error, exit 2, nothing written.

Each case runs through ``droplab.cli.main(argv)`` in-process and checks: exit status 2, stderr starting
``droplab <command>: error:``, at most three lines, no traceback, and the run store byte-for-byte unchanged.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from lab_fixtures import write_npz

from droplab.cli import main


def digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def assert_user_error(capsys, command: str, argv: list[str], *, contains: str = "", store: Path | None = None) -> str:
    before = digest(store) if store is not None else None
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    # progress notes may come first; the error is the last block, at most three lines
    starts = [i for i, line in enumerate(lines) if line.startswith(f"droplab {command}: error:")]
    assert starts and len(lines) - starts[0] <= 3 and "Traceback" not in err, err
    assert contains in err, err
    if store is not None:
        assert digest(store) == before, "the run store changed"
    return err


# dataset files ---------------------------------------------------------------------------------------

def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _csv(path: Path, text: str | bytes) -> Path:
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


ROWS = "a,b,label\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(20))
BAD_DATASETS = {
    "missing": (lambda d: d / "missing.csv", "dataset file not found"),
    "directory": (lambda d: (d / "folder.csv").mkdir() or d / "folder.csv", "is a directory"),
    "csv NaN cell": (lambda d: _csv(d / "x.csv", ROWS + "nan,1,0\n"), "contain NaN"),
    "csv inf cell": (lambda d: _csv(d / "x.csv", ROWS + "inf,1,0\n"), "infinite"),
    "csv text cell": (lambda d: _csv(d / "x.csv", ROWS + "abc,1,0\n"), "'abc' is not a number"),
    "csv empty cell": (lambda d: _csv(d / "x.csv", ROWS + ",1,0\n"), "NaN"),
    "csv empty file": (lambda d: _csv(d / "x.csv", ""), "is empty"),
    "csv header only": (lambda d: _csv(d / "x.csv", "a,b,label\n"), "no data rows"),
    "csv ragged": (lambda d: _csv(d / "x.csv", ROWS + "1,2\n"), "has 2 fields but the header has 3"),
    "csv one row": (lambda d: _csv(d / "x.csv", "a,b,label\n1,2,0\n"), "too few"),
    "csv one class": (lambda d: _csv(d / "x.csv", "a,b,label\n" + "1,2,0\n" * 20), "need at least 2 classes"),
    "csv not utf-8": (lambda d: _csv(d / "x.csv", b"a,b,label\n1,2,\xff\xfe\n"), "codec can't decode"),
    "csv label only": (lambda d: _csv(d / "x.csv", "label\n" + "0\n1\n" * 10), "has no feature columns"),
    "npz wrong keys": (lambda d: _npz(d / "x.npz", inputs=np.zeros((20, 3)), y=np.arange(20) % 2),
                       "label_column 'label' is not an array"),
    "npz wrong shape": (lambda d: _npz(d / "x.npz", x=np.zeros((20, 2, 2, 2)), label=np.arange(20) % 2),
                        "features must be (N, F) or (N, C, L)"),
    "npz mismatched rows": (lambda d: _npz(d / "x.npz", x=np.zeros((20, 3)), label=np.arange(19) % 2),
                            "mismatched shapes"),
    "npz string features": (lambda d: _npz(d / "x.npz", x=np.full((20, 3), "a"), label=np.arange(20) % 2),
                            "features must be numeric"),
    "npz NaN": (lambda d: _npz(d / "x.npz", x=np.full((20, 3), np.nan), label=np.arange(20) % 2), "NaN"),
    "npz zero features": (lambda d: _npz(d / "x.npz", x=np.zeros((20, 0)), label=np.arange(20) % 2),
                          "no feature columns"),
    "npz not a zip": (lambda d: _csv(d / "x.npz", b"this is not a zip file at all"), "x.npz"),
    "npz truncated": (lambda d: _csv(d / "x.npz", (_npz(d / "good.npz", x=np.ones((20, 3)),
                                                        label=np.arange(20) % 2).read_bytes())[:300]), "x.npz"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATASETS))
def test_bad_dataset_files_are_one_error_before_training(tmp_path, capsys, case):
    make, message = BAD_DATASETS[case]
    path = make(tmp_path)
    db = tmp_path / "runs.db"
    assert_user_error(capsys, "compare", ["compare", "--dataset", str(path), "--db", str(db), "--dry-run"],
                      contains=message)
    assert not db.exists()


# config values ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ("lr=NaN", "lr must be a finite number"),
    ("lr=Infinity", "lr must be a finite number"),
    ("weight_decay=Infinity", "weight_decay must be a finite number"),
    ("max_norm=NaN", "max_norm must be a finite number"),
    ("device=foo", "device must be a torch device"),
    ("threads=-1", "threads must be a positive integer"),
    ("seed=-1", "seed must be an integer in 0..2**64-1"),
    ("seed=18446744073709551616", "seed must be an integer in 0..2**64-1"),
    ("val_fraction=0.9", "val_fraction + test_fraction must leave training data"),
    ("augment=true", "augment=true shifts and perturbs MNIST-1D-like sequences"),
    ("nonsense", "override must look like key=value"),
    ("dropuot=0.5", "did you mean 'dropout'"),
])
def test_bad_config_values_fail_the_dry_run(tmp_path, capsys, override, message):
    data = write_npz(tmp_path / "d.npz", n=60, features=6)
    assert_user_error(capsys, "compare", ["compare", "--dataset", str(data), "--set", override, "--dry-run",
                                          "--db", str(tmp_path / "r.db")], contains=message)


def test_bad_toml_config(tmp_path, capsys):
    toml = tmp_path / "exp.toml"
    toml.write_text("lr = nan\n")
    assert_user_error(capsys, "compare", ["compare", "--config", str(toml), "--dry-run"],
                      contains="lr must be a finite number")
    toml.write_text("lr = [unclosed\n")
    assert_user_error(capsys, "compare", ["compare", "--config", str(toml), "--dry-run"], contains="not valid TOML")


# stores and output directories ------------------------------------------------------------------------

def test_db_that_is_not_sqlite_a_directory_or_under_proc(tmp_path, capsys):
    notes = tmp_path / "notes.db"
    notes.write_text("my notes\n" * 50)
    data = str(write_npz(tmp_path / "d.npz", n=60, features=6))
    assert_user_error(capsys, "compare", ["compare", "--dataset", data, "--db", str(notes), "--dry-run"],
                      contains="is not a droplab run store", store=notes)
    assert_user_error(capsys, "compare", ["compare", "--dataset", data, "--db", str(tmp_path), "--dry-run"],
                      contains="is a directory")
    assert_user_error(capsys, "compare", ["compare", "--dataset", data, "--db", "/proc/droplab.db", "--dry-run"],
                      contains="/proc/droplab.db")
    assert_user_error(capsys, "runs", ["runs", "--db", str(notes)], contains="is not a droplab run store", store=notes)
    assert_user_error(capsys, "runs", ["runs", "--db", str(tmp_path / "none.db")], contains="no run store at")


def test_unwritable_output_directories_fail_before_training(tmp_path, capsys):
    data = str(write_npz(tmp_path / "d.npz", n=60, features=6))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert_user_error(capsys, "compare", ["compare", "--dataset", data, "--save", str(a_file / "sub"), "--dry-run"],
                      contains="--save")
    assert_user_error(capsys, "compare", ["compare", "--dataset", data, "--report-dir", str(a_file), "--dry-run"],
                      contains="--report-dir")


# checkpoints on --resume ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A one-epoch comparison saved with --save: (db, checkpoint of run 1, dataset)."""
    folder = tmp_path_factory.mktemp("saved")
    data = write_npz(folder / "d.npz", n=60, features=6)
    code = main(["compare", "--dataset", str(data), "--set", "epochs=1", "--set", "width=8", "--db",
                 str(folder / "r.db"), "--save", str(folder / "ck"), "--no-report", "--no-progress",
                 "--no-coadaptation"])
    assert code == 0
    with sqlite3.connect(folder / "r.db") as conn:
        checkpoint = conn.execute("SELECT checkpoint FROM runs WHERE id = 1").fetchone()[0]
    return folder / "r.db", Path(checkpoint), data


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "other model"])
def test_damaged_checkpoints_on_resume_are_one_error(saved_run, tmp_path, capsys, damage):
    import shutil

    import torch

    db_src, checkpoint_src, _ = saved_run
    db, checkpoint = tmp_path / "r.db", tmp_path / "run-1.pt"
    shutil.copy(db_src, db)
    shutil.copy(checkpoint_src, checkpoint)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE runs SET checkpoint = ? WHERE id = 1", (str(checkpoint),))
    good = checkpoint.read_bytes()
    if damage == "truncated":
        checkpoint.write_bytes(good[: len(good) // 2])
    elif damage == "garbage":
        checkpoint.write_bytes(b"\x00garbage" * 100)
    elif damage == "empty":
        checkpoint.write_bytes(b"")
    else:  # a valid checkpoint whose weights belong to another shape of model
        state = torch.load(checkpoint, weights_only=True)
        state["model"] = {key: torch.zeros(3, 3) for key in state["model"]}
        torch.save(state, checkpoint)
    assert_user_error(capsys, "compare", ["compare", "--resume", "1", "--db", str(db), "--set", "epochs=2",
                                          "--no-progress"], contains="checkpoint", store=db)


def test_resume_of_an_unknown_run(saved_run, tmp_path, capsys):
    import shutil

    db = tmp_path / "r.db"
    shutil.copy(saved_run[0], db)
    assert_user_error(capsys, "compare", ["compare", "--resume", "99", "--db", str(db)], contains="99", store=db)


# bench and argument parsing ---------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["bench", "kernel", "--threads", "0"], "--threads must be a positive integer, but got 0"),
    (["bench", "kernel", "--repeats", "-1"], "--repeats must be a positive integer, but got -1"),
    (["bench", "mc", "--max-batch", "0"], "--max-batch must be a positive integer, but got 0"),
    (["bench", "mc", "--quick", "--json", "/proc/droplab-bench.json"], "/proc/droplab-bench.json"),
    (["bench", "variants", "--quick", "--json", "."], "is a directory"),
])
def test_bench_arguments_are_checked_before_any_timing(capsys, argv, message):
    err = assert_user_error(capsys, "bench", argv, contains=message)
    assert "speedup" not in err


def test_argparse_errors_use_the_same_short_format(capsys):
    assert main(["compare", "--epochs", "many"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("droplab compare: error: argument --epochs: invalid int value: 'many'")
    assert len(err.strip().splitlines()) <= 3 and "usage" not in err


def test_messages_are_stripped_of_control_characters(tmp_path, capsys):
    err = assert_user_error(capsys, "compare", ["compare", "--dataset", str(tmp_path / "evil\x1b[2J\x07.csv"),
                                                "--dry-run"], contains="evil")
    assert "\x1b" not in err and "\x07" not in err


def test_a_droplab_bug_keeps_its_traceback(monkeypatch):
    from droplab.commands import runs

    def broken(args):
        raise ZeroDivisionError("a bug in droplab")

    monkeypatch.setattr(runs, "run", broken)
    with pytest.raises(ZeroDivisionError):
        main(["runs"])


def test_uncertainty_input_problems_are_one_error_before_training(tmp_path, capsys):
    good = tmp_path / "good.npz"
    np.savez(good, x=np.ones((30, 3)), label=np.arange(30) % 2)
    truncated = tmp_path / "cut.npz"
    truncated.write_bytes(good.read_bytes()[:200])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 20)
    for argv, message in ((["--dataset", str(truncated)], "is not a readable .npz file"),
                          (["--out", "/proc/droplab-out"], "--out /proc/droplab-out is not writable"),
                          (["--set", "lr=NaN"], "lr must be a finite number"),
                          (["--checkpoint", str(garbage)], "garbage.pt")):
        assert_user_error(capsys, "uncertainty", ["uncertainty", *argv, "--no-progress"], contains=message)


def test_unrecognized_arguments_are_named_after_their_command(capsys):
    assert main(["compare", "--no-such-flag", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("droplab compare: error: unrecognized arguments: --no-such-flag 1")
    assert len(err.strip().splitlines()) == 2


def test_a_diverging_run_fails_with_one_error_and_keeps_its_finished_epochs(tmp_path, capsys):
    data = write_npz(tmp_path / "d.npz", n=60, features=6)
    db = tmp_path / "r.db"
    err = assert_user_error(capsys, "compare", ["compare", "--dataset", str(data), "--set", "lr=1e30", "--set",
                                                "epochs=3", "--set", "width=8", "--db", str(db), "--no-report",
                                                "--no-progress", "--no-coadaptation"], contains="training diverged")
    assert "lower lr (now 1e+30)" in err
    with sqlite3.connect(db) as conn:
        status, error = conn.execute("SELECT status, error FROM runs WHERE id = 1").fetchone()
        epochs = [json.loads(row[0]) for row in conn.execute("SELECT metrics FROM epochs WHERE run_id = 1")]
    assert status == "failed" and "training diverged" in error  # never "finished" with NaN losses
    assert all(np.isfinite(m["batch_loss"]) and np.isfinite(m["val_loss"]) for m in epochs)


def test_resume_from_a_missing_store_creates_nothing(tmp_path, capsys):
    db = tmp_path / "nowhere.db"
    assert_user_error(capsys, "compare", ["compare", "--resume", "1", "--db", str(db)], contains="no run store at")
    assert list(tmp_path.iterdir()) == []


def test_a_last_batch_of_one_under_batchnorm_is_found_by_the_dry_run(tmp_path, capsys):
    data = write_npz(tmp_path / "d.npz", n=71, features=4)  # 50 training examples after the split
    argv = ["compare", "--dataset", str(data), "--set", "batchnorm=before_dropout", "--dry-run"]
    assert_user_error(capsys, "compare", [*argv, "--set", "batch_size=7"], contains="(50 training examples")
    assert main([*argv, "--set", "batch_size=10"]) == 0


def test_a_model_that_does_not_fit_the_data_is_found_by_the_dry_run(tmp_path, capsys, monkeypatch):
    """A factory that raises, a forward whose shapes do not match the data, or an output without one row per
    example: one error before anything is stored (it was a droplab traceback from inside the first epoch)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models.py").write_text(
        "import torch\nfrom torch import nn\n"
        "def wrong_width(n_outputs):\n    return nn.Sequential(nn.Linear(3, n_outputs), nn.Dropout(0.5))\n"
        "def pooled(input_shape, n_outputs):\n"
        "    return nn.Sequential(nn.Flatten(0), nn.Linear(2 * input_shape[0], 1))\n"
        "def broken():\n    raise ValueError('my factory is broken')\n"
        "def right(input_shape, n_outputs):\n"
        "    return nn.Sequential(nn.Linear(input_shape[0], n_outputs), nn.Dropout(0.5))\n")
    data = write_npz(tmp_path / "d.npz", n=60, features=4)
    db = tmp_path / "runs.db"
    base = ["compare", "--dataset", str(data), "--db", str(db), "--set", "epochs=1", "--no-report"]
    assert_user_error(capsys, "compare", [*base, "--model", "models.py:wrong_width", "--dry-run"],
                      contains="inputs of shape (2, 4) raised RuntimeError")
    assert main([*base, "--model", "models.py:broken", "--dry-run"]) == 2
    err = capsys.readouterr().err  # the user's own frame is shown, droplab's are not
    assert err.startswith("Traceback (your code") and 'models.py", line' in err and "droplab/" not in err, err
    assert err.strip().splitlines()[-1] == "droplab compare: error: models.py:broken() raised ValueError: my factory " \
        "is broken"
    assert_user_error(capsys, "compare", [*base, "--model", "models.py:pooled", "--dry-run"],
                      contains="one row per example")
    assert_user_error(capsys, "compare", [*base, "--model", "models.py:wrong_width"], contains="RuntimeError")
    assert not db.exists()  # nothing was stored
    assert main([*base, "--model", "models.py:right", "--dry-run"]) == 0
