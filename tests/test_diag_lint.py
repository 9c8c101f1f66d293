"""Each lint rule fires on a small model built to violate it and stays silent on a clean one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import droplab as dl
from droplab.diagnostics import RULES, lint


def rules(findings):
    return sorted(f.rule for f in findings)


def x8():
    return torch.randn(6, 8, generator=torch.Generator().manual_seed(0))


class Residual(nn.Module):
    """x + dropout(f(x)): dropout on the residual branch, the correct place."""

    def __init__(self, d=8):
        super().__init__()
        self.f = nn.Linear(d, d)
        self.drop = dl.nn.Dropout(0.1, seed=0)

    def forward(self, x):
        return x + self.drop(self.f(x))


class Clean(nn.Module):
    """BN -> ReLU -> dropout, a residual block, dropout in the second conv block only, guarded functional calls."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.BatchNorm1d(4), nn.ReLU(),
                                  nn.Conv1d(4, 4, 3, padding=1), nn.ReLU(), dl.nn.Dropout1d(0.1, seed=1))
        self.mlp = nn.Sequential(nn.Linear(32, 8), nn.LayerNorm(8), nn.ReLU(), nn.Dropout(0.5))
        self.block = Residual()
        self.p = 0.1

    def forward(self, x):
        h = self.conv(x[:, None, :]).flatten(1)
        h = self.block(self.mlp(h))
        h = F.dropout(h, 0.2, training=self.training)
        q = h[:, None, None, :]
        a = F.scaled_dot_product_attention(q, q, q, dropout_p=self.p if self.training else 0.0)
        return a.flatten(1)


def test_clean_model_is_silent_in_train_and_eval():
    model = Clean()
    found = lint(model, x8())
    assert found == [] and found.traced_with == "fx" and found.skipped == []
    assert lint(model.eval(), x8(), for_inference=True) == []


def test_every_finding_carries_why_and_fix():
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.95), nn.BatchNorm1d(8))
    found = lint(model)
    assert rules(found) == ["dropout-before-batchnorm", "high-rate"]
    for f in found:
        assert f.severity in ("error", "warning", "info") and f.why == RULES[f.rule][1] and f.fix
        assert f.as_row()["rule"] == f.rule


# ------------------------------------------------------------------------------ dropout before BatchNorm


def test_dropout_directly_before_batchnorm():
    found = lint(nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.BatchNorm1d(8)))
    assert rules(found) == ["dropout-before-batchnorm"]
    assert found[0].path == "2" and "directly" in found[0].message and found[0].severity == "warning"


def test_dropout_before_batchnorm_through_a_linear_layer():
    found = lint(nn.Sequential(nn.Linear(8, 8), dl.nn.Dropout(0.5, seed=0), nn.Linear(8, 8), nn.BatchNorm1d(8)))
    assert rules(found) == ["dropout-before-batchnorm"] and "through 2 (Linear)" in found[0].message


def test_batchnorm_then_dropout_is_silent():
    assert lint(nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 2))) == []


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.drop = nn.Dropout(0.5)
        self.bn = nn.BatchNorm1d(8)

    def forward(self, x):
        if x.sum() > -1e9:  # data-dependent control flow: torch.fx cannot trace this
            x = self.fc(x)
        return self.bn(self.drop(x))


def test_dropout_before_batchnorm_found_by_capture_when_fx_fails():
    found = lint(Untraceable(), x8())
    assert found.traced_with == "capture" and "torch.fx could not trace" in found.note
    assert rules(found) == ["dropout-before-batchnorm"]
    assert found.skipped == []  # every graph rule ran on the captured forward


def test_hooks_when_the_capture_fails_too(monkeypatch):
    import droplab.graph.dataflow as graph

    def broken(model, example_input):
        raise RuntimeError("no capture")

    monkeypatch.setattr(graph, "_from_capture", broken)
    found = lint(Untraceable(), x8())
    assert found.traced_with == "hooks" and "no capture" in found.note
    assert rules(found) == ["dropout-before-batchnorm"]
    assert any(s.startswith("dropout-on-residual-path") for s in found.skipped)


class UntraceableResidual(nn.Module):
    """Data-dependent control flow around the two mistakes only a dataflow view sees."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        if x.sum() > -1e9:
            x = x * 1.0
        y = self.drop(x) + self.fc(x)  # dropout on the identity branch of a residual
        return F.dropout(y, 0.2, True)  # always on, also in eval mode


def test_capture_runs_residual_and_functional_rules_on_untraceable_models():
    found = lint(UntraceableResidual().eval(), x8())
    assert found.traced_with == "capture" and found.skipped == []
    assert ("dropout-on-residual-path", "drop") in [(f.rule, f.path) for f in found]
    assert "functional-dropout-always-on" in rules(found)
    clean = lint(nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.2)).eval(), x8())
    assert clean == []


def test_capture_on_a_hugging_face_bert_runs_every_rule():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval()
    found = lint(model, {"input_ids": torch.randint(0, 50, (2, 6))})
    assert found.traced_with == "capture" and "co_varnames" in found.note
    assert found.skipped == [] and found == []


def test_sequential_order_is_the_last_resort():
    class Wrapped(Untraceable):
        def __init__(self):
            super().__init__()
            self.seq = nn.Sequential(nn.Dropout(0.2), nn.BatchNorm1d(8))

        def forward(self, x):
            return self.seq(super().forward(x))

    found = lint(Wrapped())  # no example input: neither fx nor hooks
    assert found.traced_with == "sequential"
    assert [(f.rule, f.path) for f in found] == [("dropout-before-batchnorm", "seq.1")]


# ---------------------------------------------------------------------------------------- residual path


class SkipDropped(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Linear(8, 8)
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        return self.drop(x) + self.f(x)


class DroppedSum(Residual):
    """Two residual blocks with dropout on the stream between them."""

    def __init__(self):
        super().__init__()
        self.g = nn.Linear(8, 8)

    def forward(self, x):
        h = self.drop(x + self.f(x))
        return h + self.g(h)


class AddedToOwnInput(Residual):
    def forward(self, x):
        h = self.f(x)
        return h + self.drop(h)


@pytest.mark.parametrize("model_cls", [SkipDropped, DroppedSum, AddedToOwnInput])
def test_dropout_on_identity_path(model_cls):
    found = lint(model_cls())
    assert rules(found) == ["dropout-on-residual-path"] and found[0].path == "drop"


def test_dropout_on_residual_branch_and_embedding_dropout_are_silent():
    class Gpt(nn.Module):  # dropout after the embedding sum feeds the blocks: not an identity-path dropout
        def __init__(self):
            super().__init__()
            self.tok = nn.Embedding(10, 8)
            self.pos = nn.Embedding(5, 8)
            self.drop = nn.Dropout(0.1)
            self.blocks = nn.Sequential(Residual(), Residual())

        def forward(self, idx):
            pos = torch.arange(idx.shape[1], device=idx.device)
            return self.blocks(self.drop(self.tok(idx) + self.pos(pos)))

    assert lint(Gpt(), torch.zeros(2, 5, dtype=torch.long)) == []


# ------------------------------------------------------------------------------------------ first conv


def test_dropout_after_first_conv_only():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout2d(0.1),
                          nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Dropout2d(0.1))
    found = lint(model, torch.randn(2, 1, 8, 8))
    assert [(f.rule, f.path) for f in found] == [("dropout-after-first-conv", "3")]


# ------------------------------------------------------------------------------ functional always on


class FunctionalDropout(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how = how
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        x = self.fc(x)
        if self.how == "hard-coded":
            return F.dropout(x, 0.5, training=True)
        if self.how == "default":
            return F.dropout(x, 0.5)
        if self.how == "droplab":
            return dl.functional.dropout(x, 0.5, training=True, seed=3)
        if self.how == "droplab-guarded":
            return dl.functional.dropout(x, 0.5, training=self.training, seed=3)
        return F.dropout(x, 0.5, self.training)


@pytest.mark.parametrize("how", ["hard-coded", "default", "droplab"])
def test_functional_dropout_left_on(how):
    found = lint(FunctionalDropout(how))
    assert rules(found) == ["functional-dropout-always-on"]
    assert found[0].severity == "error" and found[0].path == "" and "test_diag_lint.py" in found[0].message


@pytest.mark.parametrize("how", ["guarded", "droplab-guarded"])
def test_functional_dropout_guarded_is_silent(how):
    assert lint(FunctionalDropout(how), x8()) == []


# ---------------------------------------------------------------------------------- rates and schedules


@pytest.mark.parametrize("p, severity", [(0.9, "warning"), (1.0, "error")])
def test_high_rate(p, severity):
    found = lint(nn.Sequential(nn.Linear(8, 8), dl.nn.Dropout(p, seed=0)))
    assert [(f.rule, f.severity, f.path) for f in found] == [("high-rate", severity, "1")]
    assert lint(nn.Sequential(nn.Linear(8, 8), dl.nn.Dropout(0.8, seed=0))) == []


def test_high_rate_in_a_functional_call():
    class Heavy(nn.Module):
        def forward(self, x):
            return F.dropout(x, 0.9, self.training)

    assert rules(lint(Heavy())) == ["high-rate"]


def test_schedule_jumping_late():
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5))
    found = lint(model, schedule=lambda step: 0.5 if step < 900 else 0.0, total_steps=1000)
    assert rules(found) == ["schedule-late-jump"] and "between steps" in found[0].message
    assert lint(model, schedule=lambda step: 0.5 * step / 1000, total_steps=1000) == []
    assert lint(model, schedule=lambda step: 0.1 if step < 100 else 0.0, total_steps=1000) == []  # early dropout
    found = lint(model, schedule=lambda step: 0.9, total_steps=10)
    assert rules(found) == ["high-rate"]


def test_schedule_object_and_missing_length():
    class Scheduler:  # the shape of a stateful scheduler: a schedule and its length
        total_steps = 100

        @staticmethod
        def schedule(step):
            return {"a": 0.1, "b": 0.1 if step < 80 else 0.6}

    found = lint(nn.Linear(2, 2), schedule=Scheduler())
    assert [(f.rule, f.path) for f in found] == [("schedule-late-jump", "schedule")]
    with pytest.raises(ValueError, match="total_steps must be a positive int"):
        lint(nn.Linear(2, 2), schedule=lambda step: 0.1)
    with pytest.raises(TypeError, match="schedule must be"):
        lint(nn.Linear(2, 2), schedule=3, total_steps=10)


# ------------------------------------------------------------------------------------------------ RNN


def test_rnn_dropout_with_one_layer():
    with pytest.warns(UserWarning):
        single = nn.LSTM(4, 4, num_layers=1, dropout=0.3)
    found = lint(nn.Sequential(single))
    assert [(f.rule, f.path) for f in found] == [("rnn-dropout-single-layer", "0")]
    assert lint(nn.Sequential(nn.LSTM(4, 4, num_layers=2, dropout=0.3))) == []


# ------------------------------------------------------------------------------------------ attention


class Attention(nn.Module):
    def __init__(self, guarded):
        super().__init__()
        self.guarded = guarded
        self.p = 0.1

    def forward(self, x):
        q = x[:, None, :, None]
        p = (self.p if self.training else 0.0) if self.guarded else self.p
        return F.scaled_dot_product_attention(q, q, q, dropout_p=p).flatten(1)


def test_sdpa_dropout_left_on():
    found = lint(Attention(guarded=False))
    assert rules(found) == ["attention-dropout-always-on"] and found[0].severity == "error"
    assert lint(Attention(guarded=True), x8()) == []


def test_droplab_attention_dropout_left_on():
    class DroplabAttention(nn.Module):
        def __init__(self, guarded):
            super().__init__()
            self.guarded = guarded

        def forward(self, x):
            q = x[:, None, :, None]
            training = self.training if self.guarded else True
            return dl.functional.scaled_dot_product_attention(q, q, q, dropout_p=0.1, training=training, seed=0)

    assert rules(lint(DroplabAttention(guarded=False))) == ["attention-dropout-always-on"]
    assert lint(DroplabAttention(guarded=True), x8()) == []


def test_multihead_attention_in_train_mode_inside_an_eval_model():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, dropout=0.1, batch_first=True)

        def forward(self, x):
            return self.attn(x, x, x, need_weights=True)[0]

    model = Block().eval()
    x = torch.randn(2, 3, 8)
    assert lint(model, x) == []
    model.attn.train()
    found = lint(model, x)
    assert [(f.rule, f.path) for f in found] == [("dropout-site-in-train-mode", "attn")]
    assert "MultiheadAttention" in found[0].message


# -------------------------------------------------------------------------------- test-time scale


class HomeMadeDropout(nn.Module):
    """A user's dropout: keeps units with droplab's generator but forgets to rescale."""

    def __init__(self, p, rescale):
        super().__init__()
        self.p, self.rescale = p, rescale

    def forward(self, x):
        if not self.training:
            return x
        scaling = "inverted" if self.rescale else "classic"
        return dl.functional.dropout(x, self.p, True, seed=None, scaling=scaling)


def test_missing_test_time_scale_measured_by_running_the_module():
    model = nn.Sequential(nn.Linear(8, 8), HomeMadeDropout(0.5, rescale=False))
    found = lint(model, x8())
    assert [(f.rule, f.path) for f in found] == [("missing-test-time-scale", "1")]
    ratio = float(found[0].message.split("= ")[1].split(" x")[0])
    assert abs(ratio - 0.5) < 0.05  # the mean training output is q times the eval output
    assert lint(nn.Sequential(nn.Linear(8, 8), HomeMadeDropout(0.5, rescale=True)), x8()) == []


def test_custom_module_stochastic_at_eval():
    class AlwaysOn(nn.Module):
        def forward(self, x):
            return dl.functional.dropout(x, 0.5, True, seed=None)

    found = lint(nn.Sequential(nn.Linear(8, 8), AlwaysOn()), x8())
    assert [(f.rule, f.path) for f in found] == [("functional-dropout-always-on", "1"), ("stochastic-at-eval", "1")]


# -------------------------------------------------------------------------------------------- modes


def test_train_mode_when_asked_for_inference():
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5))
    found = lint(model, for_inference=True)
    assert [(f.rule, f.severity, f.path) for f in found] == [("train-mode-at-inference", "error", "")]
    model.eval()
    assert lint(model, for_inference=True) == []
    model[1].train()
    assert [(f.rule, f.path) for f in lint(model, for_inference=True)] == [("train-mode-at-inference", "1")]


def test_bad_arguments():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        lint("not a model")
    with pytest.raises(ValueError, match="probe_samples must be an int"):
        lint(nn.Linear(2, 2), probe_samples=1)


def test_lint_leaves_the_model_untouched():
    model = nn.Sequential(nn.Linear(8, 8), dl.nn.Dropout(0.5, seed=0), HomeMadeDropout(0.5, True))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lint(model, x8())
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
