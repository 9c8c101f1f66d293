"""droplab.set_rate per layer and pattern, and droplab.sites over every variant of this package."""

import pytest
import torch
from torch import nn

import droplab
import droplab.nn as dnn


def _model():
    torch.manual_seed(0)
    return nn.ModuleDict({
        "inp": dnn.InputDropout(0.2, seed=0),
        "blocks": nn.Sequential(dnn.TransformerBlock(8, 2, dropout=0.1, seed=10),
                                dnn.TransformerBlock(8, 2, dropout=0.1, seed=20)),
        "noise": dnn.GaussianDropout(0.1, seed=1),
        "selu": nn.Sequential(nn.Linear(8, 8), nn.SELU(), nn.AlphaDropout(0.05), dnn.FeatureAlphaDropout(0.05, seed=2)),
        "learned": dnn.ConcreteDropout(nn.Linear(8, 8), 0.3, seed=3),
        "head": nn.Sequential(nn.Dropout(0.5), nn.Linear(8, 2)),
    })


def _rates(model):
    return {s.name: round(s.p, 6) for s in droplab.sites(model)}


def test_sites_report_every_variant_with_kind_and_scaling():
    rows = [(s.name, s.kind, s.scaling, s.library) for s in droplab.sites(_model())]
    assert rows == [
        ("inp", "InputDropout", "inverted", "droplab"),
        ("blocks.0.self_attn.attn_drop", "AttentionDropout", "inverted", "droplab"),
        ("blocks.0.attn_resid_drop", "Dropout", "inverted", "droplab"),
        ("blocks.0.ffn_drop", "Dropout", "inverted", "droplab"),
        ("blocks.0.ffn_resid_drop", "Dropout", "inverted", "droplab"),
        ("blocks.1.self_attn.attn_drop", "AttentionDropout", "inverted", "droplab"),
        ("blocks.1.attn_resid_drop", "Dropout", "inverted", "droplab"),
        ("blocks.1.ffn_drop", "Dropout", "inverted", "droplab"),
        ("blocks.1.ffn_resid_drop", "Dropout", "inverted", "droplab"),
        ("noise", "GaussianDropout", "noise", "droplab"),
        ("selu.2", "torch.nn.AlphaDropout", "noise", "torch"),
        ("selu.3", "FeatureAlphaDropout", "noise", "droplab"),
        ("learned", "ConcreteDropout", "inverted", "droplab"),
        ("head.0", "torch.nn.Dropout", "inverted", "torch"),
    ]
    assert _rates(_model())["learned"] == pytest.approx(0.3)


def test_set_rate_everywhere_skips_learned_rates():
    model = _model()
    changed = droplab.set_rate(model, 0.25)
    assert "learned" not in changed and len(changed) == 13
    rates = _rates(model)
    assert all(p == 0.25 for name, p in rates.items() if name != "learned") and rates["learned"] == 0.3


def test_set_rate_transformer_sites_by_name():
    model = _model()
    droplab.set_rate(model, {"*attn_drop": 0.05, "*.ffn_drop": 0.2, "*resid_drop": 0.15, "blocks.1": 0.0})
    rates = _rates(model)
    assert rates["blocks.0.self_attn.attn_drop"] == 0.05 and rates["blocks.0.ffn_drop"] == 0.2
    assert rates["blocks.0.attn_resid_drop"] == 0.15 and rates["blocks.0.ffn_resid_drop"] == 0.15
    # the prefix "blocks.1" comes last and wins over the globs for the second block's four sites
    assert [rates[f"blocks.1.{n}"] for n in ("self_attn.attn_drop", "attn_resid_drop", "ffn_drop",
                                             "ffn_resid_drop")] == [0.0] * 4
    assert rates["inp"] == 0.2 and rates["head.0"] == 0.5  # unmatched sites keep their rate


def test_set_rate_regex_and_learned_by_name():
    model = _model()
    changed = droplab.set_rate(model, {r"selu\.(2|3)": 0.3, "learned": 0.1})
    assert changed == ["selu.2", "selu.3", "learned"]
    assert model["selu"][2].p == 0.3 and model["learned"].p == pytest.approx(0.1)


def test_set_rate_rejects_before_changing_anything():
    model = _model()
    before = _rates(model)
    with pytest.raises(ValueError, match=r"pattern\(s\) \['blocks.2'\] match no dropout site"):
        droplab.set_rate(model, {"blocks.0": 0.3, "blocks.2": 0.3})
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1, but got 1.5"):
        droplab.set_rate(model, {"blocks.0": 0.3, "head": 1.5})
    with pytest.raises(ValueError, match="Gaussian dropout needs p < 1"):
        droplab.set_rate(model, 1.0)
    with pytest.raises(ValueError, match="a learned rate needs 0 < p < 1"):
        droplab.set_rate(model, {"inp": 0.5, "learned": 0.0})
    assert _rates(model) == before


def test_set_rate_takes_effect_at_the_next_forward():
    block = dnn.TransformerBlock(8, 2, dropout=0.0, seed=0).train()
    x = torch.randn(2, 3, 8)
    y0 = block(x)
    droplab.set_rate(block, {"ffn_resid_drop": 1.0, "attn_resid_drop": 1.0})
    assert torch.equal(block(x), x)  # both sublayers dropped entirely; the identity path remains
    droplab.set_rate(block, 0.0)
    torch.testing.assert_close(block(x), y0)
