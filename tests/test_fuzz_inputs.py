"""Fuzzing the command line with malformed inputs: every one is a clean result or one short error, never a crash.

Hypothesis generates CSV and NPZ datasets, TOML configs and damaged checkpoints; each goes through
``droplab.cli.main(argv)`` in-process (``compare --dry-run`` for inputs, ``compare --resume`` for
checkpoints). Checked every time: the exit status is 0 (the input happened to be valid) or 2; a 2
prints ``droplab compare: error: ...`` on at most three lines with no traceback; and the run store is
byte-for-byte unchanged (a dry run never creates it).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from lab_fixtures import write_npz

from droplab.cli import main

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def run_and_check(capsys, argv: list[str], store: Path, allowed=(0, 2)) -> int:
    """Run ``argv``; check the exit status, the error's shape, and that ``store`` did not change."""
    before = hashlib.sha256(store.read_bytes()).hexdigest() if store.exists() else None
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code in allowed, f"exit {code}: {err}"
    assert "Traceback" not in err, err
    if code == 2:
        lines = err.strip().splitlines()
        assert lines[0].startswith("droplab compare: error:") and len(lines) <= 3, err
        assert "\x1b" not in err
    after = hashlib.sha256(store.read_bytes()).hexdigest() if store.exists() else None
    assert after == before, "the run store changed"
    return code


# CSV -------------------------------------------------------------------------------------------------

cells = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-10**30, 10**30).map(str),
    st.sampled_from(["", " ", "nan", "NaN", "inf", "-inf", "1e400", "0x10", "1,5", "\"", "label", "\x00"]),
    st.text(max_size=6),
)


@st.composite
def csv_texts(draw) -> str:
    width = draw(st.integers(0, 4))
    header = draw(st.lists(st.sampled_from(["label", "a", "b", "c", "", " label"]), min_size=width, max_size=width))
    rows = draw(st.lists(st.lists(cells, min_size=0, max_size=width + 1), max_size=12))
    out = io.StringIO()
    writer = csv.writer(out)
    if draw(st.booleans()) or header:
        writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


@FUZZ
@given(text=csv_texts(), encoding=st.sampled_from(["utf-8", "utf-16", "latin-1"]))
def test_fuzzed_csv_files(tmp_path_factory, capsys, text, encoding):
    folder = tmp_path_factory.mktemp("csv")
    path = folder / "data.csv"
    path.write_bytes(text.encode(encoding, errors="replace"))
    store = folder / "runs.db"
    run_and_check(capsys, ["compare", "--dataset", str(path), "--db", str(store), "--dry-run"], store)
    assert not store.exists()


# NPZ -------------------------------------------------------------------------------------------------

npz_arrays = hnp.arrays(
    dtype=st.sampled_from([np.float64, np.float32, np.int64, np.bool_, np.complex64, np.dtype("<U3"), np.uint8]),
    shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6),
)


@FUZZ
@given(arrays=st.dictionaries(st.sampled_from(["x", "label", "features", "inputs", "y", "X", "data"]), npz_arrays,
                              max_size=3),
       truncate=st.one_of(st.none(), st.integers(0, 400)))
def test_fuzzed_npz_files(tmp_path_factory, capsys, arrays, truncate):
    folder = tmp_path_factory.mktemp("npz")
    path = folder / "data.npz"
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    data = buffer.getvalue()
    path.write_bytes(data if truncate is None else data[:truncate])
    store = folder / "runs.db"
    run_and_check(capsys, ["compare", "--dataset", str(path), "--db", str(store), "--dry-run"], store)
    assert not store.exists()


# TOML ------------------------------------------------------------------------------------------------

CONFIG_KEYS = ["lr", "weight_decay", "max_norm", "momentum", "seed", "threads", "device", "val_fraction",
               "test_fraction", "epochs", "width", "depth", "dropout", "layer_rates", "augment", "schedule",
               "batch_size", "model", "early_stopping_patience", "name", "no_such_key"]


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    return "[" + ", ".join(toml_value(v) for v in value) + "]"


scalars = st.one_of(st.booleans(), st.floats(), st.integers(-2**70, 2**70),
                    st.text(max_size=8), st.sampled_from(["cpu", "cuda", "foo", "ramp:3", "ramp:0", "mlp"]))
toml_values = st.one_of(scalars, st.lists(st.one_of(st.floats(-1, 2), st.integers(-2, 3)), max_size=4))


@FUZZ
@given(entries=st.dictionaries(st.sampled_from(CONFIG_KEYS), toml_values, max_size=4),
       raw=st.one_of(st.none(), st.text(max_size=40)))
def test_fuzzed_toml_configs(tmp_path_factory, capsys, entries, raw):
    folder = tmp_path_factory.mktemp("toml")
    data = write_npz(folder / "d.npz", n=40, features=4)
    config = folder / "exp.toml"
    text = raw if raw is not None else "".join(f"{key} = {toml_value(value)}\n" for key, value in entries.items())
    config.write_text(text, encoding="utf-8", errors="replace")
    store = folder / "runs.db"
    run_and_check(capsys, ["compare", "--config", str(config), "--dataset", str(data), "--db", str(store),
                           "--dry-run"], store)
    assert not store.exists()


# checkpoints -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A stored one-epoch run with its checkpoint: (store bytes, checkpoint bytes, checkpoint state)."""
    import torch

    folder = tmp_path_factory.mktemp("saved")
    data = write_npz(folder / "d.npz", n=60, features=6)
    assert main(["compare", "--dataset", str(data), "--set", "epochs=1", "--set", "width=8", "--db",
                 str(folder / "r.db"), "--save", str(folder / "ck"), "--no-report", "--no-progress",
                 "--no-coadaptation"]) == 0
    with sqlite3.connect(folder / "r.db") as conn:
        checkpoint = Path(conn.execute("SELECT checkpoint FROM runs WHERE id = 1").fetchone()[0])
    return folder / "r.db", checkpoint.read_bytes(), torch.load(checkpoint, weights_only=True)


MUTATIONS = ["truncate", "drop key", "wrong format", "model not a dict", "wrong tensor shape", "history not a list",
             "prefix garbage", "bad wall time"]


@FUZZ
@given(mutation=st.sampled_from(MUTATIONS), where=st.floats(0, 1), garbage=st.binary(min_size=1, max_size=64))
def test_fuzzed_checkpoints_on_resume(saved, tmp_path_factory, capsys, mutation, where, garbage):
    import shutil

    import torch

    store_src, good_bytes, state = saved
    folder = tmp_path_factory.mktemp("ck")
    store, checkpoint = folder / "r.db", folder / "run-1.pt"
    shutil.copy(store_src, store)
    with sqlite3.connect(store) as conn:
        conn.execute("UPDATE runs SET checkpoint = ? WHERE id = 1", (str(checkpoint),))
    state = dict(state)
    if mutation == "truncate":
        checkpoint.write_bytes(good_bytes[: int(where * (len(good_bytes) - 1))])
    elif mutation == "prefix garbage":
        checkpoint.write_bytes(garbage + good_bytes)
    else:
        if mutation == "drop key":
            keys = sorted(k for k in ("format", "model", "optimizer", "history", "wall_time_s") if k in state)
            del state[keys[int(where * (len(keys) - 1))]]
        elif mutation == "wrong format":
            state["format"] = garbage.hex()
        elif mutation == "model not a dict":
            state["model"] = [1, 2, 3]
        elif mutation == "wrong tensor shape":
            state["model"] = {k: torch.zeros(v.numel() + 1 + int(where * 5)) for k, v in state["model"].items()}
        elif mutation == "history not a list":
            state["history"] = 3
        else:
            state["wall_time_s"] = garbage.hex() + "x"
        torch.save(state, checkpoint)
    run_and_check(capsys, ["compare", "--resume", "1", "--db", str(store), "--set", "epochs=2", "--no-progress"],
                  store, allowed=(2,))
