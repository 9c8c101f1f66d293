"""``droplab uncertainty``: AUROC by hand, the shifted sets, FGSM, and the command end to end on a small config."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import droplab as dl
from droplab.cli import main
from droplab.lab.uncertainty import NO_DEFENCE, auroc, fgsm, ood_sets


def test_auroc_by_hand_and_against_sklearn():
    assert auroc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])) == 1.0
    assert auroc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 0.0
    assert auroc(torch.tensor([1.0, 1.0]), torch.tensor([1.0])) == 0.5  # ties count half
    # in = [0, 1, 2], out = [1, 3]: pairs (out > in) = 1.5 + 3 = 4.5 of 6
    assert auroc(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 3.0])) == pytest.approx(0.75)
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 5, (50,), generator=g).float(), torch.randint(1, 6, (40,), generator=g).float()
    expected = metrics.roc_auc_score([0] * 50 + [1] * 40, torch.cat([a, b]).numpy())
    assert auroc(a, b) == pytest.approx(expected, abs=1e-12)


def test_ood_sets_keep_the_input_shape():
    x = torch.randn(30, 40, generator=torch.Generator().manual_seed(0))
    sets = ood_sets(x, digits=True)
    assert set(sets) == {"translated", "scaled", "noised", "digits"}
    assert all(v.shape == x.shape for v in sets.values())
    assert torch.equal(sets["translated"][:, 10:], x[:, :30]) and torch.equal(sets["scaled"], 3 * x)
    assert abs(float(sets["digits"].std()) - float(x.std())) < 0.1
    assert "digits" not in ood_sets(x, digits=False)


def test_fgsm_moves_along_the_gradient_sign_and_restores_mode():
    model = nn.Sequential(nn.Linear(4, 2), dl.nn.Dropout(0.5, seed=0))
    model[0].weight.data = torch.tensor([[1.0, -1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    model[0].bias.data.zero_()
    x = torch.zeros(1, 4)
    x_adv = fgsm(model, x, torch.tensor([0]), 0.1)
    assert torch.equal(x_adv, torch.tensor([[-0.1, 0.1, 0.0, -0.1]]))  # lowers the true class's logit
    assert model.training and int(model[1].step) == 0  # the attack used the weight-scaled (eval) pass


@pytest.mark.slow
def test_uncertainty_end_to_end_small(tmp_path, capsys):
    code = main(["uncertainty", "--set", "epochs=1", "--set", "width=32", "--samples", "4", "--curve", "1,4",
                 "--eps", "0.1", "--max-test", "120", "--out", str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and NO_DEFENCE in out
    (report,) = list(tmp_path.iterdir())
    page = (report / "index.html").read_text()
    for png in ("reliability.png", "mc_curve.png", "ood.png", "fgsm.png"):
        assert (report / png).stat().st_size > 1000 and f'src="{png}"' in page
    results = json.loads((report / "results.json").read_text())
    assert set(results["calibration"]) == {"weight_scaling", "mc"} and results["n_test"] == 120
    assert [r["samples"] for r in results["curve"]] == [None, 1, 4]
    assert set(results["ood"]) == {"translated", "scaled", "noised", "digits"}
    for row in results["ood"].values():
        assert 0 <= row["auroc_entropy"] <= 1 and 0 <= row["auroc_mi"] <= 1
    assert [r["eps"] for r in results["fgsm"]] == [0.0, 0.1] and "no_dropout_model" in results["fgsm"][0]


def test_bad_arguments_exit_two(capsys):
    assert main(["uncertainty", "--curve", "0,x"]) == 2
    assert "--curve" in capsys.readouterr().err
    assert main(["uncertainty", "--samples", "1"]) == 2
