"""droplab.mc.predict: sample-for-sample equality with the loop, state restoration, consistent masks."""

import copy

import pytest
import torch
import torch.nn.functional as TF
from scipy.stats import binomtest
from torch import nn

import droplab as dl
from droplab.mc import predict, sample_loop

DT = torch.float64


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Dropout(0.4),
                         nn.Linear(16, 16), nn.Tanh(), dl.nn.Dropout(0.3, seed=11), nn.Linear(16, 3)).to(DT)


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 8)
        self.drop = dl.nn.Dropout(0.5, seed=3)
        self.b = nn.Linear(8, 2)

    def forward(self, x):
        h = self.a(x)
        if h.sum() > -1e9:  # always true, but a branch on a value
            h = torch.relu(h)
        return self.b(self.drop(h))


class WithBatchNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 8)
        self.bn = nn.BatchNorm1d(8)
        self.drop = dl.nn.Dropout(0.5, seed=4)
        self.b = nn.Linear(8, 2)

    def forward(self, x):
        return self.b(self.drop(torch.relu(self.bn(self.a(x)))))


class FunctionalDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 32)

    def forward(self, x):
        h = self.a(x)
        return TF.dropout(h.view(h.size(0), -1), 0.5, self.training)  # x.size(0) must follow the batch


def _x(n=7, seed=1):
    return torch.randn(n, 5, generator=torch.Generator().manual_seed(seed), dtype=DT)


def test_fx_path_equals_loop_sample_for_sample():
    model, x = _mlp(), _x()
    res = predict(model, x, 12, seed=5, max_batch=30)  # 4 samples per pass, 3 passes
    assert res.path == "fx"
    assert res.samples.shape == (12, 7, 3)
    torch.testing.assert_close(res.samples, sample_loop(model, x, 12, seed=5), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(res.mean, res.samples.mean(0))


def test_hooks_path_equals_loop_sample_for_sample():
    model, x = Untraceable().to(DT), _x()
    res = predict(model, x, 9, seed=2, max_batch=64)
    assert res.path == "hooks"
    torch.testing.assert_close(res.samples, sample_loop(model, x, 9, seed=2), rtol=1e-12, atol=1e-12)
    nocache = predict(_mlp(), x, 9, seed=2, cache_prefix=False)
    assert nocache.path == "hooks"
    torch.testing.assert_close(nocache.samples, sample_loop(_mlp(), x, 9, seed=2), rtol=1e-12, atol=1e-12)


def test_sequential_fallback_split_equals_loop():
    model, x = _mlp(), _x()
    res = predict(model, x, 6, seed=9, method="hooks")
    torch.testing.assert_close(res.samples, sample_loop(model, x, 6, seed=9), rtol=1e-12, atol=1e-12)


def test_input_batches_split_by_max_batch_match_the_loop_over_the_same_batches():
    model, x = _mlp(), _x(10)
    res = predict(model, x, 5, seed=1, max_batch=4)  # 3 input batches of <= 4 rows, one sample per pass
    loop = predict(model, x, 5, seed=1, max_batch=4, method="loop")
    torch.testing.assert_close(res.samples, loop.samples, rtol=1e-12, atol=1e-12)
    # batch k is folded into the seed: rows 0 and 4 (same position, batches 0 and 1) see different masks
    same = predict(model, torch.cat([x[:4], x[:4]]), 5, seed=1, max_batch=4).samples
    assert not torch.equal(same[:, :4], same[:, 4:])


def test_seed_reproducible_and_samples_differ():
    model, x = _mlp(), _x()
    a = predict(model, x, 4, seed=3).samples
    torch.testing.assert_close(predict(model, x, 4, seed=3).samples, a, rtol=0, atol=0)
    assert not torch.equal(predict(model, x, 4, seed=4).samples, a)
    assert not torch.equal(a[0], a[1])


def test_keep_rate_of_mc_masks_is_binomial():
    # a bare dropout site: each sample keeps each element with probability q = 0.7
    model = dl.nn.Dropout(0.3, seed=0)
    x = torch.ones(50, 40)
    samples = predict(model, x, 40, seed=8, max_batch=400).samples
    kept = int((samples != 0).sum())
    assert binomtest(kept, samples.numel(), 0.7).pvalue > 1e-3
    # each sample has a different mask: fraction of positions where samples 0 and 1 agree ~ q^2 + p^2
    agree = int(((samples[0] != 0) == (samples[1] != 0)).sum())
    assert binomtest(agree, 2000, 0.7**2 + 0.3**2).pvalue > 1e-3


def test_batchnorm_statistics_untouched_and_used_in_eval():
    model = WithBatchNorm().to(DT)
    model.train()
    model(_x(20, 3))  # give the running stats something non-trivial
    before = {k: v.clone() for k, v in model.bn.state_dict().items()}
    res = predict(model, _x(), 6, seed=0)
    for k, v in model.bn.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model.training and model.bn.training  # mode restored
    # the BatchNorm used its running statistics: equal to the loop with BN in eval
    torch.testing.assert_close(res.samples, sample_loop(model, _x(), 6, seed=0), rtol=1e-12, atol=1e-12)
    x1 = _x()[:1]  # a batch of one would fail in train-mode BatchNorm
    assert predict(model, x1, 3, seed=0).samples.shape == (3, 1, 2)


def test_state_restored_after_exception():
    model = _mlp()
    model.train()
    droplab_site = model[7]
    step = int(droplab_site.step)
    calls = {"n": 0}

    def boom(module, args):  # fails in the second batched pass (after the probe and the trace check)
        calls["n"] += args[0].shape[0] == 14
        if calls["n"] == 2:
            raise RuntimeError("boom")

    handle = model[8].register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        predict(model, _x(), 8, seed=0, max_batch=14)
    handle.remove()
    assert all(m.training for m in model.modules())
    assert type(model[4]) is nn.Dropout  # the torch site swapped for the call is back
    assert "forward" not in droplab_site.__dict__
    assert int(droplab_site.step) == step
    model.eval()
    predict(model, _x(), 2, seed=0)
    assert not any(m.training for m in model.modules())


def test_training_step_does_not_advance():
    model = _mlp()
    predict(model, _x(), 5, seed=0)
    assert int(model[7].step) == 0


def test_consistent_masks_equal_across_batch_splits_and_calls():
    model, x = _mlp(), _x(9)
    full = predict(model, x, 5, seed=7, consistent=True).samples
    split = predict(model, x, 5, seed=7, consistent=True, max_batch=4).samples
    torch.testing.assert_close(split, full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(predict(model, x[3:5], 5, seed=7, consistent=True).samples, full[:, 3:5],
                               rtol=1e-12, atol=1e-12)
    # one sub-network per sample: identical inputs give identical outputs within a sample ...
    same = predict(model, x[:1].repeat(4, 1), 3, seed=7, consistent=True).samples
    assert torch.equal(same, same[:, :1].expand_as(same))
    # ... while without consistent masks they do not
    free = predict(model, x[:1].repeat(4, 1), 3, seed=7).samples
    assert not torch.equal(free, free[:, :1].expand_as(free))
    loop = predict(model, x, 5, seed=7, consistent=True, method="loop").samples
    torch.testing.assert_close(full, loop, rtol=1e-12, atol=1e-12)


def test_torch_functional_dropout_call_is_sampled():
    model, x = FunctionalDropout().to(DT), _x(6)
    model.eval()
    res = predict(model, x, 30, seed=1, max_batch=60)
    assert res.path == "fx"
    torch.testing.assert_close(res.samples, sample_loop(model, x, 30, seed=1), rtol=1e-12, atol=1e-12)
    kept = int((res.samples != 0).sum())
    assert binomtest(kept, res.samples.numel(), 0.5).pvalue > 1e-3


def test_torch_rnn_dropout_falls_back_to_loop_reproducibly():
    torch.manual_seed(0)
    lstm = nn.LSTM(5, 6, num_layers=2, dropout=0.5, batch_first=True).to(DT)

    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = lstm

        def forward(self, x):
            return self.lstm(x)[0][:, -1]

    model, x = Seq().eval(), torch.randn(4, 3, 5, dtype=DT)
    state = torch.get_rng_state()
    a = predict(model, x, 5, seed=2)
    assert a.path == "loop"
    assert torch.equal(torch.get_rng_state(), state)  # torch's generator was forked, not consumed
    assert torch.equal(predict(model, x, 5, seed=2).samples, a.samples)
    assert not torch.equal(a.samples[0], a.samples[1])
    assert not lstm.training


@pytest.mark.parametrize("make,shape", [
    (lambda: dl.nn.DropPath(0.3, seed=2), (6, 4)),
    (lambda: dl.nn.GaussianDropout(0.3, seed=2), (6, 4)),
    (lambda: dl.nn.DropBlock2d(0.3, block_size=3, seed=3), (6, 2, 7, 7)),
    (lambda: dl.nn.LockedDropout(0.3, batch_first=True, seed=1), (6, 5, 4)),
    (lambda: dl.nn.Dropout2d(0.3, seed=1), (6, 3, 4, 4)),
    (lambda: dl.nn.DropConnect(nn.Linear(6, 4), 0.3, seed=1), (5, 6)),
    (lambda: dl.nn.AttentionDropout(0.3, seed=1), (5, 2, 4, 4)),
    (lambda: dl.nn.TransformerBlock(8, 2, 16, dropout=0.3, seed=1), (5, 4, 8)),
], ids=["DropPath", "GaussianDropout", "DropBlock2d", "LockedDropout", "Dropout2d", "DropConnect", "AttentionDropout",
        "TransformerBlock"])
def test_variants_sampled_batched_equal_loop(make, shape):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Identity(), make()).to(DT)
    x = torch.randn(*shape, dtype=DT)
    res = predict(model, x, 6, seed=0, max_batch=4 * shape[0])
    assert res.path in ("fx", "hooks")
    torch.testing.assert_close(res.samples, sample_loop(model, x, 6, seed=0), rtol=1e-12, atol=1e-12)
    assert res.samples.std(0).max() > 0


def test_trace_that_computes_something_else_falls_back_to_hooks():
    class FirstOfTuple(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(4, 5, batch_first=True)
            self.drop = dl.nn.Dropout(0.4, seed=2)

        def forward(self, x):
            y = self.lstm(x)
            y = y[0] if isinstance(y, tuple) else y  # fx sees a Proxy here and bakes in the else branch
            return self.drop(y)

    torch.manual_seed(0)
    model, x = FirstOfTuple().to(DT), torch.randn(6, 3, 4, dtype=DT)
    res = predict(model, x, 5, seed=1)
    assert res.path == "hooks"
    torch.testing.assert_close(res.samples, sample_loop(model, x, 5, seed=1), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="computes something else"):
        predict(model, x, 5, seed=1, method="fx")


def test_site_drawing_outside_forward_falls_back_to_loop():
    model = dl.nn.VariationalLSTM(4, 5, batch_first=True, recurrent_dropout=0.3, seed=3).to(DT)

    class Last(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = model

        def forward(self, x):
            return self.rnn(x)[0]

    x = torch.randn(6, 3, 4, dtype=DT)
    res = predict(Last(), x, 4, seed=0)
    assert res.path == "loop"
    assert res.samples.std(0).max() > 0
    assert int(model.recurrent_drop.step) == 0
    with pytest.raises(ValueError, match="consistent=True"):
        predict(Last(), x, 2, seed=0, consistent=True)


def test_bad_arguments():
    model, x = _mlp(), _x()
    with pytest.raises(ValueError, match="samples must be a positive int"):
        predict(model, x, 0)
    with pytest.raises(ValueError, match="max_batch must be a positive int"):
        predict(model, x, 2, max_batch=0)
    with pytest.raises(ValueError, match="method must be one of"):
        predict(model, x, 2, method="magic")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        predict(lambda v: v, x, 2)


@pytest.mark.parametrize("make,shape", [
    (lambda: dl.nn.Dropout(0.3, seed=2), (5, 7)),
    (lambda: dl.nn.Dropout2d(0.3, seed=2), (5, 3, 4, 4)),
    (lambda: dl.nn.AlphaDropout(0.3, seed=2), (5, 7)),
    (lambda: dl.nn.GaussianDropout(0.3, seed=2), (5, 7)),
    (lambda: dl.nn.DropPath(0.3, seed=2), (5, 7)),
    (lambda: dl.nn.DropBlock2d(0.3, block_size=3, seed=3), (5, 2, 7, 7)),
    (lambda: dl.nn.LockedDropout(0.3, batch_first=True, seed=1), (5, 4, 6)),
    (lambda: dl.nn.AttentionDropout(0.3, seed=1), (5, 2, 4, 4)),
], ids=["Dropout", "Dropout2d", "AlphaDropout", "GaussianDropout", "DropPath", "DropBlock2d", "LockedDropout",
        "AttentionDropout"])
def test_consistent_row_equals_the_module_run_on_a_batch_of_one(make, shape):
    """The definition, computed by the module's own forward: row i of sample t = the module, reseeded to
    (mc_seed(its seed, s, 0), step t), run in training on x[i:i+1] alone."""
    from droplab.mc.sampling import mc_seed

    torch.manual_seed(0)
    site = make().to(DT)
    x = torch.randn(*shape, dtype=DT)
    res = predict(nn.Sequential(nn.Identity(), site), x, 4, seed=9, consistent=True, max_batch=20)
    reference = copy.deepcopy(site).train()
    for t in range(4):
        for i in range(shape[0]):
            reference.reseed(mc_seed(int(site.seed), 9, 0), step=t)
            torch.testing.assert_close(res.samples[t, i:i + 1], reference(x[i:i + 1]), rtol=1e-12, atol=1e-12)


def test_tuple_and_mapping_inputs_and_selected_outputs_equal_the_loop():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 4)
            self.drop = nn.Dropout(0.4)

        def forward(self, a, b, scale=1.0):
            h = self.drop(self.fc(a)) * b[:, :1] * scale
            return {"logits": h, "aux": (h.sum(1), h)}

    torch.manual_seed(0)
    model, a, b = Pair().to(DT).eval(), _x(6), _x(6, seed=2)
    by_tuple = predict(model, (a, b), 5, seed=1)
    by_mapping = predict(model, {"a": a, "b": b, "scale": 2.0}, 5, seed=1)
    torch.testing.assert_close(by_mapping.samples, 2.0 * by_tuple.samples)
    torch.testing.assert_close(by_tuple.samples, sample_loop(model, (a, b), 5, seed=1))
    row_sums = predict(model, (a, b), 5, seed=1, output=lambda out: out["aux"][0]).samples
    torch.testing.assert_close(row_sums, by_tuple.samples.sum(-1))
    with pytest.raises(ValueError, match="output='missing' does not name"):
        predict(model, (a, b), 2, output="missing")


def test_no_dropout_site_raises_and_zero_rates_warn():
    with pytest.raises(ValueError, match="no dropout site"):
        predict(nn.Sequential(nn.Linear(5, 2)).to(DT), _x(), 3)
    with pytest.warns(UserWarning, match="p = 0"):
        res = predict(nn.Sequential(nn.Linear(5, 2), nn.Dropout(0.0)).to(DT), _x(), 3, seed=0)
    assert torch.equal(res.samples[0], res.samples[2])


def test_prefix_runs_once_on_the_unreplicated_batch_past_zero_rate_sites():
    """An untraceable model whose only active dropout is in the head: the body sees N rows, never T*N."""

    class Body(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 8)
            self.off = nn.Dropout(0.0)  # a site at p = 0 (as in a BERT with hidden dropout 0): the identity
            self.head = nn.Sequential(nn.Dropout(0.5), nn.Linear(8, 2))

        def forward(self, x, scale):
            h = self.off(torch.relu(self.fc(x)))
            if h.sum() > -1e9:  # not traceable by torch.fx
                h = h * scale
            return TF.dropout(self.head(h), 0.0, self.training)  # a functional call at p = 0 as well

    torch.manual_seed(0)
    model, x = Body().to(DT).eval(), _x(6)
    rows = []
    model.fc.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    res = predict(model, (x, 2.0), 40, seed=0, max_batch=60)
    # the probe (2 rows), the plan check (6 rows lazily, 2 x 6 rows whole as its reference), then the 4 passes
    # of 10 samples each on the 6 unreplicated rows: never 60
    assert res.path == "hooks" and set(rows) == {2, 6, 12} and rows.count(6) == 5
    torch.testing.assert_close(res.samples, sample_loop(model, (x, 2.0), 40, seed=0))
    assert res.samples.std(0).min() > 0


def _intercepted_by_predict(model, x, samples):
    before = dl.graph.routing_counts().intercepted
    predict(model, x, samples=samples, seed=0)
    return dl.graph.routing_counts().intercepted - before


def test_a_model_without_functional_dropout_pays_no_interception_per_sample():
    # the probe looks at the model once; the samples themselves run without a torch-function mode
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
    x = torch.randn(10, 6)
    assert _intercepted_by_predict(model, x, 2) == _intercepted_by_predict(model, x, 40)


def test_functional_dropout_is_still_sampled_with_the_recorder():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 16), nn.Linear(16, 3)

        def forward(self, x):
            return self.b(TF.dropout(self.a(x).relu(), 0.5, self.training))

    model, x = Functional().eval(), torch.randn(10, 6)
    samples = predict(model, x, samples=8, seed=0).samples
    assert not torch.allclose(samples[0], samples[1])  # sampled, not the eval forward
    with torch.no_grad():
        hidden = model.a(x).relu()
    assert (samples[0] - model.b(hidden * 0)).abs().sum() > 0


class _Residual(nn.Module):
    """A value from before the site is used after it: the lazy plan fails its check, the whole plan runs."""

    def __init__(self):
        super().__init__()
        self.a, self.drop, self.b = nn.Linear(6, 16), nn.Dropout(0.5), nn.Linear(16, 16)

    def forward(self, x):  # a mapping input arrives as keyword arguments
        h = self.a(x).relu()
        return self.b(self.drop(h)) + h


@pytest.mark.parametrize("kind", ["fx", "lazy"])
def test_plan_checks_run_once_per_model_and_input_structure(kind):
    model = _mlp() if kind == "fx" else _Residual()
    x = _x(12) if kind == "fx" else {"x": torch.randn(12, 6)}
    calls = []
    (model[0] if kind == "fx" else model.a).register_forward_pre_hook(lambda module, args: calls.append(1))
    one = predict(model, x, 5, seed=3)
    checked = len(calls)
    calls.clear()
    two = predict(model, x, 5, seed=3)
    assert len(calls) < checked  # the probe and the pass, without the checks' forwards
    assert two.path == one.path
    torch.testing.assert_close(two.samples, one.samples, rtol=0, atol=0)
    torch.testing.assert_close(two.samples, sample_loop(model, x, 5, seed=3), rtol=1e-6, atol=1e-6)


def test_a_changed_model_is_checked_again():
    model = _Residual()
    calls = []
    model.a.register_forward_pre_hook(lambda module, args: calls.append(1))
    x = {"x": torch.randn(12, 6)}
    predict(model, x, 5, seed=3)
    checked = len(calls)
    model.b = nn.Linear(16, 16)  # a new module: the verdict no longer applies
    calls.clear()
    predict(model, x, 5, seed=3)
    assert len(calls) == checked
