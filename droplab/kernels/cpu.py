"""Numba CPU backend: the fused, parallel form of the reference backend, bit for bit.

Forward and backward are one pass over memory: Philox words for a chunk of a few thousand elements
are generated into a per-thread scratch buffer that stays in L1, then the chunk is read, scaled,
masked and written. Noise-shaped masks (an axis of size 1 in ``mask_shape``) generate the small
mask once and then make one fused pass ``y[i] = x[i] * scale if m[broadcast(i)] else 0`` over the
input, with the broadcast index walked run by run rather than divided out per element.

Arithmetic matches :func:`droplab.kernels.reference.apply_keep` exactly: the product is formed in
float32 (float64 for float64 inputs) with ``scale`` rounded to that type, then rounded once to the
input's dtype (round to nearest even); dropped elements are exactly ``+0`` even where ``x`` is inf
or nan. numba has no half types, so float16 and bfloat16 tensors travel as 16-bit integer views
and their bits are converted by hand.

The kernels are compiled on first use (``cache=True``: the machine code is cached on disk, so the JIT
cost is paid once per machine) and run on ``torch.get_num_threads()`` threads, clamped to numba's
pool. Masks never depend on the thread count: each element's word is a pure function of its index.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

try:  # numba is a core dependency, but a missing one only makes this backend unavailable
    import numba
    from llvmlite import ir as _ir
    from numba import njit, prange, types
    from numba.extending import intrinsic, overload
except ImportError:  # pragma: no cover - exercised only without numba
    numba = None

__all__ = ["available", "supports", "keep_mask", "masked_scale", "jit_seconds", "warmup"]

_SUPPORTED = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_CHUNK_BLOCKS = 1024  # Philox blocks (4 elements each) per scratch chunk: 16 KiB of words, L1-resident
_MIN_PER_THREAD = 1 << 16  # below this many elements per thread, fewer threads are faster
_MASK32 = 0xFFFFFFFF
_jit_seconds: dict[str, float] = {}


def available() -> bool:
    return numba is not None


def supports(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in _SUPPORTED and x.layout == torch.strided


def jit_seconds() -> dict[str, float]:
    """Seconds spent in each kernel's first call (compilation, or loading it from the disk cache)."""
    return dict(_jit_seconds)


if numba is not None:
    _M0 = np.uint64(0xD2511F53)
    _M1 = np.uint64(0xCD9E8D57)
    _W0 = np.uint64(0x9E3779B9)
    _W1 = np.uint64(0xBB67AE85)
    _LO = np.uint64(_MASK32)
    _S32 = np.uint64(32)
    _ZERO32 = np.float32(0.0)
    _ZERO64 = np.float64(0.0)

    # ------------------------------------------------------------------ bit casts (vectorizable)
    @intrinsic
    def _f32_from_bits(typingctx, bits):
        """The float32 whose bits are the low 32 bits of an integer (numba widens uint32 arithmetic)."""
        if not isinstance(bits, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            value = args[0]
            if bits.bitwidth > 32:
                value = builder.trunc(value, _ir.IntType(32))
            elif bits.bitwidth < 32:
                value = builder.zext(value, _ir.IntType(32))
            return builder.bitcast(value, _ir.FloatType())
        return types.float32(bits), codegen

    @intrinsic
    def _bits_from_f32(typingctx, value):
        """The 32 bits of a float32 as uint32."""
        if value != types.float32:
            return None

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], _ir.IntType(32))
        return types.uint32(value), codegen

    # ------------------------------------------------------------------ half-precision conversions
    @njit
    def _bf16_to_f32(h):
        return _f32_from_bits(np.uint32(np.uint16(h)) << np.uint32(16))

    @njit
    def _f32_to_bf16(v):
        u = _bits_from_f32(v)
        rounded = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
        # c10's round_to_nearest_even: every nan becomes the canonical quiet nan
        return np.int16(np.uint16(np.uint32(0x7FC0) if v != v else rounded))

    @njit
    def _f16_to_f32(h):
        h32 = np.uint32(h)
        sign = (h32 & np.uint32(0x8000)) << np.uint32(16)
        exp = (h32 >> np.uint32(10)) & np.uint32(0x1F)
        man = h32 & np.uint32(0x3FF)
        normal = _f32_from_bits(sign | ((exp + np.uint32(112)) << np.uint32(23)) | (man << np.uint32(13)))
        special = _f32_from_bits(sign | np.uint32(0x7F800000) | (man << np.uint32(13)))
        # subnormal (and zero): man * 2**-24, exact in float32
        tiny = np.float32(man) * np.float32(5.960464477539063e-08)
        tiny = -tiny if sign != np.uint32(0) else tiny
        return special if exp == np.uint32(31) else (tiny if exp == np.uint32(0) else normal)

    @njit
    def _f32_to_f16(v):
        u = _bits_from_f32(v)
        sign = (u >> np.uint32(16)) & np.uint32(0x8000)
        a = u & np.uint32(0x7FFFFFFF)
        # normal range: rebias the exponent (127 -> 15) and round the 13 dropped bits to nearest even
        r = a - np.uint32(0x38000000)
        normal = (r + np.uint32(0xFFF) + ((r >> np.uint32(13)) & np.uint32(1))) >> np.uint32(13)
        # subnormal range: shift the full significand right, rounding to nearest even
        e = a >> np.uint32(23)
        shift = np.uint32(126) - e if e < np.uint32(126) and e > np.uint32(101) else np.uint32(24)
        man = (a & np.uint32(0x7FFFFF)) | np.uint32(0x800000)
        q = man >> shift
        rem = man & ((np.uint32(1) << shift) - np.uint32(1))
        half = np.uint32(1) << (shift - np.uint32(1))
        sub = q + np.uint32(1) if rem > half or (rem == half and (q & np.uint32(1)) != np.uint32(0)) else q
        sub = sub if e > np.uint32(101) else np.uint32(0)
        nan = np.uint32(0x7E00) | ((a >> np.uint32(13)) & np.uint32(0x3FF))
        out = normal if a >= np.uint32(0x38800000) else sub
        out = np.uint32(0x7C00) if a >= np.uint32(0x477FF000) else out
        out = nan if a > np.uint32(0x7F800000) else out
        return np.uint16(sign | out)

    # ------------------------------------------------------------------ dtype dispatch at compile time
    def _load(v):
        raise NotImplementedError

    def _store(v, like):
        raise NotImplementedError

    def _zero(v):
        raise NotImplementedError

    @overload(_load)
    def _ol_load(v):
        if v == types.float32 or v == types.float64:
            return lambda v: v
        if v == types.uint16:  # float16 bits
            return lambda v: _f16_to_f32(v)
        if v == types.int16:  # bfloat16 bits
            return lambda v: _bf16_to_f32(v)
        return None

    @overload(_store)
    def _ol_store(v, like):
        if like == types.float32 or like == types.float64:
            return lambda v, like: v
        if like == types.uint16:
            return lambda v, like: _f32_to_f16(v)
        if like == types.int16:
            return lambda v, like: _f32_to_bf16(v)
        return None

    @overload(_zero)
    def _ol_zero(v):
        if v == types.float64:
            return lambda v: _ZERO64
        return lambda v: _ZERO32

    # ------------------------------------------------------------------ Philox4x32-10 (spec: droplab.rng)
    # Philox is inlined at numba-IR level: left to LLVM's inliner, the call stays in the block loop and
    # the loop is not vectorized
    @njit(inline="always")
    def _round(c0, c1, c2, c3, k0, k1):
        # the masks tell LLVM that both factors fit 32 bits: one vpmuludq per lane
        p0 = _M0 * (c0 & _LO)
        p1 = _M1 * (c2 & _LO)
        return (p1 >> _S32) ^ c1 ^ k0, p1 & _LO, (p0 >> _S32) ^ c3 ^ k1, p0 & _LO

    @njit(inline="always")
    def _philox(c0, c1, c2, c3, k0, k1):
        """Philox4x32-10 on uint64 lanes holding 32-bit words (rounds written out: no inner loop left
        for LLVM to unroll before it can vectorize the loop over blocks)."""
        k0b, k1b = (k0 + _W0) & _LO, (k1 + _W1) & _LO
        k0c, k1c = (k0b + _W0) & _LO, (k1b + _W1) & _LO
        k0d, k1d = (k0c + _W0) & _LO, (k1c + _W1) & _LO
        k0e, k1e = (k0d + _W0) & _LO, (k1d + _W1) & _LO
        k0f, k1f = (k0e + _W0) & _LO, (k1e + _W1) & _LO
        k0g, k1g = (k0f + _W0) & _LO, (k1f + _W1) & _LO
        k0h, k1h = (k0g + _W0) & _LO, (k1g + _W1) & _LO
        k0i, k1i = (k0h + _W0) & _LO, (k1h + _W1) & _LO
        k0j, k1j = (k0i + _W0) & _LO, (k1i + _W1) & _LO
        c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
        c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0b, k1b)
        c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0c, k1c)
        c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0d, k1d)
        c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0e, k1e)
        c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0f, k1f)
        c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0g, k1g)
        c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0h, k1h)
        c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0i, k1i)
        return _round(c0, c1, c2, c3, k0j, k1j)

    @njit
    def _fill_words(words64, first_block, nblocks, k0, k1, c1, c2, c3):
        """Words of blocks ``first_block ..`` in element order, two 32-bit words per uint64.

        Packing pairs into 64-bit lanes (little-endian: the low half is the lower element) turns the
        4-way interleaved store into a 2-way one, which keeps the Philox loop vectorized.
        """
        k0, k1, c1, c2, c3 = np.uint64(k0), np.uint64(k1), np.uint64(c1), np.uint64(c2), np.uint64(c3)
        for j in range(nblocks):
            w0, w1, w2, w3 = _philox(np.uint64(first_block + j), c1, c2, c3, k0, k1)
            words64[2 * j] = w0 | (w1 << _S32)
            words64[2 * j + 1] = w2 | (w3 << _S32)

    # ------------------------------------------------------------------ kernels
    # Inner loops index slices from 0 so that LLVM can prove indices non-negative and vectorize.
    @njit(parallel=True, cache=True, nogil=True)
    def _masked_scale_flat(x, y, k0, k1, c1, c2, c3, threshold, scale, nthreads):
        """y = x * scale where the element's own word >= threshold, else 0 (flat, contiguous)."""
        n = x.size
        nblocks = (n + 3) // 4
        per = -(-nblocks // nthreads)
        t = np.uint32(threshold)
        for tid in prange(nthreads):
            b_lo = tid * per
            b_hi = min(b_lo + per, nblocks)
            words64 = np.empty(2 * _CHUNK_BLOCKS, np.uint64)
            words = words64.view(np.uint32)
            for cb in range(b_lo, b_hi, _CHUNK_BLOCKS):
                nb = min(_CHUNK_BLOCKS, b_hi - cb)
                _fill_words(words64, cb, nb, k0, k1, c1, c2, c3)
                e_lo = 4 * cb
                e_n = min(4 * nb, n - e_lo)
                xs = x[e_lo:e_lo + e_n]
                ys = y[e_lo:e_lo + e_n]
                for i in range(e_n):
                    v = _load(xs[i]) * scale
                    ys[i] = _store(v if words[i] >= t else _zero(v), xs[0])

    @njit(parallel=True, cache=True, nogil=True)
    def _keep_flat(out, k0, k1, c1, c2, c3, threshold, nthreads):
        """out[i] = word(i) >= threshold for every mask index."""
        n = out.size
        nblocks = (n + 3) // 4
        per = -(-nblocks // nthreads)
        t = np.uint32(threshold)
        for tid in prange(nthreads):
            b_lo = tid * per
            b_hi = min(b_lo + per, nblocks)
            words64 = np.empty(2 * _CHUNK_BLOCKS, np.uint64)
            words = words64.view(np.uint32)
            for cb in range(b_lo, b_hi, _CHUNK_BLOCKS):
                nb = min(_CHUNK_BLOCKS, b_hi - cb)
                _fill_words(words64, cb, nb, k0, k1, c1, c2, c3)
                e_lo = 4 * cb
                e_n = min(4 * nb, n - e_lo)
                outs = out[e_lo:e_lo + e_n]
                for i in range(e_n):
                    outs[i] = words[i] >= t

    @njit(parallel=True, cache=True, nogil=True)
    def _masked_scale_broadcast(x, y, keep, sizes, mstrides, scale, nthreads):
        """y = x * scale where keep[mask index of the element], else 0.

        ``sizes`` is the collapsed input shape; ``mstrides`` the mask strides for it (0 along shared
        axes). Each thread takes a contiguous element range and walks it row by row (a row is the
        last collapsed axis), so the index arithmetic is paid once per row, not per element.
        """
        n = x.size
        ndim = sizes.size
        inner = sizes[ndim - 1]
        inner_stride = mstrides[ndim - 1]
        per = -(-n // nthreads)
        for tid in prange(nthreads):
            lo = tid * per
            hi = min(lo + per, n)
            pos = lo
            while pos < hi:
                row = pos // inner
                col = pos - row * inner
                stop = min(hi - pos, inner - col)
                moff = 0
                rem = row
                for d in range(ndim - 2, -1, -1):
                    moff += (rem % sizes[d]) * mstrides[d]
                    rem //= sizes[d]
                xs = x[pos:pos + stop]
                ys = y[pos:pos + stop]
                if inner_stride == 0:
                    if keep[moff]:
                        for i in range(stop):
                            ys[i] = _store(_load(xs[i]) * scale, xs[0])
                    else:
                        z = _store(_zero(_load(xs[0]) * scale), xs[0])
                        for i in range(stop):
                            ys[i] = z
                else:
                    ks = keep[moff + col:moff + col + stop]
                    for i in range(stop):
                        v = _load(xs[i]) * scale
                        ys[i] = _store(v if ks[i] else _zero(v), xs[0])
                pos += stop


_NUMBA_THREADS = numba.config.NUMBA_NUM_THREADS if numba is not None else 1
_BITS_VIEW = {torch.float16: torch.uint16, torch.bfloat16: torch.int16}
_NAMES = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def _threads(n: int) -> int:
    """Threads for ``n`` elements: torch's count, clamped to numba's pool and to the work available."""
    wanted = min(torch.get_num_threads(), _NUMBA_THREADS, -(-n // _MIN_PER_THREAD))
    wanted = max(wanted, 1)
    # numba's thread count is per calling thread and settable at any time: follow torch on every call
    numba.set_num_threads(wanted)
    return wanted


def _timed(name: str, fn, *args) -> None:
    if name in _jit_seconds:
        fn(*args)
        return
    start = time.perf_counter()
    fn(*args)
    _jit_seconds[name] = time.perf_counter() - start


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    """A contiguous tensor's memory as a flat numpy array (half types as 16-bit integer bits)."""
    view = _BITS_VIEW.get(t.dtype)
    if view is not None:
        t = t.view(view)
    return t.detach().view(-1).numpy()


def keep_mask(numel: int, key: tuple[int, int], step: int, replica: int, stream: int, threshold: int,
              device: torch.device | str | None = None) -> torch.Tensor:
    """Flat boolean keep mask for mask indices ``0 .. numel - 1`` (word >= threshold)."""
    numel = int(numel)
    if threshold >= 2**32 or numel == 0:
        return torch.zeros(numel, dtype=torch.bool, device=device)
    out = np.empty(numel, dtype=np.bool_)
    _timed("keep_mask", _keep_flat, out, key[0] & _MASK32, key[1] & _MASK32, step & _MASK32,
           replica & _MASK32, stream & _MASK32, int(threshold), _threads(numel))
    return torch.from_numpy(out).to(device) if device is not None else torch.from_numpy(out)


def _collapse(shape: tuple[int, ...], mask_shape: tuple[int, ...]) -> tuple[list[int], list[bool]]:
    """Merge neighbouring axes that are both shared or both not; drop axes of size 1."""
    sizes: list[int] = []
    shared: list[bool] = []
    for size, msize in zip(shape, mask_shape):
        if size == 1:
            continue
        is_shared = msize == 1
        if shared and shared[-1] == is_shared:
            sizes[-1] *= size
        else:
            sizes.append(size)
            shared.append(is_shared)
    return sizes, shared


def masked_scale(x: torch.Tensor, key: tuple[int, int], step: int, replica: int, stream: int,
                 threshold: int, scale: float, mask_shape: tuple[int, ...]) -> torch.Tensor:
    """Dropout's forward (and backward) map: keep by the mask of ``mask_shape``, scale kept values."""
    shape = x.shape
    if len(mask_shape) != len(shape):
        raise ValueError(f"mask_shape {tuple(mask_shape)} must have one entry per dimension of x {tuple(shape)}")
    y = torch.empty(shape, dtype=x.dtype)
    n = y.numel()
    if n == 0:
        return y
    if threshold >= 2**32:  # p = 1: nothing kept, and dropped elements are exactly zero
        return y.zero_()
    dtype = x.dtype
    scale_c = np.float64(scale) if dtype == torch.float64 else np.float32(scale)
    # the mask index is the logical row-major index, whatever x's strides: work on a C-order copy
    xa, ya = _as_numpy(x if x.is_contiguous() else x.contiguous()), _as_numpy(y)
    counters = (key[0] & _MASK32, key[1] & _MASK32, step & _MASK32, replica & _MASK32, stream & _MASK32)
    if all(s == m for s, m in zip(shape, mask_shape)):
        _timed(f"masked_scale[{_NAMES[dtype]}]", _masked_scale_flat, xa, ya, *counters, int(threshold), scale_c,
               _threads(n))
        return y
    sizes, shared = _collapse(tuple(shape), tuple(mask_shape))
    keep = keep_mask(math.prod(mask_shape), key, step, replica, stream, threshold).numpy()
    # mask strides over the collapsed axes: 0 along shared axes, row-major over the mask otherwise
    mstrides = [0] * len(sizes)
    running = 1
    for axis in range(len(sizes) - 1, -1, -1):
        if not shared[axis]:
            mstrides[axis] = running
            running *= sizes[axis]
    _timed(f"masked_scale_broadcast[{_NAMES[dtype]}]", _masked_scale_broadcast, xa, ya, keep,
           np.asarray(sizes, dtype=np.int64), np.asarray(mstrides, dtype=np.int64), scale_c, _threads(n))
    return y


def warmup(dtypes: tuple[torch.dtype, ...] = (torch.float32,)) -> dict[str, float]:
    """Compile (or load from the disk cache) the kernels for ``dtypes``; returns :func:`jit_seconds`."""
    for dtype in dtypes:
        x = torch.ones(8, 2, dtype=dtype)
        masked_scale(x, (1, 2), 0, 0, 0, 2**31, 2.0, (8, 2))
        masked_scale(x, (1, 2), 0, 0, 0, 2**31, 2.0, (8, 1))
    return jit_seconds()
