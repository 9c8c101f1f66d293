import numpy as np
import pytest
import torch
from lab_fixtures import write_npz

from droplab.lab.config import ExperimentConfig
from droplab.lab.data import augment_batch, load_dataset


def cfg(dataset, **kw):
    return ExperimentConfig(dataset=str(dataset), **kw)


def test_npz_split_is_fixed_by_seed_and_standardized(tmp_path):
    path = write_npz(tmp_path / "d.npz", n=200)
    a, b, c = load_dataset(cfg(path)), load_dataset(cfg(path)), load_dataset(cfg(path, seed=1))
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.test.x, c.test.x)
    assert (len(a.train), len(a.val), len(a.test)) == (140, 20, 40)
    assert a.n_features == 40 and a.n_classes == 3
    assert a.train.x.dtype == torch.float32 and a.train.y.dtype == torch.int64
    assert a.train.x.mean(0).abs().max() < 1e-4


def test_csv_with_string_labels(tmp_path):
    path = tmp_path / "d.csv"
    rows = ["f1,f2,species"] + [f"{i % 7},{(i * 3) % 5},{'ab'[i % 2]}" for i in range(60)]
    path.write_text("\n".join(rows) + "\n")
    splits = load_dataset(cfg(path, label_column="species"))
    assert splits.n_features == 2 and splits.n_classes == 2


def test_digits():
    splits = load_dataset(ExperimentConfig(dataset="digits"))
    assert splits.n_features == 64 and splits.n_classes == 10
    assert len(splits.train) + len(splits.val) + len(splits.test) == 1797


def test_mnist1d_is_cached_and_keeps_its_test_split(tmp_path, monkeypatch):
    monkeypatch.setenv("DROPLAB_CACHE", str(tmp_path))
    splits = load_dataset(ExperimentConfig())
    assert (tmp_path / "mnist1d_default.npz").is_file()
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3600, 400, 1000)
    assert splits.n_features == 40 and splits.n_classes == 10 and splits.sequence
    again = load_dataset(ExperimentConfig())
    assert torch.equal(splits.val.x, again.val.x)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset file not found"):
        load_dataset(cfg(tmp_path / "nope.npz"))


def test_wrong_extension(tmp_path):
    with pytest.raises(ValueError, match="dataset must be 'mnist1d', 'digits', a path"):
        load_dataset(cfg(tmp_path / "data.parquet"))


def test_wrong_label_column(tmp_path):
    path = write_npz(tmp_path / "d.npz")
    with pytest.raises(ValueError, match=r"label_column 'target' is not an array in .*present: \['x', 'label'\]"):
        load_dataset(cfg(path, label_column="target"))
    csv = tmp_path / "d.csv"
    csv.write_text("a,b,y\n1,2,0\n")
    with pytest.raises(ValueError, match=r"label_column 'label' is not a column .*columns: \['a', 'b', 'y'\]"):
        load_dataset(cfg(csv))


def test_nans_are_reported(tmp_path):
    x = np.ones((50, 4))
    x[7, 2] = np.nan
    np.savez(tmp_path / "d.npz", x=x, label=np.arange(50) % 2)
    with pytest.raises(ValueError, match=r"features contain NaN \(first rows: \[7\]\)"):
        load_dataset(cfg(tmp_path / "d.npz"))
    csv = tmp_path / "d.csv"
    csv.write_text("a,label\n1,0\n,1\n" + "2,0\n" * 20)
    with pytest.raises(ValueError, match="features contain NaN"):
        load_dataset(cfg(csv))


def test_mismatched_shapes(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((50, 4)), label=np.arange(49) % 2)
    with pytest.raises(ValueError, match="mismatched shapes: 50 feature rows but 49 labels"):
        load_dataset(cfg(tmp_path / "d.npz"))
    csv = tmp_path / "d.csv"
    csv.write_text("a,b,label\n1,2,0\n1,1\n")
    with pytest.raises(ValueError, match="line 3 has 2 fields but the header has 3"):
        load_dataset(cfg(csv))


def test_augmentation_is_seeded_shift_plus_noise():
    x = torch.arange(40.0).repeat(3, 1)
    a = augment_batch(x, torch.Generator().manual_seed(0), noise=0.0)
    b = augment_batch(x, torch.Generator().manual_seed(0), noise=0.0)
    assert torch.equal(a, b)
    for row in a:  # each row is a circular shift of the original by at most 3
        shift = int(row[0].item())
        assert torch.equal(row, torch.roll(x[0], (40 - shift) % 40)) and min(shift, 40 - shift) <= 3
