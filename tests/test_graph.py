"""The model-reading layer (droplab.graph): routed calls that honour their arguments, sites that really are dropout,
conversion that keeps identity and seeds, MC keys as documented, MC inputs as the model takes them, and routing
that costs nothing where a call can be replaced directly."""

import copy
import pickle

import pytest
import torch
import torch.nn.functional as TF
from scipy.stats import binomtest
from torch import nn

import droplab as dl
from droplab import functional as DF

DT = torch.float64


def _drop_fraction(y: torch.Tensor) -> tuple[int, int]:
    return int((y == 0).sum()), y.numel()


# ------------------------------------------------------------------- routed calls honour their arguments

class Rated(nn.Module):
    """A functional call whose rate is an attribute the user changes between calls."""

    def __init__(self, rate=0.1):
        super().__init__()
        self.rate = rate

    def forward(self, x):
        return TF.dropout(x, self.rate, self.training)


def test_routed_call_draws_with_the_p_it_passes_at_each_call():
    model = dl.convert(Rated(0.1), seed=3, example_input=torch.ones(2, 8)).train()
    x = torch.ones(40_000)
    for rate in (0.9, 0.1, 0.5):
        model.rate = rate
        dropped, n = _drop_fraction(model(x))
        assert binomtest(dropped, n, rate).pvalue > 1e-3, (rate, dropped / n)
    assert model.dropout_call0.p == 0.5  # the attached module shows the rate last used
    assert [s.p for s in dl.sites(model)] == [0.5]


def test_rate_set_through_droplab_wins_over_the_call():
    model = dl.convert(Rated(0.1), seed=3, example_input=torch.ones(2, 8)).train()
    dl.set_rate(model, 0.5)
    model.rate = 0.9  # the call passes 0.9, the user set 0.5 through droplab
    dropped, n = _drop_fraction(model(torch.ones(40_000)))
    assert binomtest(dropped, n, 0.5).pvalue > 1e-3
    dl.set_rate(model, 0.0)
    assert torch.equal(model(torch.ones(1000)), torch.ones(1000))  # set_rate(0) turns the site off


def test_a_scheduler_owns_the_rate_of_a_routed_call():
    model = dl.convert(Rated(0.9), seed=3, example_input=torch.ones(2, 8)).train()
    scheduler = dl.DropoutScheduler(model, dl.schedules.constant(0.2))
    dropped, n = _drop_fraction(model(torch.ones(40_000)))  # the call passes 0.9; the schedule says 0.2
    assert binomtest(dropped, n, 0.2).pvalue > 1e-3
    assert scheduler.rates() == {"dropout_call0": 0.2}


def test_routed_call_honours_its_training_flag():
    class Mixed(nn.Module):
        def forward(self, x):
            return torch.dropout(TF.dropout(x, 0.3, self.training), 0.2, True)  # the second one: always on

    model = dl.convert(Mixed(), seed=5, example_input=torch.ones(2, 6)).eval()
    x = torch.ones(4, 6, dtype=DT)
    expected = DF.dropout(x, 0.2, True, seed=6, step=0)  # the first call is off in eval; the second draws
    torch.testing.assert_close(model(x), expected)
    assert int(model.dropout_call1.step) == 1 and int(model.dropout_call0.step) == 0
    assert not model.dropout_call1.training  # its own mode is untouched


# ---------------------------------------------------------------------- sites that really are dropout

class HandDropBlock(nn.Module):
    """A DropBlock written by hand: bernoulli_(gamma) draws block centres, a max-pool grows them into blocks."""

    def __init__(self, gamma=0.02, block=3):
        super().__init__()
        self.gamma, self.block = gamma, block

    def forward(self, x):
        if not self.training:
            return x
        centres = torch.empty_like(x).bernoulli_(self.gamma)
        blocks = TF.max_pool2d(centres, self.block, stride=1, padding=self.block // 2)
        keep = 1 - blocks
        return x * keep * keep.numel() / keep.sum()


class BlockNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)
        self.block = HandDropBlock()
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        return self.drop(self.block(self.conv(x)))


def test_bernoulli_that_is_no_keep_mask_is_a_random_op_not_a_site():
    model, x = BlockNet(), torch.randn(2, 2, 12, 12)
    found = dl.sites(model, x)
    assert [(s.name, s.kind, s.library) for s in found if s.is_dropout] == [("drop", "torch.nn.Dropout", "torch")]
    ops = [s for s in found if not s.is_dropout]
    assert [(s.name, s.kind) for s in ops] == [("block#0", "random op, not converted")]
    assert "max_pool2d" in ops[0].note and ops[0].as_row()["p"] is None
    converted = dl.convert(model, seed=0, example_input=x).train()
    assert not hasattr(converted.block, "dropout_call0")  # nothing routed: torch draws the block centres
    ones = torch.ones(64, 2, 12, 12)

    def dropped(m):
        torch.manual_seed(1)
        return (m.block(ones) == 0).float().mean().item()

    before = dropped(converted)
    for rate in (0.2, 0.0):
        dl.set_rate(converted, rate)
        assert dropped(converted) == before < 0.5  # set_rate never touches (nor raises) the block rate


def test_random_ops_are_listed_with_the_reason():
    class Noisy(nn.Module):
        def forward(self, x):
            return x * (torch.rand_like(x) > 0.3) + torch.bernoulli(torch.full_like(x, 0.5))

    found = [s for s in dl.sites(nn.Sequential(Noisy()), torch.ones(3, 4)) if not s.is_dropout]
    assert [(s.name, s.note.split(":")[0]) for s in found] == [("0#random0", "torch.rand_like"),
                                                             ("0#random1", "torch.bernoulli")]
    assert "uniform draw" in found[0].note and "tensor" in found[1].note


# ---------------------------------------------------------------- conversion keeps identity and seeds

class Shared(nn.Module):
    def __init__(self, drop):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.d1 = drop
        self.d2 = self.d1

    def forward(self, x):
        return self.d2(self.fc(self.d1(x)))


@pytest.mark.parametrize("seed", [None, 4])
def test_shared_instance_converts_to_one_droplab_module_and_back(seed):
    model = Shared(nn.Dropout(0.3))
    keys = list(model.state_dict())
    converted = dl.convert(model, seed=seed)
    assert type(converted.d1) is dl.nn.Dropout and converted.d1 is converted.d2
    if seed is None:
        assert list(converted.state_dict()) == keys
    else:
        assert int(converted.d1.seed) == seed and {"d1.seed", "d2.seed"} <= set(converted.state_dict())
    back = dl.convert(converted, to="torch")
    assert type(back.d1) is nn.Dropout and back.d1 is back.d2 and list(back.state_dict()) == keys


def test_seeded_convert_seeds_droplab_modules_already_there_and_refuses_to_overwrite_a_seed():
    model = nn.Sequential(nn.Dropout(0.2), dl.nn.Dropout(0.3), nn.Linear(3, 3), dl.nn.Dropout(0.4))
    converted = dl.convert(copy.deepcopy(model), seed=10)
    assert [int(m.seed) for m in converted if isinstance(m, dl.nn.Dropout)] == [10, 11, 12]
    model[3].reseed(99)
    with pytest.raises(ValueError, match=r"overwrite the seed of droplab module\(s\) \['3'\].*keep_seeds=True"):
        dl.convert(copy.deepcopy(model), seed=10)
    kept = dl.convert(model, seed=10, keep_seeds=True)
    assert [int(m.seed) for m in kept if isinstance(m, dl.nn.Dropout)] == [10, 11, 99]


class Attend(nn.Module):
    """Hugging Face's pattern: a functional F.dropout and an sdpa reading self.dropout.p."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.dropout = nn.Dropout(0.3)

    def forward(self, x):
        h = TF.dropout(self.fc(x), 0.4, self.training)
        q = h.view(h.shape[0], 1, 3, 2)
        p = self.dropout.p if self.training else 0.0
        return TF.scaled_dot_product_attention(q, q, q, dropout_p=p).flatten(1)


def test_mc_on_a_seeded_convert_equals_the_loop_written_from_the_docs():
    """Sample t of MC seed s: a routed call is its droplab module, seed mc_seed(module seed, s, 0), step t."""
    from droplab.mc.sampling import mc_seed

    torch.manual_seed(0)
    x = torch.randn(5, 6, dtype=DT)
    model = dl.convert(Attend().to(DT), seed=20, example_input=x).eval()
    call, attention = model.dropout_call0, model.dropout
    assert (int(call.seed), int(attention.seed)) == (21, 20)
    res = dl.mc.predict(model, x, 4, seed=7)
    for t in range(4):
        h = DF.dropout(model.fc(x), 0.4, True, seed=mc_seed(21, 7, 0), step=t)
        q = h.view(5, 1, 3, 2)
        weights = torch.softmax(q @ q.transpose(-2, -1) / 2 ** 0.5, -1)
        out = DF.dropout(weights, 0.3, True, seed=mc_seed(20, 7, 0), step=t) @ q
        torch.testing.assert_close(res.samples[t], out.flatten(1), rtol=1e-10, atol=1e-12)


def test_mc_keys_hugging_face_attention_by_the_convert_seed():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32, num_labels=3,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.2)
    x = {"input_ids": torch.randint(0, 64, (3, 8), generator=torch.Generator().manual_seed(0))}

    def samples(convert_seed):
        torch.manual_seed(0)
        model = dl.convert(transformers.BertForSequenceClassification(config), seed=convert_seed, example_input=x)
        return dl.mc.predict(model.eval(), x, 4, seed=1).samples

    first = samples(5)
    torch.testing.assert_close(samples(5), first, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(samples(6), first)  # the site's seed keys its MC masks, not its name


def test_mc_draws_a_shared_site_independently_at_each_use():
    model = Shared(dl.nn.Dropout(0.5, seed=1)).eval()
    model.fc = nn.Identity()
    res = dl.mc.predict(model, torch.ones(2, 4000), 3, seed=0)
    both = (res.samples != 0).float().mean().item()
    assert abs(both - 0.25) < 0.02  # two independent masks: kept by both with 0.5 * 0.5


# -------------------------------------------------------------------------- MC takes what the model takes

class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 3)
        self.drop = nn.Dropout(0.5)

    def forward(self, scale, mask, x, note="n"):
        assert scale.dim() == 0 and mask.shape[0] == 1 and isinstance(note, str)
        return self.drop(self.fc(x)) * scale * mask


def test_mc_repeats_only_tensors_whose_first_axis_is_the_batch():
    torch.manual_seed(0)
    model = Scaled().to(DT).eval()
    x = {"scale": torch.tensor(2.0, dtype=DT), "mask": torch.ones(1, 3, dtype=DT), "x": torch.randn(6, 5, dtype=DT),
         "note": "text"}
    res = dl.mc.predict(model, x, 5, seed=3, max_batch=8)  # 0-dim first entry, a one-row mask, a non-tensor
    assert res.samples.shape == (5, 6, 3)
    torch.testing.assert_close(res.samples, dl.mc.sample_loop(model, x, 5, seed=3))
    alone = dl.mc.predict(model, {**x, "scale": torch.tensor(1.0, dtype=DT)}, 5, seed=3, max_batch=8)
    torch.testing.assert_close(res.samples, 2 * alone.samples)


def test_mc_batch_keys_override_the_rule():
    class Table(nn.Module):
        def __init__(self):
            super().__init__()
            self.drop = nn.Dropout(0.5)

        def forward(self, x, table):
            assert table.shape == (4, 3)  # a lookup table with as many rows as the batch: not batched
            return self.drop(x @ table.T)

    model, x, table = Table().eval(), torch.randn(4, 3), torch.randn(4, 3)
    res = dl.mc.predict(model, (x, table), 3, seed=0, batch_keys=[0])
    torch.testing.assert_close(res.samples, dl.mc.sample_loop(model, (x, table), 3, seed=0, batch_keys=[0]))
    with pytest.raises(ValueError, match="batch_keys"):
        dl.mc.predict(model, (x, table), 3, seed=0, batch_keys=[5])


def test_mc_seed_must_be_an_int():
    with pytest.raises(TypeError, match=r"seed must be an int or None, but got 'a' \(str\)"):
        dl.mc.predict(nn.Sequential(nn.Dropout(0.5)), torch.ones(2, 3), 2, seed="a")


# ---------------------------------------------------------------------------- routing costs nothing

def test_sites_after_convert_list_a_routed_call_once():
    x = torch.randn(3, 6)
    model = dl.convert(Attend(), example_input=x)
    found = dl.sites(model, x)
    assert [(s.name, s.kind, s.library) for s in found] == [("dropout", "Dropout", "droplab"),
                                                            ("dropout_call0", "Dropout", "droplab")]


def test_directly_routed_model_intercepts_nothing_and_pickles():
    x = torch.randn(3, 6)
    model = dl.convert(Attend(), seed=1, example_input=x).train()
    assert isinstance(model.__dict__.get("forward"), dl.graph.routing.RoutedForward)
    clone, restored = copy.deepcopy(model), pickle.loads(pickle.dumps(model))
    before = dl.graph.routing_counts()
    out = model(x)
    out.sum().backward()
    after = dl.graph.routing_counts()
    assert after.intercepted == before.intercepted and after.routed == before.routed + 2
    for copied in (clone, restored):  # the copies route too, from the same counters
        assert isinstance(copied.__dict__["forward"], dl.graph.routing.RoutedForward)
        assert copied.__dict__["forward"].module is copied
        torch.testing.assert_close(copied(x), out)
    back = dl.convert(model, to="torch")
    assert "forward" not in back.__dict__ and "_droplab_routes" not in back.__dict__


def test_keep_mask_call_is_intercepted_only_while_a_routed_call_can_happen():
    class Path(nn.Module):
        def forward(self, x):
            if not self.training:
                return x
            keep = x.new_empty(x.shape[0], 1).bernoulli_(0.7)
            return x * keep.div_(0.7)

    x = torch.ones(4, 3)
    model = dl.convert(nn.Sequential(nn.Linear(3, 3), Path()), seed=2, example_input=x)
    routes = model[1].__dict__["_droplab_routes"]
    assert not routes.direct and not routes.always  # a Tensor method: intercepted, in training only
    before = dl.graph.routing_counts().intercepted
    model.eval()(x)
    assert dl.graph.routing_counts().intercepted == before
    model.train()(x)
    assert dl.graph.routing_counts().intercepted > before
    assert int(model[1].dropout_call0.step) == 1  # drawn by droplab


def test_bert_training_step_is_routed_without_interception():
    transformers = pytest.importorskip("transformers")
    for impl in ("eager", "sdpa"):
        config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=64, max_position_embeddings=32, num_labels=3,
                                         attn_implementation=impl)
        torch.manual_seed(0)
        x = {"input_ids": torch.randint(0, 64, (3, 8))}
        model = dl.convert(transformers.BertForSequenceClassification(config), seed=0, example_input=x).train()
        before = dl.graph.routing_counts()
        model(**x, labels=torch.zeros(3, dtype=torch.long)).loss.backward()
        after = dl.graph.routing_counts()
        assert (after.intercepted - before.intercepted, after.routed - before.routed) == (0, 2), impl


def test_inspect_lists_random_ops_apart_from_the_dropout_sites():
    import io

    from droplab.lab.inspection import inspect_model, print_report

    report = inspect_model(BlockNet(), torch.randn(2, 2, 12, 12))
    assert [s["name"] for s in report["sites"]] == ["drop"]
    assert [op["name"] for op in report["random_ops"]] == ["block#0"]
    out = io.StringIO()
    print_report(report, "a test", out, plain=True)
    text = out.getvalue()
    assert "dropout sites (1)" in text and "random ops, not converted (1):" in text and "max_pool2d" in text
