"""DropPath (stochastic depth): contract, one mask value per example, depth ramp; sites of every variant."""

import pytest
import torch
from scipy.stats import binomtest
from torch import nn

import droplab
import droplab.functional as F
import droplab.nn as dnn
from contract import Case, install

CASES = [
    Case("DropPath", lambda p, s: dnn.DropPath(p, seed=s), (40, 3, 2), expectation_steps=800,
         repr_args=("p", "scale_by_keep", "inplace", "seed")),
    Case("DropPath-classic", lambda p, s: dnn.DropPath(p, scale_by_keep=False, seed=s), (40, 3), eval_rule="scale",
         expectation_steps=800),
]

install(globals(), CASES)


def test_one_mask_value_per_example_and_keep_rate():
    m = dnn.DropPath(0.3, seed=4)
    kept = total = 0
    for _ in range(10):
        rows = m(torch.ones(500, 3, 4)).flatten(1)
        dropped, scaled = (rows == 0).all(1), (rows == 1 / 0.7).all(1)
        assert bool((dropped | scaled).all())  # whole example dropped or whole example kept
        kept += int(scaled.sum())
        total += rows.shape[0]
    assert binomtest(kept, total, 0.7).pvalue > 1e-3


def test_residual_usage_keeps_identity_path():
    torch.manual_seed(0)
    block, drop = nn.Linear(6, 6), dnn.DropPath(1.0, seed=0)
    x = torch.randn(5, 6)
    torch.testing.assert_close(x + drop(block(x)), x)  # p = 1: every branch dropped, identity survives


def test_drop_path_rates():
    assert F.drop_path_rates(5, 0.2) == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert F.drop_path_rates(3, 0.4, min_rate=0.1) == pytest.approx([0.1, 0.25, 0.4])
    assert F.drop_path_rates(1, 0.3) == [0.3]
    assert dnn.drop_path_rates is F.drop_path_rates
    with pytest.raises(ValueError, match="depth"):
        F.drop_path_rates(0, 0.1)
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1, but got 1.5"):
        F.drop_path_rates(4, 1.5)


def test_sites_report_every_variant():
    model = nn.Sequential(
        dnn.DropBlock2d(0.1, 3, seed=0), dnn.DropPath(0.2, seed=0), dnn.DropPath(0.2, scale_by_keep=False, seed=0),
        dnn.DropConnect(nn.Linear(3, 3), 0.3, seed=0), dnn.WeightDrop(nn.LSTM(3, 3), 0.4, seed=0),
        dnn.LockedDropout(0.5, seed=0), dnn.EmbeddingDropout(nn.Embedding(5, 3), 0.15, seed=0),
        dnn.VariationalLSTM(3, 3, input_dropout=0.1, recurrent_dropout=0.2, output_dropout=0.3, seed=0),
    )
    rows = [(s.name, s.kind, s.p, s.scaling, s.library) for s in droplab.sites(model)]
    assert rows == [
        ("0", "DropBlock2d", 0.1, "inverted", "droplab"),
        ("1", "DropPath", 0.2, "inverted", "droplab"),
        ("2", "DropPath", 0.2, "classic", "droplab"),
        ("3", "DropConnect", 0.3, "inverted", "droplab"),
        ("4", "WeightDrop", 0.4, "inverted", "droplab"),
        ("5", "LockedDropout", 0.5, "inverted", "droplab"),
        ("6", "EmbeddingDropout", 0.15, "inverted", "droplab"),
        ("7.input_drop", "LockedDropout", 0.1, "inverted", "droplab"),
        ("7.recurrent_drop", "LockedDropout", 0.2, "inverted", "droplab"),
        ("7.output_drop", "LockedDropout", 0.3, "inverted", "droplab"),
    ]
