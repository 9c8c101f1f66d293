"""Hugging Face transformers against the real package: random-init BERT and GPT-2 from tiny configs (never a download).

Their attention dropout is a functional call (``F.dropout`` in eager attention, ``dropout_p`` of
``scaled_dot_product_attention`` in sdpa attention) reading ``self.dropout.p``; these tests check that
droplab finds it, samples it in MC, and draws it after ``convert``.
"""

import pytest
import torch
from conftest import LazyModule
from scipy.stats import binomtest

import droplab as dl
from droplab import functional as DF

transformers = LazyModule("transformers")  # imported by the first test that uses it, not by collection
huggingface = LazyModule("droplab.integrations.huggingface")


def DropoutScheduleCallback(*args, **kwargs):
    return huggingface.DropoutScheduleCallback(*args, **kwargs)

IMPLEMENTATIONS = ("eager", "sdpa")


def _bert(impl, attention=0.2, hidden=0.0):
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32, num_labels=3,
                                     hidden_dropout_prob=hidden, attention_probs_dropout_prob=attention,
                                     attn_implementation=impl)
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config).eval()


def _gpt2(impl, attention=0.2):
    config = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=32,
                                     attn_pdrop=attention, resid_pdrop=0.0, embd_pdrop=0.0, attn_implementation=impl)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()


def _batch(n=4, length=10):
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[0, 7:] = 0  # padding: the attention mask must travel with its rows
    return {"input_ids": torch.randint(0, 64, (n, length), generator=g), "attention_mask": mask}


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_bert_attention_only_dropout_is_found_and_sampled(impl):
    model, x = _bert(impl), _batch()
    found = [s for s in dl.sites(model, x) if "#" in s.name]
    kind = "F.dropout" if impl == "eager" else "F.scaled_dot_product_attention"
    assert [(s.name, s.kind, s.p) for s in found] == [
        (f"bert.encoder.layer.{i}.attention.self#0", kind, 0.2) for i in range(2)]
    assert not any("#" in s.name for s in dl.sites(model))  # without an example: module sites only
    res = dl.mc.predict(model, x, 8, seed=1)
    assert res.samples.shape == (8, 4, 3) and res.samples.std(0).min() > 0
    assert torch.equal(dl.mc.predict(model, x, 8, seed=1).samples, res.samples)
    assert not torch.equal(dl.mc.predict(model, x, 8, seed=2).samples, res.samples)
    torch.testing.assert_close(res.samples, dl.mc.sample_loop(model, x, 8, seed=1), rtol=1e-5, atol=1e-6)
    assert not model.training and not any(m.training for m in model.modules())


def test_bert_eager_and_sdpa_draw_the_same_samples():
    x = _batch()
    eager = dl.mc.predict(_bert("eager"), x, 5, seed=4).samples
    sdpa = dl.mc.predict(_bert("sdpa"), x, 5, seed=4).samples
    torch.testing.assert_close(eager, sdpa, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_bert_consistent_masks_equal_the_loop_and_are_shared_by_rows(impl):
    model, x = _bert(impl, hidden=0.1), _batch()
    fast = dl.mc.predict(model, x, 4, seed=2, consistent=True).samples
    loop = dl.mc.predict(model, x, 4, seed=2, consistent=True, method="loop").samples
    torch.testing.assert_close(fast, loop, rtol=1e-5, atol=1e-6)
    same = {k: v[1:2].repeat(3, 1) for k, v in x.items()}
    rows = dl.mc.predict(model, same, 4, seed=2, consistent=True).samples
    torch.testing.assert_close(rows, rows[:, :1].expand_as(rows))
    torch.testing.assert_close(rows[:, 0], fast[:, 1], rtol=1e-5, atol=1e-6)  # a row's mask: the batch-of-one mask


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_gpt2_attention_dropout_sampled_and_output_selection(impl):
    model, x = _gpt2(impl), _batch()
    res = dl.mc.predict(model, x, 4, seed=0)  # a CausalLMOutput: logits by default
    assert res.samples.shape == (4, 4, 10, 64) and res.samples.std(0).amax() > 0
    last = dl.mc.predict(model, x, 4, seed=0, output=lambda out: out.logits[:, -1])
    torch.testing.assert_close(last.samples, res.samples[:, :, -1])
    torch.testing.assert_close(res.samples, dl.mc.sample_loop(model, x, 4, seed=0), rtol=1e-5, atol=1e-5)


def test_no_site_raises_and_zero_rates_warn():
    model = _bert("sdpa", attention=0.0, hidden=0.0)
    with pytest.warns(UserWarning, match="p = 0"):
        res = dl.mc.predict(model, _batch(), 3, seed=0)
    assert torch.equal(res.samples[0], res.samples[1])
    plain = torch.nn.Sequential(torch.nn.Linear(3, 2))
    with pytest.raises(ValueError, match="no dropout site"):
        dl.mc.predict(plain, torch.randn(2, 3), 3)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_converted_bert_draws_attention_dropout_from_droplab(impl):
    model, x = _bert(impl), _batch()
    keys = set(model.state_dict())
    unseeded = dl.convert(_bert(impl), example_input=x)
    assert set(unseeded.state_dict()) == keys  # an unseeded conversion leaves the state_dict as torch's
    converted = dl.convert(model, seed=7, example_input=x).train()
    attention = converted.bert.encoder.layer[0].attention.self
    assert type(attention.dropout) is dl.nn.Dropout and int(attention.dropout.step) == 0
    first = converted(**x).logits
    assert int(attention.dropout.step) == 1  # HF read .p; droplab drew the mask
    assert not torch.equal(first, converted(**x).logits)
    converted.eval()
    torch.testing.assert_close(converted(**x).logits, _bert(impl)(**x).logits)  # inference untouched
    # the probe in convert used a PreTrainedModel's dummy_inputs when no example is given
    auto = dl.convert(_bert(impl), seed=7).train()
    assert int(auto.bert.encoder.layer[0].attention.self.dropout.step) == 0
    auto(**x)
    assert int(auto.bert.encoder.layer[0].attention.self.dropout.step) == 1


def test_routed_sdpa_applies_droplab_mask_after_softmax_before_values():
    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dropout = torch.nn.Dropout(0.5)

        def forward(self, q, k, v):
            p = self.dropout.p if self.training else 0.0
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 5, 4, generator=g, dtype=torch.float64) for _ in range(3))
    model = dl.convert(Attention(), seed=11, example_input=(q, k, v)).train()
    out = model(q, k, v)
    weights = torch.softmax((q @ k.transpose(-2, -1)) / 2.0 + torch.full((5, 5), float("-inf")).triu(1), -1)
    keep = DF.dropout(torch.ones_like(weights), 0.5, True, seed=11, step=0)  # the mask of step 0, scaled
    torch.testing.assert_close(out, (weights * keep) @ v)
    assert binomtest(int((keep != 0).sum()), keep.numel(), 0.5).pvalue > 1e-3
    model.eval()
    reference = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(model(q, k, v), reference)
    q.requires_grad_(True)
    model.train()(q, k, v).sum().backward()  # backward regenerates the mask
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_trainer_callback_follows_the_trainer_step():
    model = _bert("sdpa")
    callback = DropoutScheduleCallback({"*attention.self.dropout": dl.schedules.linear(0.0, 0.4, steps=4)})
    state, control = transformers.TrainerState(), transformers.TrainerControl()
    args = None
    callback.on_train_begin(args, state, control, model=model)
    assert model.bert.encoder.layer[1].attention.self.dropout.p == 0.0
    for step, expected in [(1, 0.1), (3, 0.3), (9, 0.4)]:
        state.global_step = step
        callback.on_step_begin(args, state, control, model=model)
        assert model.bert.encoder.layer[1].attention.self.dropout.p == pytest.approx(expected)
    assert model.bert.encoder.layer[0].output.dropout.p == 0.0  # other sites untouched
    # a resumed trainer (fresh callback, restored global_step) continues the schedule exactly
    resumed = DropoutScheduleCallback({"*attention.self.dropout": dl.schedules.linear(0.0, 0.4, steps=4)})
    state.global_step = 2
    resumed.on_train_begin(args, state, control, model=model)
    assert resumed.rates["bert.encoder.layer.0.attention.self.dropout"] == pytest.approx(0.2)


def _train_with_callback(tmp_path, trainer_seed):
    """Trainer.train() for two epochs on a tiny random BERT (converted: droplab draws its masks) with the callback;
    returns the rates every training forward used and the logged loss of every step."""
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32, num_labels=3,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = dl.convert(transformers.BertForSequenceClassification(config))
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": torch.randint(0, 64, (10,), generator=g), "attention_mask": torch.ones(10, dtype=torch.long),
             "labels": torch.tensor(i % 3)} for i in range(16)]
    attention = model.bert.encoder.layer[1].attention.self.dropout
    used = []
    model.register_forward_pre_hook(lambda m, args, kwargs: used.append((attention.p, m.dropout.p)) if m.training
                                    else None, with_kwargs=True)
    callback = DropoutScheduleCallback({"*attention*dropout": dl.schedules.linear(0.0, 0.2, steps=4),
                                        "dropout": dl.schedules.constant(0.3)})  # the head's dropout is "dropout"
    args = transformers.TrainingArguments(output_dir=str(tmp_path), num_train_epochs=2, per_device_train_batch_size=4,
                                          logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
                                          seed=trainer_seed, disable_tqdm=True, learning_rate=1e-3)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    trainer.train()
    assert type(attention) is dl.nn.Dropout and attention.seeded is False  # droplab's module, torch's seed mode
    return used, [entry["loss"] for entry in trainer.state.log_history if "loss" in entry], trainer.state.global_step


@pytest.mark.slow
def test_trainer_train_two_epochs_with_the_callback(tmp_path):
    pytest.importorskip("accelerate")  # Trainer needs it: the integrations extra installs it
    used, losses, steps = _train_with_callback(tmp_path / "a", trainer_seed=0)
    assert steps == 8 and len(losses) == 8  # 16 examples, batches of 4, two epochs
    schedule = dl.schedules.linear(0.0, 0.2, steps=4)
    assert used == [(pytest.approx(schedule(t)), 0.3) for t in range(8)]  # step t trains with schedule(t)
    again, losses_again, _ = _train_with_callback(tmp_path / "b", trainer_seed=0)
    assert losses_again == losses and again == used  # the same seed: the same loss curve, step by step
    _, other, _ = _train_with_callback(tmp_path / "c", trainer_seed=1)
    assert other != losses  # another seed draws other masks and another data order


def test_a_pattern_naming_no_site_is_an_error_at_train_begin():
    model = _bert("sdpa")  # BertForSequenceClassification: the head's dropout is "dropout", before "classifier"
    callback = DropoutScheduleCallback({"classifier*": dl.schedules.constant(0.2)})  # the old guide's pattern
    with pytest.raises(ValueError, match=r"pattern\(s\) \['classifier\*'\] match no dropout site; sites are: .*"
                                         r"bert.encoder.layer.1.output.dropout, dropout$"):
        callback.on_train_begin(None, transformers.TrainerState(), transformers.TrainerControl(), model=model)
    head = DropoutScheduleCallback({"dropout": dl.schedules.constant(0.2)})
    head.on_train_begin(None, transformers.TrainerState(), transformers.TrainerControl(), model=model)
    assert head.rates == {"dropout": 0.2} and model.dropout.p == 0.2
