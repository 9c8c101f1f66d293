"""The numba CPU kernel against the pure-torch reference, bit for bit."""

import pytest
import torch

import droplab.functional as F
from droplab.kernels import backend_for, cpu, reference, use_backend
from droplab.rng import drop_threshold

pytestmark = pytest.mark.skipif(not cpu.available(), reason="numba is not installed")

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
PS = [0.0, 1e-9, 0.1, 0.5, 0.9, 1.0]
SIZES = [0, 1, 2, 3, 5, 7, 1023, 4097]
KEY = (0x12345678, 0x9ABCDEF0)
_INT = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
        torch.bfloat16: torch.int16}


def _scale(p: float, scaling: str = "inverted") -> float:
    if p == 1.0:
        return 0.0
    return 1.0 / (1.0 - p) if scaling == "inverted" else 1.0


def assert_bits_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal bit patterns everywhere; where both are nan only nan-ness is compared, since torch's own
    conversion of a nan to a half type gives different payloads on its scalar and vector paths."""
    assert a.shape == b.shape and a.dtype == b.dtype
    assert a.is_contiguous()
    nan_a, nan_b = torch.isnan(a), torch.isnan(b)
    assert torch.equal(nan_a, nan_b)
    if a.dtype in (torch.float32, torch.float64):  # full-precision nans carry the hardware's payload
        assert torch.equal(a.view(_INT[a.dtype]), b.contiguous().view(_INT[a.dtype]))
    else:
        both = ~nan_a
        assert torch.equal(a[both].view(_INT[a.dtype]), b[both].contiguous().view(_INT[a.dtype]))


def _both(x, p, mask_shape, step=3, replica=1, stream=2, scale=None):
    t, s = drop_threshold(p), _scale(p) if scale is None else scale
    args = (KEY, step, replica, stream, t, s, tuple(mask_shape))
    return cpu.masked_scale(x, *args), reference.masked_scale(x, *args)


def _data(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sizes_and_rates_match_reference(dtype):
    for n in SIZES:
        x = _data((n,), dtype, seed=n)
        for p in PS:
            assert_bits_equal(*_both(x, p, (n,)))
    # the classic convention's unit scale, and a scale with a long binary expansion
    x = _data((4097,), dtype)
    assert_bits_equal(*_both(x, 0.3, (4097,), scale=1.0))
    assert_bits_equal(*_both(x, 0.3, (4097,), scale=1 / 0.7))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5, 7), (1, 1), (2, 1, 3), (13, 1, 1, 9), (), (4, 0, 3)])
def test_odd_shapes_match_reference(dtype, shape):
    x = _data(shape, dtype)
    assert_bits_equal(*_both(x, 0.5, shape))


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs_use_the_logical_index(dtype):
    base = _data((37, 29), dtype)
    views = {
        "transposed": base.t(),
        "sliced": base[1::3, ::2],
        "expanded": _data((1, 29), dtype).expand(37, 29),
        "permuted": _data((5, 6, 7), dtype).permute(2, 0, 1),
    }
    for name, x in views.items():
        assert not x.is_contiguous(), name
        a, b = _both(x, 0.4, tuple(x.shape))
        assert_bits_equal(a, b)
        # the mask follows the logical position: the same as for a contiguous copy
        assert_bits_equal(a, _both(x.contiguous(), 0.4, tuple(x.shape))[0])


NOISE_SHAPES = {
    "channel": ((6, 5, 7, 3), (6, 5, 1, 1)),
    "per-example": ((6, 9, 11), (6, 1, 11)),  # one mask per sequence, shared over time
    "per-batch": ((17, 33), (1, 33)),
    "middle-shared": ((4, 7, 5), (4, 1, 5)),
    "alternating": ((3, 4, 5, 6), (1, 4, 1, 6)),
    "leading-shared": ((5, 6, 7), (1, 1, 7)),
    "all-shared": ((9, 8), (1, 1)),
    "trailing-long": ((3, 4097), (3, 1)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(NOISE_SHAPES))
def test_noise_shapes_match_reference(dtype, case):
    shape, mask_shape = NOISE_SHAPES[case]
    x = _data(shape, dtype)
    for p in (0.0, 0.5, 0.9, 1.0):
        assert_bits_equal(*_both(x, p, mask_shape))
    # a non-contiguous input with a shared axis
    xt = _data(tuple(reversed(shape)), dtype).permute(*reversed(range(len(shape))))
    assert_bits_equal(*_both(xt, 0.5, mask_shape))


def test_large_noise_shape_with_threads():
    x = _data((8, 64, 32, 32), torch.float32)  # 2**19 elements: both threads get work
    for mask_shape in [(8, 64, 1, 1), (8, 1, 32, 32), (1, 64, 1, 32)]:
        assert_bits_equal(*_both(x, 0.5, mask_shape))


@pytest.mark.parametrize("dtype", DTYPES)
def test_inf_and_nan_are_exactly_zero_when_dropped(dtype):
    x = _data((4096,), dtype)
    x[::3] = float("inf")
    x[1::5] = float("-inf")
    x[2::7] = float("nan")
    for p in (0.5, 0.9):
        a, b = _both(x, p, (4096,))
        assert_bits_equal(a, b)
        dropped = ~reference.keep_mask(4096, KEY, 3, 1, 2, drop_threshold(p))
        assert dropped.sum() > 1000
        assert torch.equal(a[dropped].view(_INT[dtype]), torch.zeros(int(dropped.sum()), dtype=_INT[dtype]))
        assert torch.isinf(a[~dropped & torch.isinf(x)]).all()
    # p = 1 drops every element, inf and nan included, to +0
    a, _ = _both(x, 1.0, (4096,))
    assert torch.equal(a.view(_INT[dtype]), torch.zeros(4096, dtype=_INT[dtype]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_every_half_bit_pattern_converts_like_torch(dtype):
    """All 65536 inputs, with scales that round, overflow to inf and underflow into subnormals."""
    x = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    for scale in (1.0, 1 / 0.7, 1 / 0.1, 1e-3, 3e4, 0.5):
        assert_bits_equal(*_both(x, 0.0, (x.numel(),), scale=scale))


def test_thread_count_does_not_change_the_mask():
    x = _data((2**17 + 3,), torch.float32)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cpu.masked_scale(x, KEY, 5, 0, 0, drop_threshold(0.5), 2.0, (x.numel(),))
        keep_one = cpu.keep_mask(x.numel(), KEY, 5, 0, 0, drop_threshold(0.3))
        torch.set_num_threads(2)
        two = cpu.masked_scale(x, KEY, 5, 0, 0, drop_threshold(0.5), 2.0, (x.numel(),))
        keep_two = cpu.keep_mask(x.numel(), KEY, 5, 0, 0, drop_threshold(0.3))
    finally:
        torch.set_num_threads(previous)
    assert_bits_equal(one, two)
    assert torch.equal(keep_one, keep_two)


@pytest.mark.parametrize("numel", [0, 1, 3, 4, 5, 4097, 2**17 + 1])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 1.0])
def test_keep_mask_matches_reference(numel, p):
    t = drop_threshold(p)
    for step, replica, stream in [(0, 0, 0), (2**32 - 1, 7, 3)]:
        a = cpu.keep_mask(numel, KEY, step, replica, stream, t)
        b = reference.keep_mask(numel, KEY, step, replica, stream, t)
        assert a.dtype == torch.bool and torch.equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_inplace_dropout_matches_reference(dtype):
    for make in (lambda: _data((33, 17), dtype), lambda: _data((17, 33), dtype).t()):
        out = {}
        for backend in ("cpu", "reference"):
            x = make()
            with use_backend(backend):
                y = F.dropout(x, 0.3, inplace=True, seed=11, step=4)
            assert y is x
            out[backend] = x.contiguous()
        assert_bits_equal(out["cpu"], out["reference"])


def test_backward_matches_reference():
    grads = {}
    for backend in ("cpu", "reference"):
        x = _data((64, 33), torch.float32).requires_grad_()
        with use_backend(backend):
            y = F.dropout(x, 0.4, seed=21, step=2, noise_shape=(None, 1))
            (y * torch.arange(33.0)).sum().backward()
        grads[backend] = x.grad
    assert_bits_equal(grads["cpu"], grads["reference"])


def test_dispatch_picks_the_cpu_kernel():
    for dtype in DTYPES:
        assert backend_for(torch.zeros(3, dtype=dtype)) == "cpu"
    assert backend_for(torch.zeros(3, dtype=torch.complex64)) == "reference"
    assert cpu.supports(torch.zeros(2)) and not cpu.supports(torch.zeros(2, dtype=torch.int32))


def test_mask_shape_rank_is_checked():
    with pytest.raises(ValueError, match="mask_shape"):
        cpu.masked_scale(torch.zeros(3, 4), KEY, 0, 0, 0, 0, 1.0, (3,))


def test_warmup_reports_first_call_seconds():
    seconds = cpu.warmup((torch.float32,))
    assert seconds["masked_scale[float32]"] >= 0.0
    assert seconds["masked_scale_broadcast[float32]"] >= 0.0


@pytest.mark.slow
def test_bench_kernel_quick_smoke(tmp_path, capsys):
    import json

    from droplab.cli import main

    path = tmp_path / "kernel.json"
    assert main(["bench", "kernel", "--quick", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| 2^14 | droplab dropout |" in out and "droplab Dropout(0.5) x2" in out
    result = json.loads(path.read_text())
    rows = {(r["elements"], r["op"]): r for r in result["kernel"]}
    for n in (2**10, 2**14):
        # droplab regenerates its mask in backward: autograd holds no tensor of it
        assert rows[n, "droplab dropout"]["saved_bytes_per_element"] == 0.0
        assert rows[n, "torch F.dropout"]["saved_bytes_per_element"] >= 1.0
        assert rows[n, "droplab dropout"]["fwdbwd_ms"] > 0.0
    assert [r["variant"] for r in result["mlp"]][0] == "no dropout"
    assert [(r["shape"], r["module"]) for r in result["modules"]] == [
        ("16", "torch nn.Dropout"), ("16", "droplab Dropout, seed=None"), ("16", "droplab Dropout, seed=7")]
    assert all(r["fwdbwd_us"] > 0.0 and r["fwd_vs_torch"] > 0.0 for r in result["modules"])
    assert result["startup"]["backend"] == "cpu" and result["startup"]["import_droplab_s"] > 0.0


# ---- the variants' maps: numba against the reference, bit for bit


@pytest.mark.parametrize("spatial,block,p_origin", [((1, 13, 17), (1, 3, 5), 0.05), ((1, 1, 31), (1, 1, 7), 0.1),
                                                     ((5, 6, 7), (2, 3, 3), 0.2), ((1, 8, 8), (1, 8, 8), 0.5),
                                                     ((1, 9, 9), (1, 2, 2), 1.0), ((1, 9, 9), (1, 2, 2), 0.0)])
def test_dropblock_keep_matches_reference(spatial, block, p_origin):
    args = (KEY, 3, 1, 2, drop_threshold(p_origin))
    keep, kept = cpu.dropblock_keep(6, spatial, block, *args)
    ref_keep, ref_kept = reference.dropblock_keep(6, spatial, block, *args)
    assert torch.equal(keep, ref_keep) and kept == ref_kept == int(ref_keep.sum())


@pytest.mark.parametrize("dtype", DTYPES)
def test_apply_keep_matches_reference(dtype):
    x = _data((4, 3, 5, 6), dtype)
    for keep_shape in [(4, 3, 5, 6), (4, 1, 5, 6), (1, 3, 1, 6)]:
        keep = torch.rand(keep_shape, generator=torch.Generator().manual_seed(1)) < 0.6
        assert_bits_equal(cpu.apply_keep(x, keep, 1.7), reference.apply_keep(x, keep, 1.7))


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_maps_match_reference(dtype):
    g = torch.Generator().manual_seed(2)
    weight = _data((50, 7), dtype)
    indices = torch.randint(0, 50, (6, 9), generator=g)
    args = (KEY, 3, 1, 2, drop_threshold(0.4), 1 / 0.6)
    got = cpu.embedding_forward(weight, indices, *args)
    assert_bits_equal(got, reference.embedding_forward(weight, indices, *args))
    out = _data((6, 9, 7), dtype, seed=3)
    got = cpu.rows_masked_scale(out, indices, *args)
    assert_bits_equal(got, reference.rows_masked_scale(out, indices, *args))
    for padding_idx in (-1, int(indices[0, 0])):
        got = cpu.embedding_backward(out, indices, 50, padding_idx, *args)
        want = reference.embedding_backward(out, indices, 50, padding_idx, *args)
        assert_bits_equal(got, want)
        assert padding_idx < 0 or not got[padding_idx].any()
