"""``droplab bench models``: dropout inside real models, where its fixed costs show.

For each model, four variants with the same weights, timed round-robin in one process (so load on the
machine slows them alike; read the ratios, not the milliseconds):

* ``no dropout``: every dropout site at p = 0 (the architecture without dropout);
* ``torch``: the model as built, torch's dropout modules and functional calls;
* ``droplab, seed=None`` and ``droplab, seed=0``: :func:`droplab.convert` of it in both seed modes (modules
  swapped, functional sites such as Hugging Face attention dropout routed to droplab).

Per variant: one training step (forward, loss, backward, AdamW step) and one inference forward (eval,
``no_grad``), and the routing of one training step (:func:`droplab.graph.routing_counts`): the torch
calls droplab's call recorders intercepted (the price of routing functional dropout sites where they
cannot be replaced directly) and the dropout calls routed to droplab. Then Monte-Carlo dropout on
each model: T stochastic forwards of the batch as a ``model.train()`` loop (torch's, droplab's converted
model) and :func:`droplab.mc.predict`, against the batched-forward floor: the same T x batch rows in one
eval-mode forward of the model without dropout.

Models: the lab's MLP (40-512-512-10, two dropout 0.5, batch 128); a small CNN with ``Dropout2d`` and
DropBlock (torch's side: timm's max-pool DropBlock); Hugging Face BERT from a random config at hidden 32
(2 layers) and hidden 256 (4 layers, sequence 128, batch 8), each with eager and sdpa attention; GPT-2
from a small random config. transformers is optional: without it the HF rows are left out.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from . import add_clock_option, add_common_options, apply_common_options, emit, time_round_robin

SUITE_HELP = "training step, inference and MC dropout of real models: no dropout, torch's and droplab's dropout"

MODELS = ("mlp", "cnn", "bert-32-eager", "bert-32-sdpa", "bert-256-eager", "bert-256-sdpa", "gpt2")
VARIANTS = ("no dropout", "torch", "droplab, seed=None", "droplab, seed=0")


@dataclass
class Config:
    """What one run measures (``--quick``: tiny models, few repeats, a smoke test)."""

    models: tuple[str, ...] = MODELS
    repeats: int = 5  # round-robin samples per candidate; the median is reported
    min_sample_s: float = 0.05  # each sample repeats the step until this long
    mc_samples: int = 10  # T of the MC rows
    mc_repeats: int = 3
    clock: str = "wall"  # or "cpu": this process's CPU time (a loaded machine, one thread)
    quick: bool = False
    threads: int = field(default_factory=torch.get_num_threads)

    @classmethod
    def quick_config(cls) -> Config:
        return cls(models=("mlp", "cnn", "bert-32-eager", "gpt2"), repeats=2, min_sample_s=0.002, mc_samples=3,
                   mc_repeats=1, quick=True)


@dataclass
class Case:
    """A model: ``build()`` (torch's dropout, seeded init), inputs for training and for MC, and its loss."""

    name: str
    description: str
    build: Callable[[], nn.Module]
    train_inputs: Callable[[], object]
    loss: Callable[[nn.Module, object], torch.Tensor]
    mc_inputs: Callable[[], object]
    output: Callable[[object], torch.Tensor] = lambda out: out  # noqa: E731 - the tensor a forward returns
    convert: Callable[[nn.Module, int | None], nn.Module] | None = None  # default: droplab.convert


def _call(model: nn.Module, inputs):
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


# --------------------------------------------------------------------------- the models
def _mlp_case(quick: bool) -> Case:
    from ..lab.models import mlp

    batch = 16 if quick else 128

    def build():
        torch.manual_seed(0)
        import droplab as dl

        return dl.convert(mlp((40,), 10, dropout=0.5), to="torch")  # the lab's MLP with torch's dropout

    def data():
        g = torch.Generator().manual_seed(1)
        return torch.randn(batch, 40, generator=g), torch.randint(0, 10, (batch,), generator=g)

    return Case("mlp", f"the lab's MLP 40-512-512-10, two dropout 0.5, batch {batch}", build, data,
                lambda m, d: nn.functional.cross_entropy(m(d[0]), d[1]), lambda: data()[0])


class TorchDropBlock2d(nn.Module):
    """timm's max-pool DropBlock (Bernoulli block origins where a block fits, grown by max-pooling)."""

    def __init__(self, p: float, block_size: int) -> None:
        super().__init__()
        self.p, self.block_size = p, block_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        from ..functional.block import dropblock_gamma
        from .variants import torch_dropblock2d

        block = (min(self.block_size, x.shape[2]), min(self.block_size, x.shape[3]))
        return torch_dropblock2d(x, dropblock_gamma(self.p, tuple(x.shape[2:]), block), self.block_size)


def _cnn(kind: str, seed: int | None = None) -> nn.Module:
    import droplab.nn as dnn

    if kind == "torch":
        drop2d, dropblock = nn.Dropout2d(0.1), TorchDropBlock2d(0.1, 3)
    else:
        drop2d, dropblock = dnn.Dropout2d(0.1, seed=seed), dnn.DropBlock2d(0.1, 3, seed=None if seed is None
                                                                            else seed + 1)
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), drop2d, nn.Conv2d(32, 64, 3, padding=1),
                         nn.ReLU(), dropblock, nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 16 * 16, 10))


def _cnn_case(quick: bool) -> Case:
    batch = 4 if quick else 32

    def data():
        g = torch.Generator().manual_seed(1)
        return torch.randn(batch, 3, 32, 32, generator=g), torch.randint(0, 10, (batch,), generator=g)

    def convert(model: nn.Module, seed: int | None) -> nn.Module:
        converted = _cnn("droplab", seed)
        converted.load_state_dict(model.state_dict(), strict=False)
        return converted

    return Case("cnn", f"CNN 3-32-64 conv, Dropout2d 0.1 and DropBlock 0.1 (block 3), 32x32, batch {batch}",
                lambda: _cnn("torch"), data, lambda m, d: nn.functional.cross_entropy(m(d[0]), d[1]),
                lambda: data()[0], convert=convert)


def _bert_case(hidden: int, layers: int, length: int, batch: int, attention: str) -> Case:
    import transformers

    def build():
        config = transformers.BertConfig(vocab_size=1000, hidden_size=hidden, num_hidden_layers=layers,
                                         num_attention_heads=4, intermediate_size=4 * hidden,
                                         max_position_embeddings=max(length, 64), num_labels=4,
                                         hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
        config._attn_implementation = attention
        torch.manual_seed(0)
        return transformers.BertForSequenceClassification(config)

    def data(labels: bool = True):
        g = torch.Generator().manual_seed(1)
        inputs = {"input_ids": torch.randint(0, 1000, (batch, length), generator=g),
                  "attention_mask": torch.ones(batch, length, dtype=torch.long)}
        if labels:
            inputs["labels"] = torch.randint(0, 4, (batch,), generator=g)
        return inputs

    return Case(f"bert-{hidden}-{attention}", f"BERT hidden {hidden}, {layers} layers, sequence {length}, batch "
                f"{batch}, {attention} attention", build, data, lambda m, d: m(**d).loss, lambda: data(False),
                output=lambda out: out.logits)


def _gpt2_case(quick: bool) -> Case:
    import transformers

    length, batch = (16, 2) if quick else (64, 8)

    def build():
        config = transformers.GPT2Config(vocab_size=1000, n_positions=128, n_embd=128, n_layer=2, n_head=4,
                                         resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1, bos_token_id=0,
                                         eos_token_id=0, loss_type="ForCausalLM")
        torch.manual_seed(0)
        return transformers.GPT2LMHeadModel(config)

    def data(labels: bool = True):
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(0, 1000, (batch, length), generator=g)
        return {"input_ids": ids, "labels": ids} if labels else {"input_ids": ids}

    return Case("gpt2", f"GPT-2 128 wide, 2 layers, 4 heads, sequence {length}, batch {batch}", build, data,
                lambda m, d: m(**d).loss, lambda: data(False), output=lambda out: out.logits)


def make_case(name: str, quick: bool) -> Case:
    if name == "mlp":
        return _mlp_case(quick)
    if name == "cnn":
        return _cnn_case(quick)
    if name == "gpt2":
        return _gpt2_case(quick)
    if name.startswith("bert-"):
        _, hidden, attention = name.split("-")
        if hidden == "32":
            return _bert_case(32, 2, 16 if quick else 32, 2 if quick else 8, attention)
        return _bert_case(256, 4, 16 if quick else 128, 2 if quick else 8, attention)
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


# --------------------------------------------------------------------------- variants and timing
def without_dropout(model: nn.Module) -> nn.Module:
    """A copy whose every torch dropout site is at p = 0 (modules, and the rates attention reads from them)."""
    plain = copy.deepcopy(model)
    for module in plain.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) or isinstance(module, TorchDropBlock2d):
            module.p = 0.0
    return plain


def variants(case: Case) -> dict[str, nn.Module]:
    import droplab as dl

    model = case.build()
    convert = case.convert or (lambda m, seed: dl.convert(m, seed=seed))
    return {"no dropout": without_dropout(model), "torch": model,
            "droplab, seed=None": convert(copy.deepcopy(model), None),
            "droplab, seed=0": convert(copy.deepcopy(model), 0)}


def routing(fn: Callable[[], object]) -> tuple[int, int]:
    """``(intercepted, routed)`` while ``fn`` ran: torch calls droplab's call recorders intercepted (each a
    Python-level dispatch) and dropout calls routed to droplab (:func:`droplab.graph.routing_counts`)."""
    from ..graph import routing_counts

    before = routing_counts()
    fn()
    after = routing_counts()
    return after.intercepted - before.intercepted, after.routed - before.routed


def step_rows(case: Case, models: dict[str, nn.Module], config: Config) -> list[dict]:
    """Training-step and inference time of each variant, round-robin, with the routing of one step."""
    data = case.train_inputs()
    mc_data = case.mc_inputs()
    candidates, steps, counts = {}, {}, {}
    for name, model in models.items():
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        evaluated = copy.deepcopy(model).eval()

        def step(model=model, optimizer=optimizer):
            optimizer.zero_grad(set_to_none=True)
            case.loss(model, data).backward()
            optimizer.step()

        def infer(model=evaluated):
            with torch.no_grad():
                return _call(model, mc_data)

        steps[name] = step
        candidates[f"{name}/train"], candidates[f"{name}/infer"] = step, infer
    times = time_round_robin(candidates, config.repeats, config.min_sample_s, config.clock)
    for name, step in steps.items():
        counts[name] = routing(step)
    base_train, base_infer = times["no dropout/train"], times["no dropout/infer"]
    torch_train = times["torch/train"]
    return [dict(model=case.name, variant=name, train_ms=times[f"{name}/train"] * 1e3,
                 train_vs_none=times[f"{name}/train"] / base_train, train_vs_torch=times[f"{name}/train"] / torch_train,
                 infer_ms=times[f"{name}/infer"] * 1e3, infer_vs_none=times[f"{name}/infer"] / base_infer,
                 interceptions_per_step=counts[name][0], routed_per_step=counts[name][1]) for name in models]


def _repeated(inputs, times: int):
    if isinstance(inputs, dict):
        return {k: v.repeat(times, *([1] * (v.dim() - 1))) for k, v in inputs.items()}
    return inputs.repeat(times, *([1] * (inputs.dim() - 1)))


def mc_rows(case: Case, models: dict[str, nn.Module], config: Config) -> list[dict]:
    """MC dropout: T forwards as a train-mode loop (torch, droplab), droplab.mc.predict, the batched floor."""
    import droplab as dl

    data, samples = case.mc_inputs(), config.mc_samples
    floor_model = copy.deepcopy(models["no dropout"]).eval()
    floor_data = _repeated(data, samples)

    def loop(model):
        def run():
            model.train()
            with torch.no_grad():
                return torch.stack([case.output(_call(model, data)) for _ in range(samples)])
        return run

    def predict():
        return dl.mc.predict(models["torch"], data, samples, seed=0).samples

    def floor():
        with torch.no_grad():
            return case.output(_call(floor_model, floor_data))

    approaches = {"torch loop": loop(models["torch"]), "droplab loop, seed=None": loop(models["droplab, seed=None"]),
                  "droplab mc.predict": predict, "batched floor": floor}
    counts = {"droplab mc.predict": routing(predict)[0]}
    medians = time_round_robin(approaches, config.mc_repeats, 0.0, config.clock)
    for model in models.values():
        model.train()
    return [dict(model=case.name, approach=name, samples=samples, ms=t * 1e3, vs_floor=t / medians["batched floor"],
                 vs_torch_loop=t / medians["torch loop"], interceptions=counts.get(name))
            for name, t in medians.items()]


# --------------------------------------------------------------------------- report
def conditions(config: Config) -> dict:
    from .kernel import conditions as kernel_conditions

    found = kernel_conditions(config)
    try:
        import transformers

        found["transformers"] = transformers.__version__
    except ImportError:
        found["transformers"] = None
    return found


def render(result: dict) -> str:
    c = result["conditions"]
    lines = [f"droplab bench models, {c['date']}: {c['cpu']}, {c['cores']} cores, {c['threads']} threads, torch "
             f"{c['torch']}, transformers {c['transformers']}, Python {c['python']}; medians of {c['repeats']} "
             f"round-robin samples, {result['config']['clock']} clock; 1-min load average "
             f"{c['load_average_1min']:.1f} at start, {result['load_average_end']:.1f} at end", ""]
    lines += ["| model | variant | train step ms | vs no dropout | vs torch | inference ms | vs no dropout "
              "| interceptions / step | routed / step |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["steps"]:
        lines.append(f"| {r['model']} | {r['variant']} | {r['train_ms']:.2f} | {r['train_vs_none']:.2f} | "
                     f"{r['train_vs_torch']:.2f} | {r['infer_ms']:.2f} | {r['infer_vs_none']:.2f} | "
                     f"{r['interceptions_per_step']} | {r['routed_per_step']} |")
    lines += ["", f"MC dropout, T = {result['config']['mc_samples']} samples of the batch, median of "
              f"{result['config']['mc_repeats']}; the floor is one eval-mode forward of T x batch rows without "
              "dropout", "", "| model | approach | ms | vs floor | vs torch loop | interceptions |",
              "|---|---|---:|---:|---:|---:|"]
    for r in result["mc"]:
        count = "" if r["interceptions"] is None else r["interceptions"]
        lines.append(f"| {r['model']} | {r['approach']} | {r['ms']:.1f} | {r['vs_floor']:.2f} | "
                     f"{r['vs_torch_loop']:.2f} | {count} |")
    lines += ["", "Models: " + "; ".join(f"{name}: {text}" for name, text in result["models"].items())]
    if result.get("skipped"):
        lines.append("Left out: " + "; ".join(result["skipped"]))
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    add_common_options(parser, repeats=5, quick_repeats=2)
    parser.add_argument("--models", nargs="+", choices=MODELS, metavar="MODEL",
                        help=f"models to run (default: all of {', '.join(MODELS)})")
    parser.add_argument("--samples", type=int, help="MC samples T (default 10, quick 3)")
    add_clock_option(parser)


def run(args: argparse.Namespace) -> int:
    config = Config.quick_config() if args.quick else Config()
    apply_common_options(args, config)
    if args.models:
        config.models = tuple(args.models)
    if args.samples is not None:
        config.mc_samples = args.samples
    result = {"config": asdict(config), "conditions": conditions(config), "steps": [], "mc": [], "models": {},
              "skipped": []}
    for name in config.models:
        try:
            case = make_case(name, config.quick)
        except ImportError as error:  # transformers missing: the HF rows are left out, and said so
            result["skipped"].append(f"{name} ({error.name} is not installed)")
            continue
        models = variants(case)
        result["models"][name] = case.description
        result["steps"] += step_rows(case, models, config)
        result["mc"] += mc_rows(case, models, config)
    result["load_average_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    result["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    result["machine"] = platform.machine()
    return emit(render(result), result, args.json)
