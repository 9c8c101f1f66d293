r"""Triton backend: droplab's dropout on CUDA tensors, bit-identical to :mod:`droplab.kernels.reference`.

The kernels implement the generator of :mod:`droplab.rng` (Philox4x32-10 on unsigned 32-bit words,
counter ``(index // 4, step, replica, stream)``, key ``(seed lo, seed hi)``, keep iff
``word >= floor(p * 2**32)``) and the arithmetic of :func:`droplab.kernels.reference.apply_keep`:

.. math::

    y_i = \operatorname{round}_{\text{dtype}}\bigl(\operatorname{fp32}(x_i) \cdot \operatorname{fp32}(s)\bigr)
    \text{ if kept, else } 0

(float64 inputs compute in float64). Nothing but the integers is needed to redo it, so the same op
serves forward and backward and no mask is stored.

* Element-wise masks: one fused kernel. Each program handles ``BLOCK`` consecutive elements; one
  Philox call per 4 elements yields the words of those 4 elements, interleaved back into element
  order, so loads and stores are plain contiguous (vectorized) accesses.
* Noise-shaped masks (channel ``(N, C, 1, 1)``, per-example ``(N, 1, ...)``, any broadcast): the
  keep mask of the *mask* shape (``prod(mask_shape)`` bytes, usually tiny) is drawn by the Philox
  kernel, then a second kernel maps each element's logical index to its mask index and applies it.
  That buffer lives only for the call; autograd still saves nothing.
* ``p = 1`` (threshold ``2**32``, above every word) returns zeros without launching anything.

Triton is optional (``pip install "droplab[gpu]"``). With ``TRITON_INTERPRET=1`` set before this
module is imported, the same kernels run on CPU tensors through Triton's interpreter; the backend
then also accepts CPU tensors, which tests reach through ``use_backend("triton")`` (automatic
selection sends CPU tensors to the CPU backend).

Non-contiguous inputs are copied to contiguous first (the output is contiguous, as the reference's).
Inputs whose mask shape does not reduce to at most four runs of mask-following dimensions (rank 7+
with alternating shared axes) are served by the reference backend.
"""

from __future__ import annotations

import contextlib
import os
import struct

import torch

from . import reference

try:  # an optional dependency: without it the backend is unavailable, never an import error
    import triton
    import triton.language as tl
except Exception:  # noqa: BLE001 (a broken triton install raises more than ImportError)
    triton = None
    tl = None

__all__ = ["available", "supports", "keep_mask", "masked_scale", "noise", "gaussian_scale", "row_keep",
           "embedding_forward", "rows_masked_scale", "embedding_backward", "dropblock_keep", "BLOCK", "NUM_WARPS"]

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
BLOCK = 2048  # elements per program; a multiple of 4 (one Philox call per 4 elements)
NUM_WARPS = 8
MAX_FULL_GROUPS = 4  # runs of mask-following dimensions the broadcast kernel indexes
# offsets switch to int64 above this many elements (a module attribute so tests can lower it)
INDEX64_FROM = 2**31 - 2 * BLOCK
_TWO32 = 2**32
# the noise transforms round every float32 operation (droplab.rng's spec): no fma contraction on the GPU
_NO_FMA = {} if INTERPRET else {"enable_fp_fusion": False}


def available() -> bool:
    """True when Triton imports and can run: a CUDA device, or the interpreter (``TRITON_INTERPRET=1``)."""
    return triton is not None and (INTERPRET or torch.cuda.is_available())


def _device_ok(device: torch.device) -> bool:
    return device.type == "cuda" or (INTERPRET and device.type == "cpu")


def supports(x: torch.Tensor) -> bool:
    """CUDA tensors of float16/bfloat16/float32/float64 (and CPU tensors under the interpreter)."""
    # a negative-bit view's memory holds the negated values: the reference (torch ops) reads it right
    return triton is not None and x.dtype in SUPPORTED_DTYPES and _device_ok(x.device) and not x.is_neg()


if triton is not None:
    _M0: tl.constexpr = tl.constexpr(0xD2511F53)
    _M1: tl.constexpr = tl.constexpr(0xCD9E8D57)
    _W0: tl.constexpr = tl.constexpr(0x9E3779B9)
    _W1: tl.constexpr = tl.constexpr(0xBB67AE85)
    # counters and key change every call: specializing on their values would recompile for nothing
    _DYNAMIC = ["k0", "k1", "step", "replica", "stream", "threshold", "scale_bits"]

    @triton.jit
    def _philox(c0, c1, c2, c3, k0, k1):
        """Philox4x32-10 on uint32 tensors, exactly as :func:`droplab.rng.philox4x32`."""
        for _ in tl.static_range(10):
            hi0 = tl.umulhi(c0, _M0)
            lo0 = c0 * _M0
            hi1 = tl.umulhi(c2, _M1)
            lo1 = c2 * _M1
            c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
            k0 = k0 + _W0
            k1 = k1 + _W1
        return c0, c1, c2, c3

    @triton.jit
    def _block_keep(first, k0, k1, step, replica, stream, threshold, BLOCK: tl.constexpr):
        """Keep flags of mask indices ``first .. first + BLOCK - 1`` (``first`` a multiple of 4)."""
        blocks = (first // 4 + tl.arange(0, BLOCK // 4)).to(tl.uint32)  # index // 4 mod 2**32
        zero = tl.zeros([BLOCK // 4], dtype=tl.uint32)
        w0, w1, w2, w3 = _philox(blocks, zero + step.to(tl.uint32), zero + replica.to(tl.uint32),
                                 zero + stream.to(tl.uint32), k0.to(tl.uint32), k1.to(tl.uint32))
        # element index % 4 takes word index % 4: interleave the four words back into element order
        words = tl.interleave(tl.interleave(w0, w2), tl.interleave(w1, w3))
        return words >= threshold.to(tl.uint32)

    @triton.jit
    def _scale_value(scale_bits, COMPUTE_F64: tl.constexpr):
        # the scale travels as the bits of the compute type: exact, and float64 needs no tensor
        if COMPUTE_F64:
            return scale_bits.to(tl.int64).to(tl.float64, bitcast=True)
        else:
            return scale_bits.to(tl.uint32).to(tl.float32, bitcast=True)

    @triton.jit
    def _widen(x, scale):
        """``x`` in the compute type of ``scale``, exactly."""
        if x.dtype == tl.bfloat16:
            # by hand (the bits shifted up): the interpreter flushes bfloat16 subnormals to zero
            return (x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
        else:
            return x.to(scale.dtype)

    @triton.jit
    def _to_output(y, out_ptr):
        """Round the compute value once to the output dtype, to nearest even."""
        if out_ptr.dtype.element_ty == tl.bfloat16:
            # by hand: the interpreter does not round to nearest even; this matches cvt.rn.bf16.f32 exactly
            b = y.to(tl.uint32, bitcast=True)
            r = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
            r = tl.where(y != y, 0x7FC0, r)  # nan -> torch's canonical bf16 nan
            return r.to(tl.uint16).to(tl.bfloat16, bitcast=True)
        else:
            return y.to(out_ptr.dtype.element_ty)

    @triton.jit
    def _first(BLOCK: tl.constexpr, INDEX64: tl.constexpr):
        pid = tl.program_id(0)
        if INDEX64:
            return pid.to(tl.int64) * BLOCK
        else:
            return pid * BLOCK

    @triton.jit(do_not_specialize=_DYNAMIC)
    def _dropout_kernel(x_ptr, out_ptr, n, k0, k1, step, replica, stream, threshold, scale_bits,
                        BLOCK: tl.constexpr, INDEX64: tl.constexpr, COMPUTE_F64: tl.constexpr):
        """Element-wise mask: out = x * scale where kept, 0 elsewhere, for ``BLOCK`` elements."""
        first = _first(BLOCK, INDEX64)
        keep = _block_keep(first, k0, k1, step, replica, stream, threshold, BLOCK)
        offs = first + tl.arange(0, BLOCK)
        inside = offs < n
        x = tl.load(x_ptr + offs, mask=inside, eviction_policy="evict_first")
        scale = _scale_value(scale_bits, COMPUTE_F64)
        y = tl.where(keep, _widen(x, scale) * scale, 0.0)
        tl.store(out_ptr + offs, _to_output(y, out_ptr), mask=inside, eviction_policy="evict_first")

    @triton.jit(do_not_specialize=_DYNAMIC)
    def _keep_kernel(keep_ptr, n, k0, k1, step, replica, stream, threshold,
                     BLOCK: tl.constexpr, INDEX64: tl.constexpr):
        """Keep flags (uint8 0/1) of mask indices ``0 .. n - 1``."""
        first = _first(BLOCK, INDEX64)
        keep = _block_keep(first, k0, k1, step, replica, stream, threshold, BLOCK)
        offs = first + tl.arange(0, BLOCK)
        tl.store(keep_ptr + offs, keep.to(tl.uint8), mask=offs < n)

    @triton.jit
    def _mask_term(offs, x_stride, size, mask_stride):
        return ((offs // x_stride) % size) * mask_stride

    # the index map's sizes and strides only feed integer math: one compiled variant serves all shapes
    @triton.jit(do_not_specialize=["scale_bits"] + [f"{v}{g}" for v in ("xs", "sz", "ms") for g in range(4)])
    def _broadcast_kernel(x_ptr, keep_ptr, out_ptr, n, scale_bits,
                          xs0, sz0, ms0, xs1, sz1, ms1, xs2, sz2, ms2, xs3, sz3, ms3,
                          GROUPS: tl.constexpr, BLOCK: tl.constexpr, INDEX64: tl.constexpr,
                          COMPUTE_F64: tl.constexpr):
        """Noise-shaped mask: element ``i`` reads keep flag ``sum_g ((i // xs_g) % sz_g) * ms_g``."""
        first = _first(BLOCK, INDEX64)
        offs = first + tl.arange(0, BLOCK)
        inside = offs < n
        m = tl.zeros_like(offs)
        if GROUPS > 0:
            m += _mask_term(offs, xs0, sz0, ms0)
        if GROUPS > 1:
            m += _mask_term(offs, xs1, sz1, ms1)
        if GROUPS > 2:
            m += _mask_term(offs, xs2, sz2, ms2)
        if GROUPS > 3:
            m += _mask_term(offs, xs3, sz3, ms3)
        keep = tl.load(keep_ptr + m, mask=inside, other=0) != 0
        x = tl.load(x_ptr + offs, mask=inside, eviction_policy="evict_first")
        scale = _scale_value(scale_bits, COMPUTE_F64)
        y = tl.where(keep, _widen(x, scale) * scale, 0.0)
        tl.store(out_ptr + offs, _to_output(y, out_ptr), mask=inside, eviction_policy="evict_first")


    # ------------------------------------------------------------------ float32 noise (spec: droplab.rng)
    # the float32 operations of droplab.rng's log_f32 / sincos_turns_f32, one by one; launched with
    # enable_fp_fusion=False so that no multiply-add is contracted into an fma (the spec rounds each)
    @triton.jit
    def _log32(v):
        bits = v.to(tl.int32, bitcast=True)
        e = ((bits >> 23) & 0xFF) - 127
        m = ((bits & 0x7FFFFF) | 0x3F800000).to(tl.float32, bitcast=True)
        big = m > 1.41421356
        m = tl.where(big, m * 0.5, m)
        ef = tl.where(big, e + 1, e).to(tl.float32)
        x = m - 1.0
        z = x * x
        poly = x * 7.0376836292e-2 + -1.1514610310e-1
        poly = poly * x + 1.1676998740e-1
        poly = poly * x + -1.2420140846e-1
        poly = poly * x + 1.4249322787e-1
        poly = poly * x + -1.6668057665e-1
        poly = poly * x + 2.0000714765e-1
        poly = poly * x + -2.4999993993e-1
        poly = poly * x + 3.3333331174e-1
        y = x * z * poly
        y = y + ef * -2.12194440e-4
        y = y - z * 0.5
        return (x + y) + ef * 0.693359375

    @triton.jit
    def _normal_pair(wa, wb):
        """``(r cos, r sin)`` of one Box-Muller word pair (uint32 tensors)."""
        u1 = ((wa >> 8).to(tl.int32) + 1).to(tl.float32) * 5.9604644775390625e-08
        r = tl.sqrt_rn(_log32(u1) * -2.0)
        top = (wb >> 8).to(tl.int32)
        q = top >> 22
        f = (top & 0x3FFFFF).to(tl.float32) * 2.384185791015625e-07
        phi = (f - 0.5) * 1.5707963267948966
        z = phi * phi
        ps = z * -1.9515295891e-4 + 8.3321608736e-3
        ps = ps * z + -1.6666654611e-1
        s = phi + (phi * z) * ps
        pc = z * 2.443315711809948e-5 + -1.388731625493765e-3
        pc = pc * z + 4.166664568298827e-2
        c = (1.0 - z * 0.5) + (z * z) * pc
        d = (c - s) * 0.7071067811865476
        a = (c + s) * 0.7071067811865476
        cos = tl.where(q == 0, d, tl.where(q == 1, -a, tl.where(q == 2, -d, a)))
        sin = tl.where(q == 0, a, tl.where(q == 1, d, tl.where(q == 2, -a, -d)))
        return r * cos, r * sin

    @triton.jit
    def _logistic(w):
        a = (w >> 9).to(tl.int32) * 2 + 1
        return _log32(a.to(tl.float32)) - _log32((16777216 - a).to(tl.float32))

    @triton.jit(do_not_specialize=["k0", "k1", "step", "replica", "stream"])
    def _noise_kernel(out_ptr, n, k0, k1, step, replica, stream, NORMAL: tl.constexpr, BLOCK: tl.constexpr,
                      INDEX64: tl.constexpr):
        """Float32 normal (``NORMAL``) or logistic noise of mask indices ``first .. first + BLOCK - 1``."""
        first = _first(BLOCK, INDEX64)
        blocks = (first // 4 + tl.arange(0, BLOCK // 4)).to(tl.uint32)
        zero = tl.zeros([BLOCK // 4], dtype=tl.uint32)
        w0, w1, w2, w3 = _philox(blocks, zero + step.to(tl.uint32), zero + replica.to(tl.uint32),
                                 zero + stream.to(tl.uint32), k0.to(tl.uint32), k1.to(tl.uint32))
        if NORMAL:  # elements 4b, 4b + 1 from the pair (w0, w1); 4b + 2, 4b + 3 from (w2, w3)
            v0, v1 = _normal_pair(w0, w1)
            v2, v3 = _normal_pair(w2, w3)
        else:
            v0, v1, v2, v3 = _logistic(w0), _logistic(w1), _logistic(w2), _logistic(w3)
        values = tl.interleave(tl.interleave(v0, v2), tl.interleave(v1, v3))
        offs = first + tl.arange(0, BLOCK)
        tl.store(out_ptr + offs, values, mask=offs < n)

    @triton.jit(do_not_specialize=["k0", "k1", "step", "replica", "stream", "threshold"])
    def _row_keep_kernel(idx_ptr, keep_ptr, n, k0, k1, step, replica, stream, threshold, BLOCK: tl.constexpr):
        """keep[r] = word(idx[r]) >= threshold: the keep flag of each looked-up vocabulary entry."""
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = offs < n
        v = tl.load(idx_ptr + offs, mask=inside, other=0)
        zero = tl.zeros([BLOCK], dtype=tl.uint32)
        w0, w1, w2, w3 = _philox((v // 4).to(tl.uint32), zero + step.to(tl.uint32), zero + replica.to(tl.uint32),
                                 zero + stream.to(tl.uint32), k0.to(tl.uint32), k1.to(tl.uint32))
        r = v % 4
        word = tl.where(r == 0, w0, tl.where(r == 1, w1, tl.where(r == 2, w2, w3)))
        tl.store(keep_ptr + offs, (word >= threshold.to(tl.uint32)).to(tl.uint8), mask=inside)


def _scale_bits(scale: float, compute: torch.dtype) -> int:
    """Bits of ``scale`` rounded once to the compute type, as the reference's ``torch.tensor(scale, dtype)``."""
    if compute == torch.float64:
        return struct.unpack("<q", struct.pack("<d", scale))[0]
    return struct.unpack("<I", struct.pack("<f", torch.tensor(scale, dtype=torch.float32).item()))[0]


def _full_groups(shape: tuple[int, ...], mask_shape: tuple[int, ...]) -> list[tuple[int, int, int]] | None:
    """``(x_stride, size, mask_stride)`` of each run of dimensions the mask follows, outermost first.

    Dimensions of size 1 are dropped and neighbours of the same kind (mask follows / mask shared)
    merged, so channel dropout is one run and element-wise dropout one run of the whole tensor.
    ``None`` when ``mask_shape`` does not broadcast to ``shape`` the way noise shapes do.
    """
    if len(mask_shape) > len(shape):
        return None
    mask_shape = (1,) * (len(shape) - len(mask_shape)) + tuple(mask_shape)
    runs: list[list] = []  # [size, follows]
    for size, m in zip(shape, mask_shape):
        if m not in (1, size):
            return None
        if size == 1:
            continue
        follows = m == size
        if runs and runs[-1][1] == follows:
            runs[-1][0] *= size
        else:
            runs.append([size, follows])
    groups = []
    x_stride = mask_stride = 1
    for size, follows in reversed(runs):
        if follows:
            groups.append((x_stride, size, mask_stride))
            mask_stride *= size
        x_stride *= size
    return groups[::-1]


def _counters(key, step, replica, stream, threshold):
    return dict(k0=key[0] % _TWO32, k1=key[1] % _TWO32, step=step % _TWO32, replica=replica % _TWO32,
                stream=stream % _TWO32, threshold=threshold)


def _guard(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _grid(n: int) -> tuple[int]:
    return ((n + BLOCK - 1) // BLOCK,)


def keep_mask(numel: int, key: tuple[int, int], step: int, replica: int, stream: int, threshold: int,
              device: torch.device | str | None = None) -> torch.Tensor:
    """Flat boolean keep mask of mask indices ``0 .. numel - 1`` (True = kept)."""
    device = torch.device(device if device is not None else "cpu")
    if triton is None or not _device_ok(device):
        return reference.keep_mask(numel, key, step, replica, stream, threshold, device)
    if threshold >= _TWO32 or numel == 0:
        return torch.zeros(numel, dtype=torch.bool, device=device)
    out = torch.empty(numel, dtype=torch.uint8, device=device)
    with _guard(device):
        _keep_kernel[_grid(numel)](out, numel, **_counters(key, step, replica, stream, threshold), BLOCK=BLOCK,
                                   INDEX64=numel >= INDEX64_FROM, num_warps=NUM_WARPS)
    return out.view(torch.bool)


def masked_scale(x: torch.Tensor, key: tuple[int, int], step: int, replica: int, stream: int,
                 threshold: int, scale: float, mask_shape: tuple[int, ...]) -> torch.Tensor:
    """Dropout's forward (and backward) map: ``x * scale`` where the mask of ``mask_shape`` keeps, else 0."""
    groups = _full_groups(tuple(x.shape), tuple(mask_shape))
    if not supports(x) or groups is None or len(groups) > MAX_FULL_GROUPS:
        return reference.masked_scale(x, key, step, replica, stream, threshold, scale, mask_shape)
    if threshold >= _TWO32:  # p = 1: every element dropped, exactly 0 (even inf and nan)
        return torch.zeros(x.shape, dtype=x.dtype, device=x.device)
    x = x.contiguous()
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    n = x.numel()
    if n == 0:
        return out
    compute_f64 = x.dtype == torch.float64
    bits = _scale_bits(scale, torch.float64 if compute_f64 else torch.float32)
    index64 = n >= INDEX64_FROM
    elementwise = len(groups) == 1 and groups[0] == (1, n, 1)
    with _guard(x.device):
        if elementwise:
            _dropout_kernel[_grid(n)](x, out, n, **_counters(key, step, replica, stream, threshold), scale_bits=bits,
                                      BLOCK=BLOCK, INDEX64=index64, COMPUTE_F64=compute_f64, num_warps=NUM_WARPS)
            return out
        mask_numel = 1
        for _, size, _ in groups:
            mask_numel *= size
        keep = keep_mask(mask_numel, key, step, replica, stream, threshold, x.device).view(torch.uint8)
        padded = list(groups) + [(1, 1, 0)] * (MAX_FULL_GROUPS - len(groups))
        meta = [v for group in padded for v in group]
        _broadcast_kernel[_grid(n)](x, keep, out, n, bits, *meta, GROUPS=len(groups), BLOCK=BLOCK,
                                    INDEX64=index64, COMPUTE_F64=compute_f64, num_warps=NUM_WARPS)
    return out


def noise(kind: str, numel: int, key: tuple[int, int], step: int, replica: int, stream: int,
          device: torch.device | str | None = None) -> torch.Tensor:
    """Flat float32 ``"normal"`` or ``"logistic"`` noise of mask indices ``0 .. numel - 1`` (spec: droplab.rng)."""
    device = torch.device(device if device is not None else "cpu")
    if triton is None or not _device_ok(device):
        return reference.noise(kind, numel, key, step, replica, stream, device)
    out = torch.empty(numel, dtype=torch.float32, device=device)
    if numel:
        counters = _counters(key, step, replica, stream, 0)
        counters.pop("threshold")
        with _guard(device):
            _noise_kernel[_grid(numel)](out, numel, **counters, NORMAL=kind == "normal", BLOCK=BLOCK,
                                        INDEX64=numel >= INDEX64_FROM, num_warps=NUM_WARPS,
                                        **_NO_FMA)
    return out


def gaussian_scale(x: torch.Tensor, key: tuple[int, int], step: int, replica: int, stream: int, sigma: float,
                   mask_shape: tuple[int, ...]) -> torch.Tensor:
    """``x * (1 + sigma * z)``: the noise from the Triton kernel, the product as the reference forms it."""
    numel = 1
    for size in mask_shape:
        numel *= size
    z = noise("normal", numel, key, step, replica, stream, x.device).reshape(mask_shape)
    return reference.gaussian_from_noise(x, z, sigma)


def row_keep(indices: torch.Tensor, key, step, replica, stream, threshold: int) -> torch.Tensor:
    """Keep flag of each vocabulary entry in ``indices`` (same shape), by the Triton kernel."""
    if triton is None or not _device_ok(indices.device):
        return reference.row_keep(indices, key, step, replica, stream, threshold)
    if threshold >= _TWO32:
        return torch.zeros(indices.shape, dtype=torch.bool, device=indices.device)
    flat = indices.reshape(-1).to(torch.int64).contiguous()
    keep = torch.empty(flat.numel(), dtype=torch.uint8, device=indices.device)
    if flat.numel():
        with _guard(indices.device):
            _row_keep_kernel[_grid(flat.numel())](flat, keep, flat.numel(),
                                                  **_counters(key, step, replica, stream, threshold), BLOCK=BLOCK,
                                                  num_warps=NUM_WARPS)
    return keep.view(torch.bool).reshape(indices.shape)


def embedding_forward(weight, indices, key, step, replica, stream, threshold, scale):
    """``weight[indices] * scale`` for kept vocabulary entries, 0 for dropped ones."""
    return reference.embedding_forward(weight, indices, key, step, replica, stream, threshold, scale,
                                       row_keep=row_keep)


def rows_masked_scale(src, indices, key, step, replica, stream, threshold, scale):
    """``src`` with row ``r`` kept iff vocabulary entry ``indices[r]`` is."""
    return reference.rows_masked_scale(src, indices, key, step, replica, stream, threshold, scale, row_keep=row_keep)


def embedding_backward(grad, indices, num_weights, padding_idx, key, step, replica, stream, threshold, scale):
    """The dense weight gradient of :func:`embedding_forward`."""
    return reference.embedding_backward(grad, indices, num_weights, padding_idx, key, step, replica, stream,
                                        threshold, scale, row_keep=row_keep)


def dropblock_keep(planes, spatial, block, key, step, replica, stream, threshold, device=None):
    """DropBlock's keep mask: the Triton kernel's origin keep mask, grown into blocks by a max-pool."""
    origins = 1
    for s, b in zip(spatial, block):
        origins *= s - b + 1
    keep = keep_mask(planes * origins, key, step, replica, stream, threshold, device)
    return reference.grow_blocks(keep, planes, tuple(spatial), tuple(block))
