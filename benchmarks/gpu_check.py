"""GPU check for droplab's Triton backend: correctness first, then speed and memory against torch.

Run on a machine with one CUDA GPU and Triton (``pip install "droplab[gpu]"``)::

    python benchmarks/gpu_check.py            # about a minute on an H100
    python benchmarks/gpu_check.py --no-large # skip the > 2**31-element (int64 indexing) checks

Correctness (any failure makes the exit status 1):

* bit-equality of GPU outputs, input gradients and keep masks with droplab's CPU path for the same
  seed and step, over odd sizes, noise shapes (element, channel, per-example, generic), dtypes and
  rates; then the tail of tensors past 2**31 elements against the spec's words at that offset;
* gradcheck in float64 on CUDA through the Triton backend;
* ``torch.compile(fullgraph=True)`` of modules using droplab dropout: the same masks as eager;
* the variants (DropBlock, embedding dropout, Gaussian and Concrete noise, forward and gradient) and the
  Box-Muller and logistic noise kernels: the CPU path's bits.

Then a table: forward and forward+backward time (median, L2 flushed, eager, launch overhead
included) and achieved GB/s of ``torch.nn.functional.dropout`` and droplab at 2**24 and 2**28
elements in float32 and bfloat16; the device's copy bandwidth (``x.clone()``); bytes saved for
backward per element (``saved_tensors_hooks``); peak memory of one training step of a 4-layer MLP of
width 8192, torch dropout vs droplab. GB/s counts the bytes dropout must move (read x, write y; and
again in backward), not torch's extra mask traffic.

Exit status: 0 when every correctness check passes, 1 otherwise, 2 without a CUDA device or Triton.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import droplab as dl  # noqa: E402
from droplab import kernels  # noqa: E402
from droplab.rng import drop_threshold, random_words  # noqa: E402

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
RATES = (0.0, 0.1, 0.5, 1.0)
# (shape, noise_shape): element-wise odd sizes, channel, per-example, generic and batch-shared masks
CASES: tuple[tuple[tuple[int, ...], tuple | None], ...] = (
    ((1,), None),
    ((3,), None),
    ((1023,), None),
    ((4097,), None),
    ((5, 7, 9), None),
    (((1 << 20) + 3,), None),
    ((8, 16, 9, 11), (None, None, 1, 1)),
    ((6, 5, 7), (None, 1, 1)),
    ((4, 33, 65), (None, 1, None)),
    ((37, 129), (1, None)),
    ((3, 1, 5, 4, 2), (None, 1, 1, None, None)),
)
SEEDS = ((7, 0), (2**64 - 1, 2**32 + 3), (-123456789, 17))


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Exact equality, telling -0.0 from 0.0 and comparing nan payloads as bits."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.is_floating_point:
        ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        a, b = a.contiguous().view(ints), b.contiguous().view(ints)
    return torch.equal(a.cpu(), b.cpu())


def _forced(backend: str | None):
    return kernels.use_backend(backend) if backend is not None else contextlib.nullcontext()


def _run_dropout(x: torch.Tensor, p: float, seed: int, step: int, noise_shape, backend: str | None):
    """Output and input gradient of droplab dropout on ``x`` under ``backend`` (None: automatic)."""
    with _forced(backend):
        x = x.detach().clone().requires_grad_(True)
        y = dl.functional.dropout(x, p, True, seed=seed, step=step, replica=1, stream=2, noise_shape=noise_shape)
        g = torch.linspace(-3, 3, y.numel(), dtype=torch.float64).reshape(y.shape).to(y.dtype).to(y.device)
        (grad,) = torch.autograd.grad(y, x, g)
        return y.detach(), grad, kernels.backend_for(x)


def check_bit_equality(device: str, backend: str | None = None, cases=CASES, dtypes=DTYPES, rates=RATES,
                       seeds=SEEDS, keep_sizes=(1, 3, 1023, 4097, (1 << 20) + 5),
                       expect_backend: str | None = "triton") -> list[str]:
    """Compare droplab on ``device`` (under ``backend``) with droplab's CPU path; return the failures."""
    failures = []
    gen = torch.Generator().manual_seed(0)
    for shape, noise_shape in cases:
        for dtype in dtypes:
            x_cpu = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
            for p in rates:
                for seed, step in seeds:
                    y_cpu, g_cpu, _ = _run_dropout(x_cpu, p, seed, step, noise_shape, None)
                    y_dev, g_dev, used = _run_dropout(x_cpu.to(device), p, seed, step, noise_shape, backend)
                    label = f"shape={shape} noise_shape={noise_shape} {dtype} p={p} seed={seed} step={step}"
                    if expect_backend is not None and used != expect_backend:
                        failures.append(f"{label}: served by {used!r}, expected {expect_backend!r}")
                    if not same_bits(y_dev, y_cpu):
                        failures.append(f"{label}: forward differs in {int((y_dev.cpu() != y_cpu).sum())} elements")
                    if not same_bits(g_dev, g_cpu):
                        failures.append(f"{label}: backward differs in {int((g_dev.cpu() != g_cpu).sum())} elements")
    for numel in keep_sizes:
        for p in rates:
            key, t = (0x89ABCDEF, 0x01234567), drop_threshold(p)
            with _forced(backend):
                dev = kernels.keep_mask(numel, key, 9, 1, 3, t, device)
            cpu = kernels.keep_mask(numel, key, 9, 1, 3, t, "cpu")
            if not torch.equal(dev.cpu(), cpu):
                failures.append(f"keep_mask numel={numel} p={p}: differs in {int((dev.cpu() != cpu).sum())} elements")
    x_cpu = torch.randn(64, 48, generator=gen)
    for view in (x_cpu.t(), x_cpu[::3, 1::2]):  # non-contiguous: the mask follows the logical shape
        y_cpu, _, _ = _run_dropout(view, 0.3, 5, 1, None, None)
        y_dev, _, _ = _run_dropout(view.to(device), 0.3, 5, 1, None, backend)
        if not same_bits(y_dev, y_cpu):
            failures.append(f"non-contiguous view {tuple(view.stride())}: forward differs")
    return failures


def check_large(device: str, start: int = 2**31, backend: str | None = None) -> list[str]:
    """Past ``start`` = 2**31 elements (int64 offsets): the tails against the spec's words at that offset."""
    with _forced(backend):
        return _check_large(device, start)


def _check_large(device: str, start: int) -> list[str]:
    failures = []
    seed, step, p = 2**40 + 11, 3, 0.25
    key, t = (seed & 0xFFFFFFFF, seed >> 32), drop_threshold(p)
    numel = start + 4101
    keep = kernels.keep_mask(numel, key, step, 0, 0, t, device)
    tail = 4101 + 64
    want = random_words(tail, seed, step, offset=numel - tail) >= t
    if not torch.equal(keep[-tail:].cpu(), want):
        failures.append("keep_mask past 2**31: tail differs from the spec")
    del keep
    x = torch.ones(numel, dtype=torch.float16, device=device)
    y = dl.functional.dropout(x, p, seed=seed, step=step)
    expect = torch.where(want, torch.tensor(1 / (1 - p), dtype=torch.float32), 0.0).to(torch.float16)
    if not same_bits(y[-tail:], expect):
        failures.append("element-wise masked_scale past 2**31: tail differs from the spec")
    del x, y
    rows, cols = start // 1024 + 3, 1024  # a mask of shape (rows, 1) over more than `start` elements
    x = torch.ones(rows, cols, dtype=torch.float16, device=device)
    y = dl.functional.dropout(x, p, seed=seed, step=step, noise_shape=(None, 1))
    row_keep = random_words(8, seed, step, offset=rows - 8) >= t
    expect = torch.where(row_keep[:, None], torch.tensor(1 / (1 - p)), 0.0).to(torch.float16).expand(8, cols)
    if not same_bits(y[-8:], expect):
        failures.append("noise-shaped masked_scale past 2**31: last rows differ from the spec")
    return failures


def check_gradcheck(device: str, backend: str | None = None,
                    cases=(((4, 5), None), ((3, 4, 2, 2), (None, None, 1, 1)))) -> list[str]:
    failures = []
    gen = torch.Generator().manual_seed(1)
    for shape, noise_shape in cases:
        x = torch.randn(shape, generator=gen, dtype=torch.float64).to(device).requires_grad_(True)

        def fn(x, noise_shape=noise_shape):
            return dl.functional.dropout(x, 0.3, True, seed=11, step=2, noise_shape=noise_shape)

        try:
            with _forced(backend):
                torch.autograd.gradcheck(fn, (x,))
        except Exception as error:  # noqa: BLE001 (report and go on)
            failures.append(f"gradcheck {shape} noise_shape={noise_shape}: {error}")
    return failures


def check_compile(device: str, backend: str | None = None, compiler: str = "inductor") -> list[str]:
    """torch.compile(fullgraph=True) draws the masks eager draws, step after step, forward and backward."""
    with _forced(backend):
        return _check_compile(device, compiler)


def _check_compile(device: str, compiler: str) -> list[str]:
    failures = []
    torch._dynamo.reset()
    eager = nn.Sequential(dl.nn.Dropout(0.3, seed=5), dl.nn.Dropout2d(0.2, seed=6)).to(device)
    compiled_module = nn.Sequential(dl.nn.Dropout(0.3, seed=5), dl.nn.Dropout2d(0.2, seed=6)).to(device)
    compiled = torch.compile(compiled_module, fullgraph=True, backend=compiler)
    x = torch.randn(4, 8, 5, 5, device=device)
    for step in range(3):
        xe, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ye, yc = eager(xe), compiled(xc)
        (ge,) = torch.autograd.grad(ye, xe, torch.ones_like(ye))
        (gc,) = torch.autograd.grad(yc, xc, torch.ones_like(yc))
        if not same_bits(ye, yc) or not same_bits(ge, gc):
            failures.append(f"torch.compile: step {step} differs from eager")
    if int(compiled_module[0].step) != 3:
        failures.append(f"torch.compile: the step counter is {int(compiled_module[0].step)} after 3 calls, not 3")
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), dl.nn.Dropout(0.5, seed=9), nn.Linear(64, 8)).to(device)
    x = torch.randn(32, 64, device=device)
    h = torch.compile(model[:3], fullgraph=True, backend=compiler)(x)
    keep = dl.functional.dropout(torch.ones(32, 64, device=device), 0.5, seed=9, step=0) != 0
    expect = torch.where(keep, model[:2](x) * 2, 0.0)
    if bool((h[~keep] != 0).any()) or not torch.allclose(h, expect, rtol=1e-4, atol=1e-5):
        failures.append("torch.compile of Linear-ReLU-Dropout: not the eager mask and values")
    return failures


# --- speed and memory -------------------------------------------------------------------------


def check_variants(device: str, backend: str | None = None) -> list[str]:
    """Every variant's forward and input/weight gradient on ``device`` equal the CPU path's, bit for bit.

    DropBlock (the Triton origin mask grown by max-pool), embedding dropout (the Triton row-keep
    kernel), Gaussian (Box-Muller) and Concrete (logistic) noise: the float32 transforms of the Philox
    words, which the spec fixes op for op (no fma), so the GPU must give the CPU's bits.
    """
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 6, 19, 23, generator=g)
    weight = torch.randn(300, 16, generator=g)
    ids = torch.randint(0, 300, (5, 13), generator=g)
    logit = torch.tensor(-1.2)
    F_ = dl.functional
    ops = {
        "dropblock2d": (lambda t, dev: F_.dropblock2d(t, 0.2, 5, seed=2**64 - 5, step=3), x),
        "gaussian": (lambda t, dev: F_.gaussian_dropout(t, 0.3, seed=7, step=1), x),
        "concrete": (lambda t, dev: F_.concrete_dropout(t, logit.to(dev), seed=7, step=1), x),
        "embedding": (lambda w, dev: F_.embedding_dropout(ids.to(dev), w, 0.4, seed=9, step=2, padding_idx=5), weight),
    }
    failures = []
    for name, (op, data) in ops.items():
        results = []
        for dev, forced in ((device, backend), ("cpu", None)):
            t = data.to(dev).requires_grad_(True)
            with _forced(forced):
                y = op(t, dev)
                (grad,) = torch.autograd.grad(y, t, torch.ones_like(y))
            results.append((y.detach().cpu(), grad.cpu()))
        for label, got, want in ((f"{name} forward", results[0][0], results[1][0]),
                                 (f"{name} gradient", results[0][1], results[1][1])):
            if not same_bits(got, want):
                failures.append(f"{label}: differs from the CPU path in {int((got != want).sum())} elements")
    for kind in ("normal", "logistic"):
        numel = (1 << 20) + 3
        got = kernels.noise(kind, numel, (0xDEADBEEF, 0x1234), 5, 1, 2, device).cpu()
        if not same_bits(got, kernels.noise(kind, numel, (0xDEADBEEF, 0x1234), 5, 1, 2, "cpu")):
            failures.append(f"{kind} noise: differs from the CPU path")
    return failures


def bench_ms(fn: Callable[[], object]) -> float:
    """Median milliseconds of ``fn`` on the GPU, L2 flushed between runs."""
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=200, return_mode="median"))


def gbps(nbytes: float, ms: float) -> float:
    return nbytes / (ms * 1e-3) / 1e9 if ms > 0 else float("nan")


def saved_bytes_per_element(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> float:
    """Bytes autograd saves for backward per element of ``x`` (every tensor a pack hook sees)."""
    total = 0

    def pack(t: torch.Tensor):
        nonlocal total
        if t.data_ptr() != x.data_ptr():  # an op saving its own input costs nothing extra
            total += t.numel() * t.element_size()
        return t

    x = x.detach().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return total / x.numel()


def make_mlp(width: int, depth: int, dropout: Callable[[], nn.Module]) -> nn.Sequential:
    """``depth`` Linear layers of ``width``, ReLU and dropout after each but the last."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers.append(nn.Linear(width, width))
        if i < depth - 1:
            layers += [nn.ReLU(), dropout()]
    return nn.Sequential(*layers)


def train_step_memory(device: str, dropout: Callable[[], nn.Module], width: int = 8192, depth: int = 4,
                      batch: int = 8192) -> tuple[float, float, float]:
    """(peak GiB, peak above the resting state GiB, ms per step) of SGD training steps of the MLP."""
    torch.manual_seed(0)
    model = make_mlp(width, depth, dropout).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(batch, width, device=device)
    target = torch.randn(batch, width, device=device)

    def step():
        loss = F.mse_loss(model(x), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    torch.cuda.synchronize()
    resting = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    start = time.perf_counter()
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    ms = (time.perf_counter() - start) / 5 * 1e3
    return peak / 2**30, (peak - resting) / 2**30, ms


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[f"{v:.3f}" if isinstance(v, float) and abs(v) < 10 else f"{v:.1f}" if isinstance(v, float) else str(v)
              for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths)), "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _speed_rows(device: str, log2n: int, dtype: torch.dtype, p: float) -> tuple[list[tuple], str]:
    n = 2**log2n
    es = torch.tensor([], dtype=dtype).element_size()
    name = str(dtype).removeprefix("torch.")
    x = torch.randn(n, device=device, dtype=dtype, requires_grad=True)
    g = torch.randn_like(x)
    copy_ms = bench_ms(lambda: x.detach().clone())
    steps = iter(range(10**9))  # a new mask every call, as in training
    fns = {
        "torch": lambda t: F.dropout(t, p, True),
        "droplab": lambda t: dl.functional.dropout(t, p, True, seed=3, step=next(steps)),
    }
    rows, fb_ms = [], {}
    for op, fn in fns.items():
        fwd = bench_ms(lambda fn=fn: fn(x.detach()))
        fb_ms[op] = bench_ms(lambda fn=fn: torch.autograd.grad(fn(x), x, g))
        saved = saved_bytes_per_element(fn, x[: 1 << 20])
        rows.append((f"2^{log2n}", name, op, fwd, gbps(2 * n * es, fwd), fb_ms[op], gbps(4 * n * es, fb_ms[op]), saved))
    rows.append((f"2^{log2n}", name, "copy (clone)", copy_ms, gbps(2 * n * es, copy_ms), "", "", ""))
    ratio = fb_ms["droplab"] / fb_ms["torch"]
    copy_frac = gbps(4 * n * es, fb_ms["droplab"]) / gbps(2 * n * es, copy_ms)
    verdict = (f"2^{log2n} {name}: droplab fwd+bwd = {ratio:.2f} x torch (target <= 1.10: "
               f"{'met' if ratio <= 1.10 else 'MISSED'}), {100 * copy_frac:.0f}% of copy bandwidth "
               f"(target >= 80%: {'met' if copy_frac >= 0.8 else 'MISSED'})")
    return rows, verdict


def speed_table(device: str, sizes=(24, 28), dtypes=(torch.float32, torch.bfloat16), p: float = 0.5):
    rows, verdicts = [], []
    for log2n in sizes:
        for dtype in dtypes:
            more, verdict = _speed_rows(device, log2n, dtype, p)
            rows += more
            verdicts.append(verdict)
            torch.cuda.empty_cache()
    header = ("n", "dtype", "op", "fwd ms", "fwd GB/s", "fwd+bwd ms", "fwd+bwd GB/s", "saved B/elem")
    return format_table(header, rows), verdicts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-large", action="store_true", help="skip the > 2**31-element checks (needs ~10 GiB)")
    parser.add_argument("--no-bench", action="store_true", help="correctness checks only")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device is available; this script checks droplab's Triton kernel on a GPU "
              "(the CPU tests run it through TRITON_INTERPRET=1: pytest tests/test_triton.py)", file=sys.stderr)
        return 2
    if "triton" not in kernels.available_backends():
        print('gpu_check: Triton is not importable here; install it with pip install "droplab[gpu]"', file=sys.stderr)
        return 2
    device = "cuda"
    import triton

    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}")
    checks = [("bit-equality with the CPU path", lambda: check_bit_equality(device)),
              ("gradcheck (float64, Triton)", lambda: check_gradcheck(device)),
              ("torch.compile", lambda: check_compile(device)),
              ("variants (DropBlock, embedding, Gaussian, Concrete)", lambda: check_variants(device))]
    if not args.no_large:
        checks.append(("past 2**31 elements", lambda: check_large(device)))
    failed = 0
    for name, check in checks:
        start = time.perf_counter()
        try:
            failures = check()
        except Exception as error:  # noqa: BLE001 (a crash is a failed check, reported with the rest)
            failures = [f"raised {type(error).__name__}: {error}"]
        status = "ok" if not failures else f"FAILED ({len(failures)})"
        print(f"[{status}] {name} ({time.perf_counter() - start:.1f} s)")
        for failure in failures[:20]:
            print(f"    {failure}")
        failed += bool(failures)
    if not args.no_bench:
        table, verdicts = speed_table(device)
        print("\nDropout, p = 0.5 (median ms, L2 flushed; GB/s of the bytes dropout must move)")
        print(table)
        print("\n".join(verdicts))
        print("\nTraining step, 4-layer MLP, width 8192, batch 8192, float32, SGD, dropout p = 0.5 after 3 layers")
        rows = []
        for name, factory in (("torch.nn.Dropout", lambda: nn.Dropout(0.5)),
                              ("droplab.nn.Dropout", lambda: dl.nn.Dropout(0.5, seed=1))):
            peak, above, ms = train_step_memory(device, factory)
            rows.append((name, peak, above, ms))
            torch.cuda.empty_cache()
        print(format_table(("dropout", "peak GiB", "peak above resting GiB", "ms/step"), rows))
    print(f"\n{'all correctness checks passed' if not failed else f'{failed} correctness check(s) FAILED'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
