"""``droplab bench kernel``: droplab's dropout kernel against torch's eager dropout, in one run.

Measures, for fp32 inputs at p = 0.5: forward time, forward+backward time (``torch.autograd.grad``,
so no gradient accumulation is timed) and bytes saved for backward per element (counted with
``torch.autograd.graph.saved_tensors_hooks``), for ``torch.nn.functional.dropout`` and
``droplab.functional.dropout``, beside the floor any element-wise op pays (``x.clone()`` forward,
``x * 2.0`` forward+backward). All candidates are timed round-robin in the same run, and every ratio
is formed from medians of that run, so a busy machine slows them alike. Then the per-call cost of the
modules on small tensors (16 and 64x128 elements: torch's ``nn.Dropout`` against droplab's, both seed
modes, where fixed costs dominate), the training overhead
of dropout in a 40-512-512-10 ReLU MLP (epoch time with two dropout(0.5) layers over without), the
warm ``import droplab`` time and the first-call JIT time of the CPU kernel.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from . import add_clock_option, add_common_options, apply_common_options, emit
from . import time_round_robin as shared_round_robin

SUITE_HELP = "forward/backward time and saved bytes of droplab's kernel vs torch's dropout, MLP overhead, JIT"

P = 0.5


@dataclass
class Config:
    """What one run measures (``--quick`` shrinks everything to a smoke test of a few seconds)."""

    sizes: tuple[int, ...] = (2**16, 2**20, 2**24)  # fp32 elements per tensor: cache-, L2/L3- and DRAM-sized
    module_shapes: tuple[tuple[int, ...], ...] = ((16,), (64, 128))  # per-call cost of the modules: fixed costs
    min_sample_s: float = 0.02  # each timing sample loops the op until this long: small sizes need many calls
    repeats: int = 11  # samples per candidate; the median is reported
    mlp_examples: int = 4000  # random examples per epoch (40 features, 10 classes)
    mlp_batch: int = 128
    mlp_epochs: int = 7  # timed epochs per variant (after one warm-up epoch), median reported
    import_repeats: int = 3  # fresh interpreters for the warm import time (the minimum is reported)
    clock: str = "wall"  # or "cpu": this process's CPU time (steadier on a loaded machine, one thread)
    cold_jit: bool = True  # also compile once into an empty cache directory to report the cold JIT cost
    threads: int = field(default_factory=torch.get_num_threads)

    @classmethod
    def quick(cls) -> Config:
        return cls(sizes=(2**10, 2**14), module_shapes=((16,),), min_sample_s=0.002, repeats=3, mlp_examples=256,
                   mlp_epochs=1, import_repeats=1, cold_jit=False)


# --------------------------------------------------------------------------- timing helpers
def time_round_robin(candidates: dict[str, Callable[[], object]], repeats: int,
                     min_sample_s: float, clock: str = "wall") -> dict[str, float]:
    """Median seconds per call of each candidate, sampling them in turn (see :func:`droplab.bench.time_round_robin`)."""
    return shared_round_robin(candidates, repeats, min_sample_s, clock)


def saved_bytes(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves for backward during one forward of ``fn``."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return total


# --------------------------------------------------------------------------- kernel table
def _dropout_ops() -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    import droplab.functional as DF

    state = {"step": 0}

    def droplab_dropout(x: torch.Tensor) -> torch.Tensor:
        state["step"] += 1  # a fresh mask per call, as in training
        return DF.dropout(x, P, True, seed=1234, step=state["step"])

    return {
        "torch F.dropout": lambda x: torch.nn.functional.dropout(x, P, True),
        "droplab dropout": droplab_dropout,
    }


def _rows_for_size(n: int, config: Config, ops: dict[str, Callable[[torch.Tensor], torch.Tensor]]) -> list[dict]:
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(n, generator=gen)
    xg = x.clone().requires_grad_()
    g = torch.randn(n, generator=gen)

    def fwd(op):
        return lambda: op(x)

    def fwd_bwd(op):
        return lambda: torch.autograd.grad(op(xg), xg, g)

    candidates = {
        "clone/fwd": lambda: x.clone(),
        "mul/fwd": fwd(lambda t: t * 2.0),
        "mul/fwdbwd": fwd_bwd(lambda t: t * 2.0),
    }
    for name, op in ops.items():
        candidates[f"{name}/fwd"] = fwd(op)
        candidates[f"{name}/fwdbwd"] = fwd_bwd(op)
    times = time_round_robin(candidates, config.repeats, config.min_sample_s, config.clock)
    floor_fwd, floor_fb = times["clone/fwd"], times["mul/fwdbwd"]
    rows = [
        dict(elements=n, op="x.clone()", fwd_ms=floor_fwd * 1e3, fwdbwd_ms=None, saved_bytes_per_element=None),
        dict(elements=n, op="x * 2.0", fwd_ms=times["mul/fwd"] * 1e3, fwdbwd_ms=floor_fb * 1e3,
             saved_bytes_per_element=saved_bytes(lambda t: t * 2.0, xg) / n),
    ]
    for name, op in ops.items():
        fwd_s, fb_s = times[f"{name}/fwd"], times[f"{name}/fwdbwd"]
        rows.append(dict(elements=n, op=name, fwd_ms=fwd_s * 1e3, fwdbwd_ms=fb_s * 1e3,
                         saved_bytes_per_element=saved_bytes(op, xg) / n,
                         fwd_vs_clone=fwd_s / floor_fwd, fwdbwd_vs_mul=fb_s / floor_fb))
    rows[-1]["speedup_vs_torch"] = times["torch F.dropout/fwdbwd"] / times["droplab dropout/fwdbwd"]
    return rows


def kernel_rows(config: Config) -> list[dict]:
    ops = _dropout_ops()
    return [row for n in config.sizes for row in _rows_for_size(n, config, ops)]


# --------------------------------------------------------------------------- per-call cost of the modules
def module_rows(config: Config) -> list[dict]:
    """``nn.Dropout`` modules per call, where fixed costs dominate: torch's against droplab's (both seed modes).

    Forward in training mode (no gradient wanted) and forward+backward (``torch.autograd.grad``) per call,
    for each shape in ``config.module_shapes``; the ratio is droplab's time over torch's, from one run.
    """
    import droplab.nn as dnn

    rows = []
    for shape in config.module_shapes:
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(shape, generator=gen)
        xg = x.clone().requires_grad_()
        g = torch.randn(shape, generator=gen)
        modules = {"torch nn.Dropout": torch.nn.Dropout(P), "droplab Dropout, seed=None": dnn.Dropout(P),
                   "droplab Dropout, seed=7": dnn.Dropout(P, seed=7)}
        candidates = {}
        for name, m in modules.items():
            candidates[f"{name}/fwd"] = lambda m=m, x=x: m(x)
            candidates[f"{name}/fwdbwd"] = lambda m=m, xg=xg, g=g: torch.autograd.grad(m(xg), xg, g)
        times = time_round_robin(candidates, config.repeats, config.min_sample_s, config.clock)
        base_fwd, base_fb = times["torch nn.Dropout/fwd"], times["torch nn.Dropout/fwdbwd"]
        for name in modules:
            fwd_s, fb_s = times[f"{name}/fwd"], times[f"{name}/fwdbwd"]
            rows.append(dict(shape="x".join(map(str, shape)), module=name, fwd_us=fwd_s * 1e6, fwdbwd_us=fb_s * 1e6,
                             fwd_vs_torch=fwd_s / base_fwd, fwdbwd_vs_torch=fb_s / base_fb))
    return rows


# --------------------------------------------------------------------------- MLP overhead
def _mlp(dropout: Callable[[], torch.nn.Module] | None) -> torch.nn.Module:
    layers: list[torch.nn.Module] = []
    widths = (40, 512, 512)
    for w_in, w_out in zip(widths, widths[1:]):
        layers += [torch.nn.Linear(w_in, w_out), torch.nn.ReLU()]
        if dropout is not None:
            layers.append(dropout())
    layers.append(torch.nn.Linear(512, 10))
    return torch.nn.Sequential(*layers)


def mlp_rows(config: Config) -> list[dict]:
    import droplab.nn as dnn

    gen = torch.Generator().manual_seed(0)
    xs = torch.randn(config.mlp_examples, 40, generator=gen)
    ys = torch.randint(0, 10, (config.mlp_examples,), generator=gen)
    variants = {
        "no dropout": None,
        "torch nn.Dropout(0.5) x2": lambda: torch.nn.Dropout(P),
        "droplab Dropout(0.5) x2, seed=None": lambda: dnn.Dropout(P),
        "droplab Dropout(0.5) x2, seed=7": lambda: dnn.Dropout(P, seed=7),
    }
    setups = {}
    for name, make in variants.items():
        torch.manual_seed(0)
        model = _mlp(make).train()
        setups[name] = (model, torch.optim.Adam(model.parameters(), lr=1e-3))

    def epoch(model, optimizer):
        for start in range(0, config.mlp_examples, config.mlp_batch):
            xb, yb = xs[start:start + config.mlp_batch], ys[start:start + config.mlp_batch]
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    medians = time_round_robin({name: lambda setup=setup: epoch(*setup) for name, setup in setups.items()},
                               config.mlp_epochs, 0.0, config.clock)
    base = medians["no dropout"]
    return [dict(variant=name, epoch_ms=t * 1e3, vs_no_dropout=t / base) for name, t in medians.items()]


# --------------------------------------------------------------------------- import and JIT
_IMPORT_PROBE = (
    "import time; t0 = time.perf_counter(); import torch; t1 = time.perf_counter(); import droplab; "
    "t2 = time.perf_counter(); print(t1 - t0, t2 - t1)"
)
_JIT_PROBE = (
    "import time, torch; import droplab.functional as F; from droplab.kernels import backend_for, cpu; "
    "x = torch.ones(1000); t0 = time.perf_counter(); cpu.masked_scale(x, (1, 0), 0, 0, 0, 2**31, 2.0, (1000,)); "
    "t1 = time.perf_counter(); F.dropout(x, 0.5, seed=1); t2 = time.perf_counter(); print(t1 - t0, t2 - t1, "
    "backend_for(x))"
)


def _probe(code: str, env: dict[str, str] | None = None) -> list[str]:
    """Run ``code`` in a fresh interpreter that imports this same droplab; its stdout, split."""
    import droplab

    root = os.path.dirname(os.path.dirname(os.path.abspath(droplab.__file__)))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": path, **(env or {})})
    return result.stdout.split()


def import_and_jit(config: Config) -> dict:
    if config.import_repeats > 1:
        _probe(_IMPORT_PROBE)  # the first interpreter warms the OS file cache
    probes = [_probe(_IMPORT_PROBE) for _ in range(config.import_repeats)]
    out = {
        "import_torch_s": min(float(p[0]) for p in probes),
        "import_droplab_s": min(float(p[1]) for p in probes),  # on top of torch, which droplab needs
    }
    out["import_total_s"] = out["import_torch_s"] + out["import_droplab_s"]
    from droplab.kernels import cpu

    if cpu.available():
        cpu.warmup()  # populates the disk cache if it was empty, so the probe below measures a cache hit
    warm = _probe(_JIT_PROBE)
    out["first_call_cached_s"] = float(warm[0])  # numba import, disk-cache load, thread pool start
    out["first_op_call_s"] = float(warm[1])  # the op's own first call: autograd and dispatch set-up
    out["backend"] = warm[2]
    if config.cold_jit:
        with tempfile.TemporaryDirectory() as cache_dir:
            cold = _probe(_JIT_PROBE, {"NUMBA_CACHE_DIR": cache_dir})
        out["first_call_cold_s"] = float(cold[0])
    return out


# --------------------------------------------------------------------------- report
def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _size(n: int) -> str:
    exp = n.bit_length() - 1
    return f"2^{exp}" if n == 1 << exp else str(n)


def conditions(config: Config) -> dict:
    import numba

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "numba": numba.__version__,
        "python": platform.python_version(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": config.threads,
        "repeats": config.repeats,
        "clock": getattr(config, "clock", "wall"),
        # other jobs on the machine move absolute times several-fold; the ratios are formed within one run
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def render(result: dict) -> str:
    c = result["conditions"]
    lines = [
        f"droplab bench kernel, {c['date']}: {c['cpu']}, {c['cores']} cores, {c['threads']} threads, "
        f"torch {c['torch']}, numba {c['numba']}, Python {c['python']}; fp32, p = {P}; "
        f"median of {c['repeats']} round-robin samples, {c.get('clock', 'wall')} clock"
        + (f"; 1-min load average at start {c['load_average_1min']:.1f}" if c.get("load_average_1min") is not None
           else ""),
        "",
        "| elements | op | forward ms | fwd+bwd ms | saved B/elem | fwd / clone | fwd+bwd / (x*2.0) "
        "| torch / droplab |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["kernel"]:
        lines.append(
            f"| {_size(r['elements'])} | {r['op']} | {_fmt(r['fwd_ms'], '.3f')} | {_fmt(r['fwdbwd_ms'], '.3f')} | "
            f"{_fmt(r['saved_bytes_per_element'], '.2f')} | {_fmt(r.get('fwd_vs_clone'), '.2f')} | "
            f"{_fmt(r.get('fwdbwd_vs_mul'), '.2f')} | {_fmt(r.get('speedup_vs_torch'), '.1f')} |")
    lines += ["", "Dropout modules per call (training mode, p = 0.5): microseconds and ratio to torch's nn.Dropout",
              "", "| shape | module | forward us | fwd+bwd us | forward / torch | fwd+bwd / torch |",
              "|---|---|---:|---:|---:|---:|"]
    for r in result["modules"]:
        lines.append(f"| {r['shape']} | {r['module']} | {r['fwd_us']:.1f} | {r['fwdbwd_us']:.1f} | "
                     f"{r['fwd_vs_torch']:.2f} | {r['fwdbwd_vs_torch']:.2f} |")
    lines += ["", f"MLP 40-512-512-10 (ReLU), {result['mlp_config']}, Adam: epoch time", "",
              "| variant | epoch ms | vs no dropout |", "|---|---:|---:|"]
    for r in result["mlp"]:
        lines.append(f"| {r['variant']} | {r['epoch_ms']:.1f} | {r['vs_no_dropout']:.2f} |")
    s = result["startup"]
    cold = f"{s['first_call_cold_s']:.2f} s compiling into an empty cache, " if "first_call_cold_s" in s else ""
    lines += ["", f"`import droplab` (warm): {s['import_total_s']:.2f} s, of which torch {s['import_torch_s']:.2f} s "
              f"and droplab {s['import_droplab_s']:.2f} s. First CPU-kernel call in a fresh process: "
              f"{cold}{s['first_call_cached_s']:.2f} s from the disk cache (numba import included); the first "
              f"`droplab.functional.dropout` call after it (backend {s['backend']}): {s['first_op_call_s']:.3f} s."]
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    add_common_options(parser, repeats=11, quick_repeats=3)
    add_clock_option(parser)


def run(args: argparse.Namespace) -> int:
    config = Config.quick() if args.quick else Config()
    apply_common_options(args, config)
    result = {
        "config": asdict(config),
        "conditions": conditions(config),
        "startup": import_and_jit(config),
        "kernel": kernel_rows(config),
        "modules": module_rows(config),
        "mlp": mlp_rows(config),
        "mlp_config": f"{config.mlp_examples} random examples, batch {config.mlp_batch}, "
                      f"median of {config.mlp_epochs} epochs",
    }
    return emit(render(result), result, args.json)
