"""Lightning against the real package: a 2-epoch fit with the schedule callback, resumed from its checkpoint."""

import functools

import pytest
import torch
from conftest import LazyModule
from torch import nn

import droplab as dl

pl = LazyModule("lightning.pytorch")  # imported by the first test that uses it, not by collection
lightning = LazyModule("droplab.integrations.lightning")


def DropoutSchedule(*args, **kwargs):
    return lightning.DropoutSchedule(*args, **kwargs)


def mc_predict(*args, **kwargs):
    return lightning.mc_predict(*args, **kwargs)


@functools.cache
def tiny_class():
    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.0), nn.Linear(8, 1))
            self.seen: list[float] = []

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            self.seen.append(self.net[2].p)  # the rate this step trains with
            x, y = batch
            return nn.functional.mse_loss(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

        def predict_step(self, batch, batch_idx):
            return mc_predict(self, batch[0], samples=6, seed=3, batch_idx=batch_idx).samples

    return Tiny


def Tiny():
    return tiny_class()()


def _loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 4, generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)


def _trainer(tmp_path, epochs, callback):
    return pl.Trainer(max_epochs=epochs, callbacks=[callback], default_root_dir=tmp_path, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
                      enable_checkpointing=False)


def test_schedule_callback_resumes_from_checkpoint_with_the_same_rates(tmp_path):
    schedule = dl.schedules.linear(0.0, 0.4, steps=8)
    torch.manual_seed(0)
    straight = Tiny()
    _trainer(tmp_path / "a", 2, DropoutSchedule(schedule)).fit(straight, _loader())
    # step t trains with schedule(t): 4 batches per epoch, 2 epochs
    assert straight.seen == pytest.approx([schedule(t) for t in range(8)])

    torch.manual_seed(0)
    first = Tiny()
    trainer = _trainer(tmp_path / "b", 1, DropoutSchedule(schedule))
    trainer.fit(first, _loader())
    ckpt = tmp_path / "one.ckpt"
    trainer.save_checkpoint(ckpt)
    assert torch.load(ckpt, weights_only=False)["callbacks"]["DropoutSchedule"]["t"] == 4
    resumed = Tiny()
    callback = DropoutSchedule(schedule)
    _trainer(tmp_path / "c", 2, callback).fit(resumed, _loader(), ckpt_path=ckpt)
    assert first.seen + resumed.seen == pytest.approx(straight.seen)
    assert callback.rates == {"net.2": pytest.approx(schedule(8))}


def test_epoch_interval_and_bad_interval(tmp_path):
    torch.manual_seed(0)
    model = Tiny()
    _trainer(tmp_path, 2, DropoutSchedule(dl.schedules.stepwise([0.1, 0.3], [1]), interval="epoch")).fit(
        model, _loader())
    assert model.seen == pytest.approx([0.1] * 4 + [0.3] * 4)
    with pytest.raises(ValueError, match="interval must be one of"):
        DropoutSchedule(dl.schedules.constant(0.1), interval="batch")


def test_mc_predict_from_predict_step_equals_mc_predict(tmp_path):
    torch.manual_seed(0)
    model = Tiny()
    model.net[2].p = 0.5
    out = pl.Trainer(logger=False, enable_progress_bar=False, accelerator="cpu", devices=1,
                     default_root_dir=tmp_path).predict(model, _loader())
    x = next(iter(_loader()))[0]
    expected = dl.mc.predict(model, x, 6, seed=3).samples
    torch.testing.assert_close(out[0], expected)
    assert out[0].std(0).max() > 0
    second = next(iter(torch.utils.data.DataLoader(_loader().dataset, batch_size=4, sampler=range(4, 8))))[0]
    torch.testing.assert_close(out[1], dl.mc.predict(model, second, 6, seed=4).samples)  # batch 1: seed 3 + 1


def _accumulating_trainer(tmp_path, callback, accumulate):
    return pl.Trainer(max_epochs=1, callbacks=[callback], default_root_dir=tmp_path, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
                      enable_checkpointing=False, accumulate_grad_batches=accumulate)


def test_step_interval_counts_optimizer_steps_under_gradient_accumulation(tmp_path):
    schedule = dl.schedules.linear(0.0, 0.4, steps=4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 4, generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=2)
    torch.manual_seed(0)
    model = Tiny()
    callback = DropoutSchedule(schedule)
    trainer = _accumulating_trainer(tmp_path, callback, accumulate=4)
    trainer.fit(model, loader)
    assert trainer.global_step == 2  # 8 batches, 4 per optimizer step
    assert callback.scheduler.t == 2  # it counted 8 batches on main
    # the four batches of one optimizer step train with one rate
    assert model.seen == pytest.approx([schedule(0)] * 4 + [schedule(1)] * 4)
    assert callback.rates == {"net.2": pytest.approx(schedule(2))}
