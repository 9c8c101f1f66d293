import pytest
import torch
from lab_fixtures import write_npz

from droplab.lab.config import ExperimentConfig
from droplab.lab.models import dropout_modules
from droplab.lab.store import RunStore
from droplab.lab.trainer import load_checkpoint, resume, schedule_factor, train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_npz(tmp_path_factory.mktemp("data") / "d.npz", n=120, features=16)


def tiny(data, **kw):
    base = dict(dataset=str(data), width=16, epochs=4, batch_size=20, rates=[0.2, 0.5, 0.5], input_site=True)
    return ExperimentConfig(**{**base, **kw})


def test_same_config_same_run(data):
    a, b = train(tiny(data, epochs=2), progress=False), train(tiny(data, epochs=2), progress=False)
    assert [m["train_loss"] for m in a.history] == [m["train_loss"] for m in b.history]


@pytest.mark.parametrize("extra", [{}, {"optimizer": "sgd", "lr": 0.05, "batchnorm": "before_dropout"}])
def test_resume_is_bit_identical(tmp_path, data, extra):
    full = train(tiny(data, **extra), progress=False)
    store = RunStore(tmp_path / "r.db")
    half = train(tiny(data, epochs=2, **extra), store=store, save=tmp_path / "ckpt", progress=False)
    state = load_checkpoint(half.checkpoint)  # weights_only=True load
    assert state["epoch"] == 2 and int(next(v for k, v in state["model"].items() if k.endswith(".step"))) > 0
    resumed = resume(half.run_id, store=store, epochs=4, progress=False)
    assert resumed.run_id == half.run_id
    for (name, p), (_, q) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(p, q), name
    strip = [{k: v for k, v in m.items() if k != "epoch_time_s"} for m in full.history]
    assert [{k: v for k, v in m.items() if k != "epoch_time_s"} for m in resumed.history] == strip
    assert [m["epoch"] for m in store.epochs(half.run_id)] == [1, 2, 3, 4]
    assert store.get_run(half.run_id)["status"] == "finished"


def test_resume_without_checkpoint_is_an_error(tmp_path, data):
    store = RunStore(tmp_path / "r.db")
    run = train(tiny(data, epochs=1), store=store, progress=False)
    with pytest.raises(ValueError, match="has no checkpoint to resume from"):
        resume(run.run_id, store=store, progress=False)


def test_early_stopping_on_validation_loss(data):
    result = train(tiny(data, epochs=40, lr=0.05, rates=[0.0], input_site=False, early_stopping_patience=2),
                   progress=False)
    losses = [m["val_loss"] for m in result.history]
    best = losses.index(min(losses))
    assert len(losses) == best + 3 < 40 and result.final["stopped_early"]


def test_schedules():
    assert [schedule_factor("ramp:4", e) for e in range(1, 6)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert [schedule_factor("early:2", e) for e in range(1, 5)] == [1.0, 1.0, 0.0, 0.0]
    assert [schedule_factor("late:3", e) for e in range(1, 5)] == [0.0, 0.0, 1.0, 1.0]
    assert schedule_factor(None, 7) == 1.0


def test_schedule_sets_the_site_rates(data):
    result = train(tiny(data, epochs=2, schedule="ramp:2"), progress=False)
    assert [m["rate_factor"] for m in result.history] == [0.5, 1.0]
    assert sorted(m.p for _, m in dropout_modules(result.model)) == [0.2, 0.5, 0.5]


def test_a_schedule_that_never_reaches_the_rate_is_an_error(data):
    with pytest.raises(ValueError, match="reaches the configured rate at epoch 10, but the run has only 3 epochs"):
        train(tiny(data, epochs=3, schedule="ramp:10"), progress=False)
    assert "ramp:10" in tiny(data, schedule="ramp:10").label()


def test_resume_with_more_epochs_stores_the_new_config(tmp_path, data):
    store = RunStore(tmp_path / "r.db")
    half = train(tiny(data, epochs=2), store=store, save=tmp_path / "ckpt", progress=False)
    resume(half.run_id, store=store, epochs=3, progress=False)
    assert store.get_run(half.run_id)["config"]["epochs"] == 3


def test_max_norm_caps_incoming_weights(data):
    result = train(tiny(data, epochs=2, max_norm=0.5, lr=0.05), progress=False)
    for module in result.model.modules():
        if isinstance(module, torch.nn.Linear):
            assert module.weight.norm(dim=1).max() <= 0.5 + 1e-5


class _Terminal:
    """A text stream that claims to be a terminal, to see what the progress bar draws."""

    def __init__(self):
        import io

        self.buffer = io.StringIO()

    def write(self, text):
        return self.buffer.write(text)

    def flush(self):
        pass

    def isatty(self):
        return True


@pytest.mark.parametrize("use_rich", [True, False])
def test_progress_bar_draws_on_a_terminal_only(monkeypatch, use_rich):
    import sys

    from droplab.lab.progress import RunProgress

    if not use_rich:
        monkeypatch.setitem(sys.modules, "rich.progress", None)  # import fails: the plain bar is used
    term = _Terminal()
    with RunProgress("p=0.5", 4, stream=term) as bar:
        bar.update(2, {"train_acc": 0.75, "val_acc": 0.5, "val_loss": 1.25})
    assert "p=0.5" in term.buffer.getvalue() and "val 0.500" in term.buffer.getvalue()
    assert "2/4" in term.buffer.getvalue()
    quiet = _Terminal()
    quiet.isatty = lambda: False
    with RunProgress("p=0.5", 4, stream=quiet) as bar:
        bar.update(1, {})
    assert quiet.buffer.getvalue() == ""


def test_augmentation_only_for_sequences(data):
    with pytest.raises(ValueError, match="augment=true shifts and perturbs MNIST-1D-like sequences"):
        train(tiny(data, augment=True), progress=False)


@pytest.mark.slow
def test_augmented_mnist1d_run_is_reproducible(tmp_path, monkeypatch):
    monkeypatch.setenv("DROPLAB_CACHE", str(tmp_path))
    from droplab.lab.data import load_dataset

    cfg = ExperimentConfig(width=8, epochs=1, augment=True)
    splits = load_dataset(cfg)
    a, b = train(cfg, progress=False, splits=splits), train(cfg, progress=False, splits=splits)
    assert a.history[0]["batch_loss"] == b.history[0]["batch_loss"]
    # each augmented example is its raw self shifted by at most 3 steps plus N(0, 0.05^2) noise
    from droplab.lab.trainer import epoch_batches

    (xa, ya), (xr, yr) = next(epoch_batches(splits.train, cfg, 1, sequence=True)), \
        next(epoch_batches(splits.train, cfg.replace(augment=False), 1, sequence=True))
    assert torch.equal(ya, yr)
    residual = torch.stack([min((xa[i] - torch.roll(xr[i], s)).std() for s in range(-3, 4)) for i in range(len(xa))])
    assert 0.04 < residual.mean() < 0.06


def test_history_carries_the_health_monitor(data):
    run = train(tiny(data, epochs=3), progress=False)
    first, last = run.history[0], run.history[-1]
    layers = [k for k in last if k.startswith("grad_norm[")]
    assert layers and all(last[k] > 0 for k in layers)  # every layer with parameters got gradient
    assert first["loss_slope"] is None and isinstance(last["loss_slope"], float)  # needs two epochs
    assert isinstance(last["health"], list)


def test_resume_carries_the_schedule_and_early_stopping_state(tmp_path, data):
    config = tiny(data, epochs=4, schedule="late:2", early_stopping_patience=3)
    full = train(config, progress=False)
    store = RunStore(tmp_path / "r.db")
    half = train(config.replace(epochs=2), store=store, save=tmp_path / "ckpt", progress=False)
    state = load_checkpoint(half.checkpoint)
    assert set(state["callbacks"]) >= {"schedule", "health", "early_stopping"}
    assert state["callbacks"]["schedule"] == {"t": 1}
    resumed = resume(half.run_id, store=store, epochs=4, progress=False)
    assert [m["rate_factor"] for m in resumed.history] == [0.0, 1.0, 1.0, 1.0]
    for (name, p), (_, q) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(p, q), name
