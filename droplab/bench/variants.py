"""``droplab bench variants``: the dropout variants against the torch-op compositions users write today.

Every row times droplab and the same mask built from torch ops on the same input, round-robin in one
run (medians), so the ratios hold on a busy machine even where absolute times do not. Mask rows also
time the floor, ``x * 2.0`` forward+backward: one read and one write of the tensor each way, which any
mask application pays and which bounds what a faster mask can save. Each row reports the bytes autograd
saves for backward per input element (counted with ``saved_tensors_hooks``) for both sides; droplab's
are integers only (indices, counters): a stored mask or noise fails the row.

At 2^22 fp32 elements (the nearest shape), forward+backward:

* channel dropout, ``droplab.nn.Dropout2d`` vs ``torch.nn.Dropout2d``;
* locked dropout (one mask per sequence), ``droplab.nn.LockedDropout`` against the floor (target: within
  1.2x of ``x * 2.0``) and ``bernoulli`` of a ``(1, N, F)`` mask times the input;
* a generic noise-shaped mask (noise shape ``(N, 1, H, W)``) vs ``bernoulli`` + multiply;
* ``DropBlock2d`` (block 7, p 0.1) on (64, 64, 32, 32) vs timm's ``F.max_pool2d`` DropBlock with the same
  :math:`\\gamma`, and the realized drop-rate statistics of both;
* ``EmbeddingDropout`` on a (32768, 128) table, (32, 64) token ids, vs fastai's embedding dropout (a
  ``(V, 1)`` Bernoulli mask times the weight, then ``F.embedding``);
* ``GaussianDropout`` vs ``x * (1 + sigma * torch.randn_like(x))``;
* ``VariationalLSTM`` (input, recurrent and output dropout 0.25) vs ``torch.nn.LSTM(num_layers=2,
  dropout=0.25)``: time per training step (forward, backward, SGD update), batch 64, 50 steps, hidden 256.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as TF

from . import add_common_options, apply_common_options, emit

SUITE_HELP = "channel/locked/noise-shaped dropout, DropBlock2d, EmbeddingDropout, GaussianDropout and " \
             "VariationalLSTM vs torch-op equivalents"

P = 0.5


@dataclass
class Config:
    """One run's sizes (``--quick`` shrinks everything to a smoke test of seconds)."""

    mask_shapes: dict = field(default_factory=lambda: {
        "channel": (64, 256, 16, 16),   # 2^22: Dropout2d, one value per (n, c)
        "locked": (64, 64, 1024),       # 2^22: (T, N, F), one mask per sequence
        "noise": (16, 64, 64, 64),      # 2^22: noise shape (N, 1, H, W)
        "gaussian": (4096, 1024),       # 2^22: element-wise noise
    })
    dropblock_shape: tuple[int, ...] = (64, 64, 32, 32)
    dropblock_p: float = 0.1
    block_size: int = 7
    embedding: tuple[int, int, int, int] = (32768, 128, 32, 64)  # vocabulary, dim, batch, sequence length
    embedding_p: float = 0.1
    gaussian_p: float = 0.2
    rate_draws: int = 20  # masks drawn per implementation for the drop-rate statistics
    lstm: tuple[int, int, int] = (64, 50, 256)  # batch, sequence length, hidden (= input) size
    lstm_p: float = 0.25
    repeats: int = 7  # timing samples per candidate; medians reported
    min_sample_s: float = 0.05
    threads: int = field(default_factory=torch.get_num_threads)

    @classmethod
    def quick(cls) -> Config:
        return cls(mask_shapes={"channel": (4, 8, 8, 8), "locked": (8, 4, 16), "noise": (2, 4, 8, 8),
                                "gaussian": (16, 32)},
                   dropblock_shape=(2, 4, 12, 10), block_size=3, embedding=(64, 8, 2, 5), rate_draws=3,
                   lstm=(4, 5, 8), repeats=2, min_sample_s=0.001)


# --------------------------------------------------------------------------- torch-op baselines
def torch_locked(x: torch.Tensor, p: float) -> torch.Tensor:
    mask = torch.bernoulli(torch.full((1,) + tuple(x.shape[1:]), 1 - p, dtype=x.dtype)) / (1 - p)
    return x * mask


def torch_noise_shaped(x: torch.Tensor, p: float) -> torch.Tensor:
    mask = torch.bernoulli(torch.full((x.shape[0], 1) + tuple(x.shape[2:]), 1 - p, dtype=x.dtype)) / (1 - p)
    return x * mask


def torch_dropblock2d(x: torch.Tensor, gamma: float, block_size: int) -> torch.Tensor:
    """timm's max-pool DropBlock for the same algorithm (Bernoulli origins where a block fits)."""
    n, c, h, w = x.shape
    bh, bw = min(block_size, h), min(block_size, w)
    origins = torch.bernoulli(torch.full((n, c, h - bh + 1, w - bw + 1), gamma, dtype=x.dtype))
    dropped = TF.max_pool2d(TF.pad(origins, (bw - 1, bw - 1, bh - 1, bh - 1)), (bh, bw), stride=1)
    mask = 1 - dropped
    return x * mask * (mask.numel() / mask.sum().clamp(min=1))


def fastai_embedding_dropout(weight: torch.Tensor, words: torch.Tensor, p: float) -> torch.Tensor:
    """fastai's ``EmbeddingDropout``: a ``(V, 1)`` Bernoulli mask scales the whole weight, then the lookup."""
    mask = weight.new_empty((weight.size(0), 1)).bernoulli_(1 - p) / (1 - p)
    return TF.embedding(words, weight * mask)


def torch_gaussian(x: torch.Tensor, p: float) -> torch.Tensor:
    return x * (1 + math.sqrt(p / (1 - p)) * torch.randn_like(x))


# --------------------------------------------------------------------------- measurements
def saved_mask_bytes(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> int:
    """Bytes of float or bool tensors, other than the input, that autograd saves during one forward of
    ``fn``: a stored mask or noise (integers, such as indices and counters, are not counted)."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if (t.is_floating_point() or t.dtype == torch.bool) and t is not x:
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return total


def _fwd_bwd(op: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad: torch.Tensor) -> Callable[[], object]:
    return lambda: torch.autograd.grad(op(x), x, grad)


def _pair_row(name: str, x: torch.Tensor, droplab_op, torch_op, torch_name: str, config: Config,
              target: float, floor_target: float | None = None) -> dict:
    """droplab vs torch forward+backward on ``x`` (and the floor); ``floor_target`` judges droplab / floor."""
    from .kernel import saved_bytes, time_round_robin

    g = torch.Generator().manual_seed(0)
    x = x.detach().requires_grad_(True)
    grad = torch.randn(droplab_op(x).shape, generator=g)
    # the floor: one element-wise multiply forward and one backward, what any mask application pays
    t = time_round_robin({"droplab": _fwd_bwd(droplab_op, x, grad), "torch": _fwd_bwd(torch_op, x, grad),
                          "floor": _fwd_bwd(lambda v: v * 2.0, x, torch.randn(x.shape, generator=g))},
                         config.repeats, config.min_sample_s)
    speedup = t["torch"] / t["droplab"]
    row = {"case": name, "shape": list(x.shape), "baseline": torch_name, "droplab_ms": 1e3 * t["droplab"],
           "torch_ms": 1e3 * t["torch"], "floor_ms": 1e3 * t["floor"], "speedup": speedup,
           "vs_floor": t["droplab"] / t["floor"],
           "droplab_saved_B": saved_bytes(droplab_op, x) / x.numel(),
           "torch_saved_B": saved_bytes(torch_op, x) / x.numel(),
           "droplab_saved_mask_B": saved_mask_bytes(droplab_op, x) / x.numel()}
    if floor_target is not None:
        row.update(target=f"<= {floor_target:g}x floor", met=row["vs_floor"] <= floor_target)
    else:
        row.update(target=f">= {target:g}x, no mask saved",
                   met=speedup >= target and row["droplab_saved_mask_B"] == 0)
    return row


def _randn(shape) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(1))


def mask_rows(config: Config) -> list[dict]:
    import droplab.functional as F
    import droplab.nn as dnn

    counter = iter(range(10**9))
    shapes = config.mask_shapes
    return [
        _pair_row("channel dropout (Dropout2d)", _randn(shapes["channel"]), dnn.Dropout2d(P, seed=0),
                  torch.nn.Dropout2d(P), "torch.nn.Dropout2d", config, 2.0),
        _pair_row("locked dropout (T, N, F)", _randn(shapes["locked"]), dnn.LockedDropout(P, seed=0),
                  lambda x: torch_locked(x, P), "bernoulli (1, N, F) * x", config, 3.0, floor_target=1.2),
        _pair_row("noise shape (N, 1, H, W)", _randn(shapes["noise"]),
                  lambda x: F.dropout(x, P, seed=0, step=next(counter), noise_shape=(None, 1, None, None)),
                  lambda x: torch_noise_shaped(x, P), "bernoulli (N, 1, H, W) * x", config, 2.0),
        _pair_row(f"GaussianDropout p={config.gaussian_p}", _randn(shapes["gaussian"]),
                  dnn.GaussianDropout(config.gaussian_p, seed=0), lambda x: torch_gaussian(x, config.gaussian_p),
                  "x * (1 + sigma * randn_like(x))", config, 1.5),
    ]


def embedding_row(config: Config) -> dict:
    import droplab.functional as F

    vocab, dim, batch, length = config.embedding
    p = config.embedding_p
    words = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(2))
    counter = iter(range(10**9))
    return _pair_row(f"EmbeddingDropout p={p}, {batch}x{length} ids", _randn((vocab, dim)),
                     lambda w: F.embedding_dropout(words, w, p, seed=0, step=next(counter)),
                     lambda w: fastai_embedding_dropout(w, words, p), "fastai (V, 1) mask * weight", config, 2.0)


def dropblock_row(config: Config) -> dict:
    import droplab.functional as F
    import droplab.nn as dnn
    from droplab.functional.block import dropblock_gamma

    shape, p, b = config.dropblock_shape, config.dropblock_p, config.block_size
    block = (min(b, shape[2]), min(b, shape[3]))
    gamma = dropblock_gamma(p, tuple(shape[2:]), block)
    module = dnn.DropBlock2d(p, b, seed=0)
    row = _pair_row(f"DropBlock2d p={p} block={b}", _randn(shape), module, lambda x: torch_dropblock2d(x, gamma, b),
                    "timm max_pool2d DropBlock (same gamma)", config, 3.0)
    x = torch.ones(shape)
    ours = [1 - F.dropblock_mask(shape, p, b, 2, seed=1, step=s).float().mean().item()
            for s in range(config.rate_draws)]
    torch.manual_seed(1)
    theirs = [(torch_dropblock2d(x, gamma, b) == 0).float().mean().item() for _ in range(config.rate_draws)]
    row["rate"] = {"p": p, "gamma": gamma,
                   "droplab_mean": statistics.fmean(ours), "droplab_sd": statistics.pstdev(ours),
                   "torch_mean": statistics.fmean(theirs), "torch_sd": statistics.pstdev(theirs),
                   "paper_gamma": p / (block[0] * block[1]) * shape[2] * shape[3]
                   / ((shape[2] - block[0] + 1) * (shape[3] - block[1] + 1))}
    return row


def lstm_row(config: Config) -> dict:
    import droplab.nn as dnn

    from .kernel import time_round_robin

    batch, steps, hidden = config.lstm
    p = config.lstm_p
    torch.manual_seed(0)
    x = torch.randn(steps, batch, hidden)
    target = torch.randn(steps, batch, hidden)
    ours = dnn.VariationalLSTM(hidden, hidden, num_layers=2, input_dropout=p, recurrent_dropout=p, output_dropout=p,
                               seed=0)
    theirs = torch.nn.LSTM(hidden, hidden, num_layers=2, dropout=p)

    def train_step(model, optimizer):
        def step():
            optimizer.zero_grad(set_to_none=True)
            loss = TF.mse_loss(model(x)[0], target)
            loss.backward()
            optimizer.step()
        return step

    t = time_round_robin({"droplab": train_step(ours, torch.optim.SGD(ours.parameters(), lr=1e-3)),
                          "torch": train_step(theirs, torch.optim.SGD(theirs.parameters(), lr=1e-3))},
                         config.repeats, config.min_sample_s)
    ratio = t["droplab"] / t["torch"]
    return {"case": f"VariationalLSTM 2 layers, in/rec/out dropout {p}", "shape": [steps, batch, hidden],
            "baseline": f"torch.nn.LSTM(num_layers=2, dropout={p})", "droplab_ms": 1e3 * t["droplab"],
            "torch_ms": 1e3 * t["torch"], "floor_ms": None, "speedup": 1 / ratio, "time_ratio": ratio,
            "vs_floor": None, "droplab_saved_B": None, "torch_saved_B": None, "droplab_saved_mask_B": None,
            "target": "<= 2x the time", "met": ratio <= 2.0}


# --------------------------------------------------------------------------- report
def conditions(config: Config) -> dict:
    from droplab.kernels import backend_for

    from .kernel import Config as KernelConfig
    from .kernel import conditions as kernel_conditions

    c = kernel_conditions(KernelConfig(threads=config.threads, repeats=config.repeats))
    c["mask_backend"] = backend_for(torch.ones(4))
    return c


def render(result: dict) -> str:
    c = result["conditions"]
    lines = [f"droplab bench variants: {c['date']}, torch {c['torch']}, {c['cpu']}, {c['threads']} threads, "
             f"mask backend {c['mask_backend']}, medians of {c['repeats']} round-robin samples",
             "",
             "| case | shape | baseline | droplab ms | torch ms | floor ms | droplab speedup | droplab / floor "
             "| saved B/elem droplab / torch | target | met |",
             "|---|---|---|---:|---:|---:|---:|---:|---|---|---|"]
    for r in result["rows"]:
        shape = "x".join(str(s) for s in r["shape"])
        speed = f"{r['speedup']:.2f}x" if "time_ratio" not in r else f"{r['time_ratio']:.2f}x the time"
        floor = "" if r["floor_ms"] is None else f"{r['floor_ms']:.1f}"
        vs_floor = "" if r["vs_floor"] is None else f"{r['vs_floor']:.2f}x"
        saved = "" if r["droplab_saved_B"] is None else f"{r['droplab_saved_B']:.2f} / {r['torch_saved_B']:.2f}"
        lines.append(f"| {r['case']} | {shape} | {r['baseline']} | {r['droplab_ms']:.1f} | {r['torch_ms']:.1f} | "
                     f"{floor} | {speed} | {vs_floor} | {saved} | {r['target']} | {'yes' if r['met'] else 'NO'} |")
    rate = next(r["rate"] for r in result["rows"] if "rate" in r)
    lines += ["", f"DropBlock2d realized drop rate over {result['config']['rate_draws']} masks (p = {rate['p']}, "
              f"gamma = {rate['gamma']:.6f}; the paper's approximation would give {rate['paper_gamma']:.6f}): "
              f"droplab {rate['droplab_mean']:.4f} +- {rate['droplab_sd']:.4f}, "
              f"max-pool torch {rate['torch_mean']:.4f} +- {rate['torch_sd']:.4f}"]
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    add_common_options(parser, repeats=7, quick_repeats=2)


def run(args: argparse.Namespace) -> int:
    config = Config.quick() if args.quick else Config()
    apply_common_options(args, config)
    rows = mask_rows(config) + [dropblock_row(config), embedding_row(config), lstm_row(config)]
    result = {"config": asdict(config), "conditions": conditions(config), "rows": rows}
    return emit(render(result), result, args.json)
