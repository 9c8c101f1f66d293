"""droplab.deploy: fold equivalence (Linear, Conv1d, Conv2d), refusals, strip, and export paths."""

import pytest
import torch
from torch import nn

import droplab as dl
from droplab.deploy import fold, strip

D = dl.nn.Dropout


def _check_fold(model, x):
    model.train()  # fold must not depend on (or change) the model's mode
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold(model, x)
    assert not any(isinstance(m, (dl.nn.StochasticModule, nn.Dropout)) for m in folded.modules())
    with torch.no_grad():
        expected = model.eval()(x)
        torch.testing.assert_close(folded(x), expected, rtol=1e-10, atol=1e-12)
    for k, v in model.state_dict().items():  # the original is untouched
        assert torch.equal(v, weights[k])
    return folded


def test_fold_linear_stack():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), D(0.3, scaling="classic"), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(),
                          D(0.5, scaling="classic"), nn.Linear(8, 3), nn.Dropout(0.2), D(0.1)).double()
    folded = _check_fold(model, torch.randn(5, 6, dtype=torch.float64))
    torch.testing.assert_close(folded[3].weight, model[3].weight * 0.7)
    torch.testing.assert_close(folded[6].weight, model[6].weight * 0.5)
    torch.testing.assert_close(folded[3].bias, model[3].bias)


def test_fold_conv1d_stack():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv1d(3, 8, 3), dl.nn.Dropout1d(0.25, scaling="classic"), nn.ReLU(), nn.MaxPool1d(2),
                          nn.Conv1d(8, 4, 3), D(0.4, scaling="classic"), nn.Flatten(), nn.Linear(4 * 5, 2)).double()
    _check_fold(model, torch.randn(3, 3, 16, dtype=torch.float64))


def test_fold_conv2d_stack_through_functional_ops():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3)
            self.drop = dl.nn.Dropout2d(0.3, scaling="classic")
            self.conv2 = nn.Conv2d(6, 4, 3)
            self.drop2 = D(0.2, scaling="classic")
            self.fc = nn.Linear(4 * 2 * 2, 5)

        def forward(self, x):
            h = torch.nn.functional.max_pool2d(torch.relu(self.drop(self.conv(x))), 2)
            h = self.conv2(h)
            return self.fc(torch.flatten(self.drop2(h), 1))

    torch.manual_seed(2)
    _check_fold(Net().double(), torch.randn(2, 3, 10, 10, dtype=torch.float64))


def test_fold_refuses_non_commuting_ops():
    bn = nn.Sequential(nn.Linear(3, 4), D(0.3, scaling="classic"), nn.BatchNorm1d(4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"cannot fold 1: its output reaches 2 \(BatchNorm1d\)"):
        fold(bn)

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.drop, self.b = nn.Linear(4, 4), D(0.3, scaling="classic"), nn.Linear(4, 4)

        def forward(self, x):
            h = self.drop(self.a(x))
            return self.b(h) + h

    with pytest.raises(ValueError, match="feeds 2 ops"):
        fold(Residual())

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.drop, self.lin = D(0.3, scaling="classic"), nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(self.lin(self.drop(x)))

    with pytest.raises(ValueError, match="applied 2 times"):
        fold(Shared())
    with pytest.raises(ValueError, match="model's output"):
        fold(nn.Sequential(nn.Linear(3, 3), D(0.5, scaling="classic")))


def test_strip_replaces_only_inference_noops():
    model = nn.Sequential(nn.Linear(4, 4), D(0.3), nn.Dropout(0.1), D(0.2, scaling="classic"),
                          dl.nn.DropConnect(nn.Linear(4, 2), 0.3) if _has_dropconnect() else nn.Linear(4, 2))
    stripped = strip(model)
    kinds = [type(m).__name__ for m in stripped]
    assert kinds[1:4] == ["Identity", "Identity", "Dropout"]  # the classic site scales at inference: kept
    assert kinds[4] != "Identity"
    x = torch.randn(3, 4)
    torch.testing.assert_close(stripped(x), model.eval()(x))
    assert type(model[1]) is D  # original untouched


def _has_dropconnect():
    try:
        dl.nn.DropConnect(nn.Linear(4, 2), 0.3)
        return True
    except TypeError:
        return False


def _eval_model():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), D(0.3), nn.Dropout(0.2), D(0.4, scaling="classic"),
                         nn.Linear(8, 2)).eval()


def test_torch_export_of_droplab_model_in_eval_mode():
    model, x = _eval_model(), torch.randn(3, 4)
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), model(x))
    assert "droplab" not in str(exported.graph)  # no mask op in an inference graph


def test_torchscript_trace_and_script_after_fold():
    model, x = _eval_model(), torch.randn(3, 4)
    traced = torch.jit.trace(model, x)
    torch.testing.assert_close(traced(x), model(x))
    scripted = torch.jit.script(fold(model))  # droplab's modules are not scriptable: fold/strip first
    torch.testing.assert_close(scripted(x), model(x))
    inverted = nn.Sequential(nn.Linear(4, 2), D(0.5)).eval()
    scripted_strip = torch.jit.script(strip(inverted))
    torch.testing.assert_close(scripted_strip(x), inverted(x))


def test_verification_with_example_input_detects_a_wrong_result(monkeypatch):
    model = nn.Sequential(nn.Linear(3, 4), D(0.3, scaling="classic"), nn.Linear(4, 2))
    monkeypatch.setattr(dl.deploy, "_noop_sites", lambda m: ["1"])  # pretend the classic site were a no-op
    with pytest.raises(RuntimeError, match="differs from the eval-mode model"):
        strip(model, torch.randn(2, 3))
