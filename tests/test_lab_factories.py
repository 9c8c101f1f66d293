"""The lab on the user's own model and data: factories in their own file, regression, the Python API."""

import math
import textwrap

import numpy as np
import pytest
import torch

import droplab
from droplab.cli import main
from droplab.lab.build import build_model
from droplab.lab.config import ExperimentConfig
from droplab.lab.data import infer_task, load_dataset
from droplab.lab.errors import UserError
from droplab.lab.factories import call_factory
from droplab.lab.store import RunStore
from droplab.lab.tasks import regression

USER_CODE = '''
import torch
from torch import nn


def build(input_shape, n_outputs, width=16):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], width), nn.ReLU(), nn.Dropout(0.4),
                         nn.Linear(width, width), nn.ReLU(), nn.Dropout(0.2), nn.Linear(width, n_outputs))


def build_droplab(input_shape, n_outputs):
    import droplab.nn as dnn

    return nn.Sequential(nn.Linear(input_shape[0], 8), nn.ReLU(), dnn.Dropout(0.5), nn.Linear(8, n_outputs))


def data(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(160, 6, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return (torch.utils.data.TensorDataset(x[:100], y[:100]), torch.utils.data.TensorDataset(x[100:], y[100:]))


def regression_data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 4, generator=g)
    y = x @ torch.tensor([1.5, -2.0, 0.5, 0.0]) + 0.3 * torch.randn(200, generator=g)
    ds = torch.utils.data.TensorDataset
    return ds(x[:120], y[:120]), ds(x[120:160], y[120:160]), ds(x[160:], y[160:])
'''


@pytest.fixture
def user_file(tmp_path, monkeypatch):
    (tmp_path / "mine.py").write_text(textwrap.dedent(USER_CODE))
    monkeypatch.chdir(tmp_path)  # files resolve against the current directory
    return tmp_path


def test_factory_gets_only_the_arguments_it_declares():
    seen = {}

    def make(input_shape, n_outputs, width=3, **rest):
        seen.update(rest)
        return input_shape, n_outputs, width

    assert call_factory(make, "make", {"input_shape": (4,), "n_outputs": 2, "width": 9, "depth": 1}) == ((4,), 2, 9)
    assert seen == {"depth": 1}
    with pytest.raises(UserError, match="requires needed"):
        call_factory(lambda needed: needed, "f", {"n_outputs": 2})


def test_user_model_is_converted_seeded_and_rated(user_file):
    config = ExperimentConfig(model="mine.py:build", input_site=True, seed=3)
    model = build_model(config, (6,), 2)
    sites = droplab.sites(model)
    assert [s.name for s in sites] == ["input_drop", "model.3", "model.6"]
    assert all(s.library == "droplab" for s in sites) and [s.p for s in sites] == [0.2, 0.4, 0.2]  # as built
    again = build_model(config, (6,), 2)  # the seeds are a function of the run's seed
    assert [int(s.module.seed) for s in droplab.sites(again)] == [int(s.module.seed) for s in sites]
    halved = build_model(config.replace(rates=[0.1, 0.2, 0.1]), (6,), 2)
    assert [s.p for s in droplab.sites(halved)] == [0.1, 0.2, 0.1]
    per_site = build_model(config.replace(rates=[0.0, 0.3, 0.6]), (6,), 2)
    assert [s.p for s in droplab.sites(per_site)] == [0.0, 0.3, 0.6]
    with pytest.raises(UserError, match="gives 2 per-site rates but the model has 3"):
        build_model(config.replace(rates=[0.1, 0.2]), (6,), 2)


def test_unseeded_droplab_sites_of_a_user_model_get_counters(user_file):
    model = build_model(ExperimentConfig(model="mine.py:build_droplab", seed=5), (6,), 2)
    (site,) = droplab.sites(model)
    assert site.module.seeded and "2.seed" in model.state_dict()
    again = build_model(ExperimentConfig(model="mine.py:build_droplab", seed=5), (6,), 2)
    assert int(droplab.sites(again)[0].module.seed) == int(site.module.seed)


def test_bad_factory_specs_are_user_errors(user_file):
    with pytest.raises(UserError, match="has no 'nope'; callables there: .*build"):
        build_model(ExperimentConfig(model="mine.py:nope"), (6,), 2)
    with pytest.raises(UserError, match="file not found"):
        build_model(ExperimentConfig(model="missing.py:build"), (6,), 2)


def test_dataset_factory_carves_a_test_split(user_file):
    splits = load_dataset(ExperimentConfig(dataset="mine.py:data", test_fraction=0.25))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (75, 60, 25)
    assert splits.task == "classification" and splits.input_shape == (6,) and splits.n_outputs == 2


def test_task_inference():
    assert infer_task(np.array([1.0, 2.0, 3.0])) == "classification"
    assert infer_task(np.array([1.0, 2.5])) == "regression"
    assert infer_task(np.array([1, 2]), "regression") == "regression"


def test_user_model_and_data_resume_bit_identically(user_file):
    from droplab.lab.trainer import resume, train

    config = ExperimentConfig(model="mine.py:build", dataset="mine.py:data", epochs=4, batch_size=25)
    full = train(config, progress=False)
    store = RunStore(user_file / "r.db")
    half = train(config.replace(epochs=2), store=store, save=user_file / "ckpt", progress=False)
    resumed = resume(half.run_id, store=store, epochs=4, progress=False)
    for (name, p), (_, q) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(p, q), name


def test_log_likelihood_and_coverage_against_hand_values():
    samples = torch.tensor([[[0.0]], [[2.0]]])  # two MC samples of one prediction
    y = torch.tensor([[1.0]])
    expected = math.log(0.5 * 2 * math.exp(-0.5 * 1.0)) - 0.5 * math.log(2 * math.pi)  # tau = 1
    assert regression.log_likelihood(samples, y, tau=1.0).item() == pytest.approx(expected, abs=1e-6)
    mean, var = torch.zeros(1000, 1), torch.ones(1000, 1)
    y = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.0005, 0.9995, 1000)).unsqueeze(1)
    assert regression.interval_coverage(mean, var, y, (0.9,))[0] == pytest.approx(0.9, abs=0.002)
    # the MLE of the weight-scaled precision is 1 / MSE
    assert regression.fit_tau(torch.zeros(1, 500, 1), torch.full((500, 1), 0.5)) == pytest.approx(4.0, rel=0.06)


def test_regression_factory_end_to_end(user_file):
    result = droplab.lab.compare("mine.py:build", "mine.py:regression_data", epochs=3, coadaptation=False)
    assert result.task == "regression" and [r["label"] for r in result.runs] == ["off (p=0)", "as built", "halved"]
    for run in result.runs:
        assert run["test_rmse"] > 0 and math.isfinite(run["test_ll_mc"]) and 0 <= run["coverage90_mc"] <= 1
        history = run["history"][-1]
        assert history["test_rmse"] == pytest.approx(run["test_rmse"])
    assert "RMSE" in result.verdict.headline or "RMSE" in " ".join(result.verdict.reasons)
    assert "test RMSE" in result.table and "test LL (MC)" in result.table
    page = result.report(user_file / "rep")
    assert page.is_file() and (page.parent / "calibration.png").is_file()


@pytest.mark.slow
def test_regression_csv_through_the_cli(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 3))
    y = x @ np.array([2.0, -1.0, 0.5]) + 0.1 * rng.normal(size=150)
    csv = tmp_path / "r.csv"
    np.savetxt(csv, np.column_stack([x, y]), delimiter=",", header="a,b,c,target", comments="")
    code = main(["compare", "--dataset", str(csv), "--set", "label_column=target", "--task", "regression",
                 "--epochs", "2", "--set", "width=8", "--db", str(tmp_path / "r.db"), "--no-report",
                 "--no-progress", "--no-coadaptation"])
    out = capsys.readouterr().out
    assert code == 0 and "task: regression" in out and "test RMSE" in out and "validation RMSE" in out


@pytest.mark.slow
def test_user_files_through_sweep_and_uncertainty(user_file, capsys):
    assert main(["sweep", "--model", "mine.py:build", "--dataset", "mine.py:data", "--trials", "2", "--set",
                 "epochs=2", "--storage", str(user_file / "s.db"), "--db", str(user_file / "r.db"),
                 "--name", "mine", "--no-pruning"]) == 0
    with RunStore(user_file / "r.db") as store:
        configs = [run["config"] for run in store.list_runs()]
    # a searched rate sets every site; the stored config says each of the model's two sites' rate
    assert len(configs) == 2 and all(c["model"] == "mine.py:build" and len(c["rates"]) == 2
                                     and c["rates"][0] == c["rates"][1] for c in configs)
    assert main(["uncertainty", "--model", "mine.py:build", "--dataset", "mine.py:data", "--set", "epochs=2",
                 "--samples", "4", "--curve", "1,2", "--eps", "0.1", "--no-progress", "--no-baseline",
                 "--set", "name=a/../../../x", "--out", str(user_file / "out")]) == 0
    written = [p for p in (user_file / "out").iterdir()]
    assert len(written) == 1 and written[0].parent == user_file / "out" and (written[0] / "index.html").is_file()


@pytest.mark.slow
def test_uncertainty_on_a_regression_factory(user_file, capsys):
    assert main(["uncertainty", "--model", "mine.py:build", "--dataset", "mine.py:regression_data", "--set",
                 "epochs=2", "--samples", "4", "--no-progress", "--out", str(user_file / "out")]) == 0
    out = capsys.readouterr().out
    assert "test log-likelihood" in out and "90% interval coverage" in out
    page, = (user_file / "out").iterdir()
    assert (page / "calibration.png").is_file() and "MC dropout vs weight scaling" in (page / "index.html").read_text()


def test_python_api_stores_and_reports(user_file):
    result = droplab.lab.compare("mine.py:build", "mine.py:data", rates=[0, 0.3], epochs=1, coadaptation=False,
                                 store=user_file / "api.db", report=user_file / "reports")
    assert [run["label"] for run in result.runs] == ["p=0", "p=0.3"]
    assert result.report_path == user_file / "reports" / result.id / "index.html" and result.report_path.is_file()
    with RunStore(user_file / "api.db") as store:
        assert store.get_comparison(result.id)["verdict"]["outcome"] == result.verdict.outcome
        assert len(store.list_runs()) == 2
    assert result["verdict"] is result.verdict and "p=0.3" in result._repr_html_()


def test_regression_metrics_against_sklearn_and_torch():
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    from droplab.lab.data import Split, Splits

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 3, generator=g), torch.randn(50, 1, generator=g)
    model = torch.nn.Linear(3, 1)
    std, mean = torch.tensor([4.0]), torch.tensor([10.0])
    splits = Splits(Split(x, y), Split(x, y), Split(x, y), 3, 1, task="regression", target_mean=mean, target_std=std)
    got = regression.split_metrics(model.eval(), splits.test, splits)
    with torch.no_grad():
        pred = (model(x) * std + mean).numpy()
    true = (y * std + mean).numpy()
    assert got["rmse"] == pytest.approx(mean_squared_error(true, pred) ** 0.5, rel=1e-5)
    assert got["mae"] == pytest.approx(mean_absolute_error(true, pred), rel=1e-5)
    assert got["r2"] == pytest.approx(r2_score(true, pred), rel=1e-4, abs=1e-5)
    out = torch.randn(50, 2, generator=g)
    reference = torch.nn.GaussianNLLLoss(full=True)(out[:, :1], y, out[:, 1:].exp())
    assert regression.loss(out, y, nll_head=True).item() == pytest.approx(reference.item(), rel=1e-5)


@pytest.mark.parametrize("intended, outcome", [
    ({"train_rmse": 50.0, "best_val_rmse": 55.0, "val_rmse": 55.0}, "helps"),
    ({"train_rmse": 41.0, "best_val_rmse": 66.0, "val_rmse": 70.0}, "hurts"),
    ({"train_rmse": 70.0, "best_val_rmse": 61.0, "val_rmse": 72.0}, "too_aggressive"),
])
def test_regression_verdict(intended, outcome):
    baseline = {"train_rmse": 40.0, "best_val_rmse": 60.0, "val_rmse": 62.0, "label": "off"}
    verdict = regression.verdict(baseline, {**intended, "label": "p=0.5"})
    assert verdict.outcome == outcome and "RMSE" in verdict.headline
    calm = regression.verdict({"train_rmse": 59.0, "best_val_rmse": 60.0, "val_rmse": 60.0}, intended)
    assert calm.outcome in ("no_overfitting", "helps")


def test_nll_head_trains_and_reports_finite_uncertainty(user_file):
    from droplab.lab.trainer import train

    result = train(ExperimentConfig(model="mine.py:build", dataset="mine.py:regression_data", epochs=2,
                                    nll_head=True, batch_size=40), progress=False)
    assert result.task == "regression" and math.isfinite(result.final["test_ll_mc"])
    assert "tau_mc" not in result.final and 0 <= result.final["coverage90_ws"] <= 1
