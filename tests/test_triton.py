"""The Triton backend against the reference, bit for bit, through Triton's interpreter on the CPU.

``TRITON_INTERPRET=1`` is read when ``@triton.jit`` decorates, so the kernels must be imported in a
process that set it first and had not imported them before: the checks run in one subprocess (this
file run as a script), which reports each check's failures as JSON; each check is one test here.
The GPU itself is exercised by ``benchmarks/gpu_check.py``, whose CPU-side logic is tested below.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU_CHECK = os.path.join(ROOT, "benchmarks", "gpu_check.py")

DTYPES = ("float32", "float16", "bfloat16", "float64")
RATES = (0.0, 0.1, 0.5, 1.0)
# (id, shape, mask_shape): odd element-wise sizes, then channel, per-example and generic broadcasts
SHAPES = (
    ("n1", (1,), (1,)),
    ("n3", (3,), (3,)),
    ("n1023", (1023,), (1023,)),
    ("n4097", (4097,), (4097,)),
    ("5x7x9", (5, 7, 9), (5, 7, 9)),
    ("channel", (4, 6, 3, 5), (4, 6, 1, 1)),
    ("per-example", (5, 3, 7), (5, 1, 1)),
    ("time-shared", (3, 5, 7), (3, 1, 7)),
    ("batch-shared", (6, 7), (1, 7)),
    ("size-one-axes", (1, 4, 1, 6), (1, 4, 1, 1)),
    ("shorter-mask", (7, 5), (5,)),
    ("four-runs", (2, 3, 2, 3, 2, 3, 2, 3), (2, 1, 2, 1, 2, 1, 2, 1)),
    ("five-runs-fallback", (2, 2, 2, 2, 2, 2, 2, 2, 2), (2, 1, 2, 1, 2, 1, 2, 1, 2)),
)
KEY, STEP, REPLICA, STREAM = (0x9E3779B9, 0xFFFFFFFF), 12, 1, 2
CHECKS = (
    [f"kernel-{sid}-{dtype}" for sid, _, _ in SHAPES for dtype in DTYPES]
    + ["small-block", "index64", "counters", "keep-mask", "special-values", "non-contiguous", "empty",
       "dispatch", "functional-autograd", "gradcheck", "large-logic", "variant-noise", "variant-masks",
       "variant-functionals", "gpu-check-variants"]
)


# --- the worker: runs in a subprocess with TRITON_INTERPRET=1 ---------------------------------------


def _bits(t: torch.Tensor) -> torch.Tensor:
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.contiguous().view(ints)


def _compare(label: str, got: torch.Tensor, want: torch.Tensor) -> list[str]:
    if got.shape != want.shape or got.dtype != want.dtype:
        return [f"{label}: got {got.dtype} {tuple(got.shape)}, want {want.dtype} {tuple(want.shape)}"]
    if not got.is_contiguous():
        return [f"{label}: output is not contiguous"]
    if not torch.equal(_bits(got), _bits(want)):
        return [f"{label}: {int((_bits(got) != _bits(want)).sum())} of {got.numel()} elements differ"]
    return []


def _both(x, mask_shape, p, key=KEY, step=STEP, replica=REPLICA, stream=STREAM):
    from droplab.kernels import reference
    from droplab.kernels import triton as kt
    from droplab.rng import drop_threshold

    scale = 0.0 if p == 1.0 else 1.0 / (1.0 - p)
    args = (key, step, replica, stream, drop_threshold(p), scale, tuple(mask_shape))
    return kt.masked_scale(x, *args), reference.masked_scale(x, *args)


def _input(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(getattr(torch, dtype))


def _check_kernel(shape, mask_shape, dtype) -> list[str]:
    failures = []
    x = _input(shape, dtype)
    for p in RATES:
        got, want = _both(x, mask_shape, p)
        failures += _compare(f"p={p}", got, want)
    return failures


def _check_small_block() -> list[str]:
    # several programs per tensor, with a ragged last one, for each kernel
    from droplab.kernels import triton as kt

    block, index64_from = kt.BLOCK, kt.INDEX64_FROM
    kt.BLOCK, kt.INDEX64_FROM = 64, 2**31
    try:
        failures = []
        for shape, mask_shape in (((301,), (301,)), ((5, 3, 20), (5, 1, 20)), ((9, 4, 7), (9, 4, 1))):
            got, want = _both(_input(shape, "float32"), mask_shape, 0.3)
            failures += _compare(f"{shape} mask {mask_shape}", got, want)
        return failures
    finally:
        kt.BLOCK, kt.INDEX64_FROM = block, index64_from


def _check_index64() -> list[str]:
    # the int64-offset variant (tensors past 2**31 elements) on small tensors
    from droplab.kernels import reference
    from droplab.kernels import triton as kt
    from droplab.rng import drop_threshold

    index64_from = kt.INDEX64_FROM
    kt.INDEX64_FROM = 0
    try:
        failures = []
        for shape, mask_shape in (((1023,), (1023,)), ((4, 6, 3, 5), (4, 6, 1, 1)), ((3, 5, 7), (3, 1, 7))):
            got, want = _both(_input(shape, "bfloat16"), mask_shape, 0.4)
            failures += _compare(f"{shape} mask {mask_shape}", got, want)
        t = drop_threshold(0.4)
        if not torch.equal(kt.keep_mask(1023, KEY, 1, 0, 0, t), reference.keep_mask(1023, KEY, 1, 0, 0, t)):
            failures.append("keep_mask differs")
        return failures
    finally:
        kt.INDEX64_FROM = index64_from


def _check_counters() -> list[str]:
    from droplab.rng import split_seed

    failures = []
    x = _input((257,), "float32")
    for seed in (0, 1, 2**32 - 1, 2**63, 2**64 - 1, -5):
        for step, replica, stream in ((0, 0, 0), (1, 0, 0), (2**32 - 1, 7, 2**32 - 1), (2**32 + 7, 1, 1)):
            got, want = _both(x, (257,), 0.5, split_seed(seed), step, replica, stream)
            failures += _compare(f"seed={seed} step={step} replica={replica} stream={stream}", got, want)
    return failures


def _check_keep_mask() -> list[str]:
    from droplab.kernels import reference
    from droplab.kernels import triton as kt
    from droplab.rng import drop_threshold

    failures = []
    for numel in (0, 1, 3, 1023, 4097):
        for p in RATES:
            t = drop_threshold(p)
            got = kt.keep_mask(numel, KEY, STEP, REPLICA, STREAM, t, "cpu")
            want = reference.keep_mask(numel, KEY, STEP, REPLICA, STREAM, t, "cpu")
            if got.dtype != torch.bool or not torch.equal(got, want):
                failures.append(f"numel={numel} p={p}: {got.dtype}, {int((got != want).sum())} differ")
    return failures


def _check_special_values() -> list[str]:
    # dropped elements are exactly +0 even for inf and nan; kept inf stays inf, kept nan stays nan
    failures = []
    values = torch.tensor([float("inf"), -float("inf"), float("nan"), -0.0, 0.0, 3.0e38, 1e-40, -2.5] * 16,
                          dtype=torch.float64)
    for dtype in DTYPES:
        x = values.to(getattr(torch, dtype))
        for p in (0.1, 0.5):
            got, want = _both(x, x.shape, p)
            if not torch.equal(got.isnan(), want.isnan()):
                failures.append(f"{dtype} p={p}: nan positions differ")
            finite = ~want.isnan()
            failures += _compare(f"{dtype} p={p}", got[finite], want[finite])
    return failures


def _check_non_contiguous() -> list[str]:
    failures = []
    base = _input((12, 10), "float32")
    for label, x in (("transposed", base.t()), ("strided", base[::2, 1::3]), ("expanded", base[:1].expand(4, 10))):
        for mask_shape in (tuple(x.shape), (x.shape[0], 1)):
            got, want = _both(x, mask_shape, 0.3)
            failures += _compare(f"{label} mask {mask_shape}", got, want)
    return failures


def _check_empty() -> list[str]:
    failures = []
    for shape, mask_shape in (((0,), (0,)), ((3, 0, 2), (3, 1, 1))):
        got, want = _both(torch.empty(shape), mask_shape, 0.5)
        failures += _compare(f"{shape}", got, want)
    return failures


def _check_dispatch() -> list[str]:
    from droplab import kernels

    failures = []
    if "triton" not in kernels.available_backends():
        return ["the triton backend is not available under TRITON_INTERPRET=1"]
    with kernels.use_backend("triton"):
        for dtype in DTYPES:
            name = kernels.backend_for(torch.zeros(2, dtype=getattr(torch, dtype)))
            if name != "triton":
                failures.append(f"{dtype} under use_backend('triton') is served by {name!r}")
        name = kernels.backend_for(torch.zeros(2, dtype=torch.int32))
        if name != "reference":
            failures.append(f"int32 falls back to {name!r}, not the reference")
    if kernels.backend_for(torch.zeros(2)) == "triton":
        failures.append("a CPU tensor is sent to triton without use_backend('triton')")
    return failures


def _check_functional_autograd() -> list[str]:
    # droplab.functional.dropout forward and backward through the op, against the CPU path (gpu_check's check)
    gpu_check = _load_gpu_check()
    cases = (((5, 7, 9), None), ((4, 6, 3, 5), (None, None, 1, 1)), ((3, 5, 7), (None, 1, None)))
    return gpu_check.check_bit_equality("cpu", "triton", cases=cases, dtypes=(torch.float32, torch.bfloat16),
                                        rates=(0.1, 1.0), seeds=((2**64 - 1, 2**32 + 3),), keep_sizes=(5,))


def _check_gradcheck() -> list[str]:
    gpu_check = _load_gpu_check()
    return gpu_check.check_gradcheck("cpu", "triton", cases=(((3, 2), None), ((2, 2, 1, 2), (None, None, 1, 1))))


def _check_variant_noise() -> list[str]:
    """Box-Muller and logistic noise of the Triton kernel: the reference's bits (float32 spec, no fma)."""
    from droplab.kernels import reference
    from droplab.kernels import triton as kt

    failures = []
    for kind in ("normal", "logistic"):
        for numel in (1, 3, 1023, 4097):
            got = kt.noise(kind, numel, KEY, STEP, REPLICA, STREAM, "cpu")
            failures += _compare(f"{kind} noise n={numel}", got,
                                 reference.noise(kind, numel, KEY, STEP, REPLICA, STREAM, "cpu"))
    for dtype in DTYPES:
        x = torch.randn(5, 7, 9).to(getattr(torch, dtype))
        for mask_shape in ((5, 7, 9), (5, 1, 9)):
            got = kt.gaussian_scale(x, KEY, STEP, REPLICA, STREAM, 0.7, mask_shape)
            want = reference.gaussian_scale(x, KEY, STEP, REPLICA, STREAM, 0.7, mask_shape)
            failures += _compare(f"gaussian {dtype} {mask_shape}", got, want)
    return failures


def _check_variant_masks() -> list[str]:
    """DropBlock's origin mask and the embedding's row mask from the Triton kernels: the reference's."""
    from droplab.kernels import reference
    from droplab.kernels import triton as kt
    from droplab.rng import drop_threshold

    failures = []
    for planes, spatial, block, p in ((6, (1, 13, 17), (1, 3, 5), 0.05), (3, (5, 6, 7), (2, 3, 3), 0.2),
                                      (2, (1, 9, 9), (1, 2, 2), 1.0)):
        args = (planes, spatial, block, KEY, STEP, REPLICA, STREAM, drop_threshold(p))
        (got, got_kept), (want, want_kept) = kt.dropblock_keep(*args, "cpu"), reference.dropblock_keep(*args, "cpu")
        if not torch.equal(got, want) or got_kept != want_kept:
            failures.append(f"dropblock_keep {spatial} {block} p={p} differs")
    indices = torch.randint(0, 5000, (7, 11), generator=torch.Generator().manual_seed(0))
    for p in (0.0, 0.3, 1.0):
        if not torch.equal(kt.row_keep(indices, KEY, STEP, REPLICA, STREAM, drop_threshold(p)),
                           reference.row_keep(indices, KEY, STEP, REPLICA, STREAM, drop_threshold(p))):
            failures.append(f"row_keep p={p} differs")
    return failures


def _check_variant_functionals() -> list[str]:
    """Each variant's functional, forward and backward, on the triton backend equals the reference backend."""
    import droplab.functional as F
    from droplab import kernels

    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 9, 11, generator=g)
    weight = torch.randn(40, 5, generator=g)
    ids = torch.randint(0, 40, (3, 7), generator=g)
    logit = torch.tensor(-1.5)
    ops = {
        "dropblock2d": (lambda t: F.dropblock2d(t, 0.3, 3, seed=5, step=2), x),
        "gaussian": (lambda t: F.gaussian_dropout(t, 0.3, seed=5, step=2), x),
        "concrete": (lambda t: F.concrete_dropout(t, logit, seed=5, step=2), x),
        "embedding": (lambda w: F.embedding_dropout(ids, w, 0.4, seed=5, step=2, padding_idx=3), weight),
    }
    failures = []
    for name, (op, data) in ops.items():
        results = []
        for backend in ("triton", "reference"):
            t = data.clone().requires_grad_(True)
            with kernels.use_backend(backend):
                y = op(t)
                (grad,) = torch.autograd.grad(y, t, torch.ones_like(y))
            results.append((y.detach(), grad))
        failures += _compare(f"{name} forward", *[r[0] for r in results])
        failures += _compare(f"{name} backward", *[r[1] for r in results])
    return failures


def _check_gpu_check_variants() -> list[str]:
    # gpu_check's variant check, with the CPU standing in for the GPU through the interpreter
    return _load_gpu_check().check_variants("cpu", backend="triton")


def _check_large_logic() -> list[str]:
    # gpu_check's > 2**31-element check, scaled down to 2**13 with the int64-offset kernels forced
    from droplab.kernels import triton as kt

    index64_from = kt.INDEX64_FROM
    kt.INDEX64_FROM = 0
    try:
        return _load_gpu_check().check_large("cpu", start=2**13, backend="triton")
    finally:
        kt.INDEX64_FROM = index64_from


def _load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", GPU_CHECK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _worker() -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1", "the worker must start with TRITON_INTERPRET=1"
    sys.path.insert(0, ROOT)
    shapes = {sid: (shape, mask) for sid, shape, mask in SHAPES}
    named = {
        "small-block": _check_small_block, "index64": _check_index64, "counters": _check_counters,
        "keep-mask": _check_keep_mask, "special-values": _check_special_values,
        "non-contiguous": _check_non_contiguous, "empty": _check_empty, "dispatch": _check_dispatch,
        "functional-autograd": _check_functional_autograd, "gradcheck": _check_gradcheck,
        "large-logic": _check_large_logic, "variant-noise": _check_variant_noise,
        "variant-masks": _check_variant_masks, "variant-functionals": _check_variant_functionals,
        "gpu-check-variants": _check_gpu_check_variants,
    }
    results = {}
    for check in CHECKS:
        try:
            if check.startswith("kernel-"):
                sid, dtype = check[len("kernel-"):].rsplit("-", 1)
                results[check] = _check_kernel(*shapes[sid], dtype)
            else:
                results[check] = named[check]()
        except Exception as error:  # noqa: BLE001 (a crash is that check's failure, the others still run)
            results[check] = [f"raised {type(error).__name__}: {error}"]
    print("RESULTS " + json.dumps(results))


# --- the tests -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def interpreted():
    if importlib.util.find_spec("triton") is None:
        pytest.skip('Triton is not installed (pip install "droplab[gpu]"); the interpreter checks need it')
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__)], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS ")]
    if proc.returncode != 0 or not lines:
        pytest.fail(f"interpreter worker failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                    f"{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULTS "):])


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.slow
def test_interpreted_triton_matches_reference(interpreted, check):
    assert interpreted[check] == [], "\n".join(interpreted[check])


def test_backend_needs_cuda_or_interpreter():
    if importlib.util.find_spec("triton") is None:
        pytest.skip("Triton is not installed")
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("this process runs Triton's interpreter")
    from droplab.kernels import triton as kt

    assert kt.available() == torch.cuda.is_available()
    assert not kt.supports(torch.zeros(3))  # CPU tensors only under the interpreter
    if torch.cuda.is_available():
        assert kt.supports(torch.zeros(3, device="cuda", dtype=torch.bfloat16))
        assert not kt.supports(torch.zeros(3, device="cuda", dtype=torch.int32))


def test_gpu_check_without_cuda_exits_2_with_a_message():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, GPU_CHECK, "--no-bench"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no CUDA device" in proc.stderr


def test_gpu_check_saved_bytes_droplab_saves_no_mask():
    gpu_check = _load_gpu_check()
    x = torch.randn(4096)
    assert gpu_check.saved_bytes_per_element(lambda t: gpu_check.dl.functional.dropout(t, 0.5, seed=1), x) == 0.0
    # torch keeps its mask for backward: a bool mask on CUDA, a float noise tensor on the CPU
    assert gpu_check.saved_bytes_per_element(lambda t: torch.nn.functional.dropout(t, 0.5, True), x) >= 1.0


def test_gpu_check_same_bits_tells_signed_zeros_apart():
    gpu_check = _load_gpu_check()
    assert gpu_check.same_bits(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 1.0]))
    assert not gpu_check.same_bits(torch.tensor([0.0, 1.0]), torch.tensor([-0.0, 1.0]))
    assert not gpu_check.same_bits(torch.tensor([1.0]), torch.tensor([1.0], dtype=torch.float64))


def test_gpu_check_mlp_and_table():
    gpu_check = _load_gpu_check()
    mlp = gpu_check.make_mlp(8, 4, lambda: torch.nn.Dropout(0.5))
    assert [type(m).__name__ for m in mlp].count("Linear") == 4
    assert [type(m).__name__ for m in mlp].count("Dropout") == 3
    table = gpu_check.format_table(("op", "ms"), [("torch", 1.5), ("droplab", 12.25)])
    assert table.splitlines()[0].split("|")[0].strip() == "op"
    assert "12.2" in table and "1.500" in table
    assert gpu_check.gbps(2e9, 1000.0) == pytest.approx(2.0)


def test_gpu_check_compile_logic_on_cpu():
    # the script's torch.compile check, on the CPU path with a cheap compiler backend
    gpu_check = _load_gpu_check()
    assert gpu_check.check_compile("cpu", None, "aot_eager") == []


if __name__ == "__main__":
    _worker()
