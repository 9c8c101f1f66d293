"""Numba CPU backend: the fused, parallel form of the reference backend, bit for bit.

Forward and backward are one pass over memory. The generator runs on the vector units: one Philox
block per SIMD lane, 16 lanes (two 512-bit registers per counter word) on AVX-512 CPUs and 8 on AVX2,
written as explicit LLVM vector code because LLVM's loop vectorizer stops at 256-bit registers on
AVX-512 CPUs. Element-wise dropout draws the words of one SIMD step (64 or 32 elements) and applies them
at once, so the arithmetic overlaps the loads and stores; the noise kernels generate the words of a few
thousand elements into a per-thread scratch buffer that stays in L1, then transform and apply them.
Noise-shaped masks (an axis of size 1 in ``mask_shape``) generate the small mask once and then make one
fused pass ``y[i] = x[i] * scale if m[broadcast(i)] else 0`` over the input, with the broadcast index
walked run by run rather than divided out per element.

Arithmetic matches :func:`droplab.kernels.reference.apply_keep` exactly: the product is formed in
float32 (float64 for float64 inputs) with ``scale`` rounded to that type, then rounded once to the
input's dtype (round to nearest even); dropped elements are exactly ``+0`` even where ``x`` is inf
or nan. numba has no half types, so float16 and bfloat16 tensors travel as 16-bit integer views
and their bits are converted by hand.

The kernels are compiled on first use (``cache=True``: the machine code is cached on disk, so the JIT
cost is paid once per machine) and run on ``torch.get_num_threads()`` threads, clamped to numba's
pool and to the work available; one thread's worth of work, and any call in a forked child, runs a
serial twin of the kernel that never touches numba's thread pool. Masks never depend on the thread
count: each element's word is a pure function of its index.
"""

from __future__ import annotations

import math
import os
import stat
import tempfile
import threading
import time
import warnings

import numpy as np
import torch

from ..rng import MAX_INDEX
from . import in_forked_child, reference
from .bounds import check_indices, check_rows

try:  # numba is a core dependency, but a missing one only makes this backend unavailable
    import numba
    from llvmlite import ir as _ir
    from numba import njit, prange, types
    from numba.extending import intrinsic, overload
except ImportError:  # pragma: no cover - exercised only without numba
    numba = None

# Fork safety. numba's default threading layer on Linux is GNU OpenMP, which kills or hangs a forked
# child (a DataLoader worker) that opens a parallel region after its parent (numba or torch) did; the
# workqueue layer survives a fork but costs 2-4x more per launch. So each kernel is compiled twice: a
# parallel twin for the process that imported droplab, and a serial twin (no thread pool at all) for one
# thread's worth of work and for every forked child (droplab.kernels notes the fork, from the moment
# droplab is imported, whether or not this module was). Parallel launches from several Python threads
# are serialized by the lock below.
_LAUNCH = threading.Lock()


def _new_launch_lock() -> None:
    global _LAUNCH
    _LAUNCH = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_launch_lock)


def _in_forked_child() -> bool:
    return in_forked_child()


def usable_after_fork() -> bool:
    """False in a child forked while numba compiled in another thread of its parent.

    numba's compiler lock is then held by a thread the child does not have (and LLVM may be mid-way through
    a module): the child's first compilation would wait forever. Asked by :mod:`droplab.kernels` right
    after a fork; the child then uses the reference backend.
    """
    if numba is None:
        return True
    try:
        from numba.core.compiler_lock import global_compiler_lock

        lock = global_compiler_lock._lock
    except (ImportError, AttributeError):  # another numba: no way to tell, so take the safe side
        return False
    if lock.acquire(False):
        lock.release()
        return True
    return False


__all__ = ["available", "usable_after_fork", "private_dir", "supports", "keep_mask", "masked_scale", "apply_keep",
           "noise", "gaussian_scale", "dropblock_keep", "embedding_forward", "rows_masked_scale", "embedding_backward",
           "jit_seconds", "warmup", "dropout_eager"]

_SUPPORTED = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_CHUNK_BLOCKS = 1024  # Philox blocks (4 elements each) per scratch chunk: 16 KiB of words, L1-resident
_MIN_PER_THREAD = 1 << 16  # below this many elements per thread, fewer threads are faster
_MASK32 = 0xFFFFFFFF
_jit_seconds: dict[str, float] = {}


def available() -> bool:
    return numba is not None


def supports(x: torch.Tensor) -> bool:
    # a negative-bit view (torch._neg_view) has no memory the kernel can read as values: the reference serves it
    return x.device.type == "cpu" and x.dtype in _SUPPORTED and x.layout == torch.strided and not x.is_neg()


def jit_seconds() -> dict[str, float]:
    """Seconds spent in each kernel's first call (compilation, or loading it from the disk cache)."""
    return dict(_jit_seconds)


# The fallback cache. numba's cache holds pickled indexes and machine code that it loads and runs: a cache
# directory someone else can write is code they can run in this process (CWE-377). The per-user directory
# under the shared temp dir is therefore created private (mode 0700) and used only while it still is: a
# directory (not a link) owned by this user that nobody else may write. Anything else there, planted by
# another user or loosened since, is never read; the kernels then compile without a disk cache.
_PRIVATE_UNCHECKED = object()
_private_cache: object = _PRIVATE_UNCHECKED


def private_dir(path: str) -> bool:
    """True when ``path`` is a directory, not a symlink, owned by this user and writable by no one else."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISDIR(info.st_mode) or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return False
    return not hasattr(os, "getuid") or info.st_uid == os.getuid()


def _fallback_cache_dir() -> str | None:
    """The per-user cache directory under the temp dir, created 0700; ``None`` when it is not private."""
    global _private_cache
    if _private_cache is not _PRIVATE_UNCHECKED:
        return _private_cache
    uid = os.getuid() if hasattr(os, "getuid") else None
    path = os.path.join(tempfile.gettempdir(), "droplab-numba-cache" + ("" if uid is None else f"-{uid}"))
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        path = None
    if path is not None and not private_dir(path):
        try:
            info = os.lstat(path)
            found = f"owner uid {info.st_uid}, mode {stat.filemode(info.st_mode)}"
        except OSError:
            found = "unreadable"
        warnings.warn(f"droplab: the kernel cache directory {path} is not private to this user ({found}); it is "
                      "not used, and the CPU kernels compile without a disk cache (set NUMBA_CACHE_DIR to a "
                      "directory of your own to keep one)", RuntimeWarning, stacklevel=2)
        path = None
    _private_cache = path
    return path


class _Kernel:
    """A kernel's two compiled twins: ``parallel`` (numba's thread pool) and ``serial`` (none)."""

    def __init__(self, parallel, serial) -> None:
        self.parallel = parallel
        self.serial = serial


def _renamed(fn, suffix: str):
    """A copy of ``fn`` under another qualified name: numba names its cache files after it, so the two
    twins of one kernel (same bytecode, different flags) never read each other's machine code."""
    import types as pytypes

    copy = pytypes.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + suffix, fn.__defaults__,
                                fn.__closure__)
    copy.__qualname__ = fn.__qualname__ + suffix
    copy.__doc__ = fn.__doc__
    return copy


def _jit(fn, parallel: bool):
    """``njit(nogil=True)`` with numba's on-disk cache wherever one can be written.

    numba raises at decoration when neither the package tree nor its user-wide directory is writable
    (a root-installed package used by another user, ``NUMBA_CACHE_DIR`` unset): then the cache goes to
    a private per-user directory under the temp dir (:func:`_fallback_cache_dir`), and where that is not
    private or fails the kernel compiles uncached.
    """
    try:
        return njit(parallel=parallel, cache=True, nogil=True)(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        pass
    fallback = _fallback_cache_dir()
    if fallback is None:
        return njit(parallel=parallel, nogil=True)(fn)
    previous = numba.config.CACHE_DIR
    numba.config.CACHE_DIR = fallback  # read by numba's locator at decoration only
    try:
        return njit(parallel=parallel, cache=True, nogil=True)(fn)
    except (RuntimeError, OSError):
        return njit(parallel=parallel, nogil=True)(fn)
    finally:
        numba.config.CACHE_DIR = previous


def _parallel_kernel(fn) -> _Kernel:
    """Compile ``fn`` (whose last argument is its thread count, looped over with ``prange``) twice."""
    return _Kernel(_jit(fn, parallel=True), _jit(_renamed(fn, "_serial"), parallel=False))


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

    def _philox_lane_count() -> int:
        """Blocks per SIMD step: 16 (two 512-bit registers per word) with AVX-512, else 8 (AVX2: two 256-bit
        registers; 16 lanes there spill registers and run 2x slower)."""
        if numba.config.CPU_NAME not in (None, "host"):
            return 8
        try:
            from llvmlite import binding

            return 16 if binding.get_host_cpu_features().get("avx512f", False) else 8
        except Exception:  # noqa: BLE001 - a guess at the vector width never decides correctness
            return 8

    _LANES = _philox_lane_count()

    @intrinsic
    def _philox_lanes(typingctx, words64, j, first_block, k0, k1, c1, c2, c3):
        """Philox4x32-10 of the ``_LANES`` blocks ``first_block + j ..`` into ``words64[2 j .. 2 (j + _LANES))``.

        Written as explicit LLVM vector code (one ``<_LANES x i64>`` per counter word, each lane a block):
        LLVM's loop vectorizer caps itself at 256-bit registers on AVX-512 CPUs, explicit vectors do not,
        and the ``mul`` of two values below 2**32 becomes one ``vpmuludq`` per 8 (or 4) lanes. The words
        are stored in element order: block ``b``'s four words at ``4 b .. 4 b + 3`` of the uint32 view.
        """
        if not isinstance(words64, types.Array) or words64.dtype != types.uint64:
            return None
        sig = types.void(words64, j, first_block, k0, k1, c1, c2, c3)

        def codegen(context, builder, signature, args):
            i32, i64 = _ir.IntType(32), _ir.IntType(64)
            vt = _ir.VectorType(i64, _LANES)
            wide = [context.cast(builder, v, t, types.uint64) for v, t in zip(args[1:], signature.args[1:])]
            j_, first, key0, key1, x1, x2, x3 = wide

            def splat(v):
                one = builder.insert_element(_ir.Constant(vt, _ir.Undefined), v, _ir.Constant(i32, 0))
                return builder.shuffle_vector(one, _ir.Constant(vt, _ir.Undefined),
                                              _ir.Constant(_ir.VectorType(i32, _LANES), [0] * _LANES))

            def const(v):
                return _ir.Constant(vt, [v] * _LANES)

            low = const(_MASK32)
            blocks = builder.add(splat(builder.add(first, j_)), _ir.Constant(vt, list(range(_LANES))))
            c = [builder.and_(blocks, low)] + [builder.and_(splat(v), low) for v in (x1, x2, x3)]
            k = [builder.and_(key0, _ir.Constant(i64, _MASK32)), builder.and_(key1, _ir.Constant(i64, _MASK32))]
            for _ in range(10):  # the round of droplab.rng's spec; products of two 32-bit values
                p0 = builder.mul(builder.and_(c[0], low), const(0xD2511F53))
                p1 = builder.mul(builder.and_(c[2], low), const(0xCD9E8D57))
                c = [builder.xor(builder.xor(builder.lshr(p1, const(32)), c[1]), splat(k[0])), p1,
                     builder.xor(builder.xor(builder.lshr(p0, const(32)), c[3]), splat(k[1])), p0]
                k = [builder.and_(builder.add(k[0], _ir.Constant(i64, 0x9E3779B9)), _ir.Constant(i64, _MASK32)),
                     builder.and_(builder.add(k[1], _ir.Constant(i64, 0xBB67AE85)), _ir.Constant(i64, _MASK32))]
            # the low 32 bits of each lane, four words per block in element order (pure shuffles)
            half = _ir.VectorType(i32, 2 * _LANES)

            def pairs(u, v):  # (u_0, v_0, u_1, v_1, ...): the low halves of the i64 lanes of u and v
                order = [e for lane in range(_LANES) for e in (2 * lane, 2 * _LANES + 2 * lane)]
                return builder.bitcast(builder.shuffle_vector(builder.bitcast(u, half), builder.bitcast(v, half),
                                                              _ir.Constant(_ir.VectorType(i32, 2 * _LANES), order)),
                                       vt)
            order = [e for lane in range(_LANES) for e in (lane, _LANES + lane)]
            out = builder.shuffle_vector(pairs(c[0], c[1]), pairs(c[2], c[3]),
                                         _ir.Constant(_ir.VectorType(i32, 2 * _LANES), order))
            ary = context.make_array(signature.args[0])(context, builder, args[0])
            ptr = builder.gep(ary.data, [builder.mul(j_, _ir.Constant(i64, 2))])
            store = builder.store(out, builder.bitcast(ptr, _ir.PointerType(_ir.VectorType(i64, 2 * _LANES))))
            store.align = 8
            return context.get_dummy_value()
        return sig, codegen

    @njit
    def _fill_words(words64, first_block, nblocks, k0, k1, c1, c2, c3):
        """Words of blocks ``first_block ..`` in element order, two 32-bit words per uint64.

        ``_LANES`` blocks per SIMD step while they fit ``words64``, then the scalar form for the rest.
        """
        k0, k1, c1, c2, c3 = np.uint64(k0), np.uint64(k1), np.uint64(c1), np.uint64(c2), np.uint64(c3)
        first_block = np.uint64(first_block)
        room = words64.size // 2
        j = 0
        while j < nblocks and j + _LANES <= room:
            _philox_lanes(words64, j, first_block, k0, k1, c1, c2, c3)
            j += _LANES
        for jj in range(j, nblocks):
            w0, w1, w2, w3 = _philox(first_block + np.uint64(jj), c1, c2, c3, k0, k1)
            words64[2 * jj] = w0 | (w1 << _S32)
            words64[2 * jj + 1] = w2 | (w3 << _S32)

    # ------------------------------------------------------------------ kernels
    # Inner loops index slices from 0 so that LLVM can prove indices non-negative and vectorize.
    @_parallel_kernel
    def _masked_scale_flat(x, y, k0, k1, c1, c2, c3, threshold, scale, nthreads):
        """y = x * scale where the element's own word >= threshold, else 0 (flat, contiguous).

        The words of ``_LANES`` blocks are drawn and applied at once (``4 * _LANES`` elements, a few
        registers' worth), so the generator's arithmetic overlaps the stream's loads and stores instead of
        alternating with them chunk by chunk: 1.4x faster at 2**20 elements, where both cost alike.
        """
        n = x.size
        nblocks = (n + 3) // 4
        per = -(-nblocks // nthreads)
        t = np.uint32(threshold)
        k0, k1, c1, c2, c3 = np.uint64(k0), np.uint64(k1), np.uint64(c1), np.uint64(c2), np.uint64(c3)
        for tid in prange(nthreads):
            b_lo = tid * per
            b_hi = min(b_lo + per, nblocks)
            e_hi = min(4 * b_hi, n)
            words64 = np.empty(2 * _LANES, np.uint64)
            words = words64.view(np.uint32)
            for b in range(b_lo, b_hi, _LANES):
                _philox_lanes(words64, 0, np.uint64(b), k0, k1, c1, c2, c3)  # past b_hi: drawn, unused
                e_lo = 4 * b
                e_n = min(4 * _LANES, e_hi - e_lo)
                xs = x[e_lo:e_lo + e_n]
                ys = y[e_lo:e_lo + e_n]
                for i in range(e_n):
                    v = _load(xs[i]) * scale
                    ys[i] = _store(v if words[i] >= t else _zero(v), xs[0])

    @_parallel_kernel
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

    @_parallel_kernel
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


    # ------------------------------------------------------------------ float32 transforms (spec: droplab.rng)
    # the constants are float32 and every operation is a single IEEE float32 op in the spec's order, so
    # the result is bit-identical to droplab.rng's pure-torch form (numba does not contract to fma)
    _F1 = np.float32(1.0)
    _FHALF = np.float32(0.5)
    _SQRT2 = np.float32(1.41421356)
    _LC = tuple(np.float32(c) for c in (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1,
                                        1.4249322787e-1, -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1,
                                        3.3333331174e-1))
    _LC0, _LC1, _LC2, _LC3, _LC4, _LC5, _LC6, _LC7, _LC8 = _LC
    _LN2_HI = np.float32(0.693359375)
    _LN2_LO = np.float32(-2.12194440e-4)
    _S0, _S1, _S2 = (np.float32(c) for c in (-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1))
    _C0, _C1, _C2 = (np.float32(c) for c in (2.443315711809948e-5, -1.388731625493765e-3, 4.166664568298827e-2))
    _HALF_PI = np.float32(1.5707963267948966)
    _SQRT_HALF = np.float32(0.70710678118654752440)
    _TWO_M22 = np.float32(2.0**-22)
    _TWO_M24 = np.float32(2.0**-24)
    _MINUS2 = np.float32(-2.0)

    @njit(inline="always")
    def _log32(v):
        bits = _bits_from_f32(v)
        e = np.int32((bits >> np.uint32(23)) & np.uint32(0xFF)) - np.int32(127)
        m = _f32_from_bits((bits & np.uint32(0x7FFFFF)) | np.uint32(0x3F800000))
        big = m > _SQRT2
        m = m * _FHALF if big else m
        ef = np.float32(e + np.int32(1)) if big else np.float32(e)
        x = m - _F1
        z = x * x
        poly = _LC0 * x + _LC1
        poly = poly * x + _LC2
        poly = poly * x + _LC3
        poly = poly * x + _LC4
        poly = poly * x + _LC5
        poly = poly * x + _LC6
        poly = poly * x + _LC7
        poly = poly * x + _LC8
        y = x * z * poly
        y = y + ef * _LN2_LO
        y = y - z * _FHALF
        return (x + y) + ef * _LN2_HI

    @njit(inline="always")
    def _sincos(top24):
        # int32 throughout: AVX2 converts int32 (not uint64) lanes to float32
        q = top24 >> np.int32(22)
        f = np.float32(top24 & np.int32(0x3FFFFF)) * _TWO_M22
        phi = (f - _FHALF) * _HALF_PI
        z = phi * phi
        ps = (_S0 * z + _S1) * z + _S2
        s = phi + (phi * z) * ps
        pc = (_C0 * z + _C1) * z + _C2
        c = (_F1 - z * _FHALF) + (z * z) * pc
        d = (c - s) * _SQRT_HALF
        a = (c + s) * _SQRT_HALF
        # quadrant q: cos = (d, -a, -d, a)[q], sin = (a, d, -a, -d)[q], as one select and two sign flips
        # (a chain of selects on q keeps LLVM from vectorizing the loop; negation is a flip of the sign bit)
        odd = (q & np.int32(1)) != np.int32(0)
        cos_bits = _bits_from_f32(a if odd else d) ^ (np.uint32((q + np.int32(1)) & np.int32(2)) << np.uint32(30))
        sin_bits = _bits_from_f32(d if odd else a) ^ (np.uint32(q & np.int32(2)) << np.uint32(30))
        return _f32_from_bits(cos_bits), _f32_from_bits(sin_bits)

    @njit(inline="always")
    def _normals(words, npairs, values):
        """values[2j], values[2j + 1] = r cos, r sin of word pair j: one loop, which LLVM vectorizes with
        interleaved (stride-2) loads and stores."""
        for j in range(npairs):
            u1 = np.float32(np.int32(words[2 * j] >> np.uint32(8)) + np.int32(1)) * _TWO_M24
            r = np.sqrt(_log32(u1) * _MINUS2)
            c, s = _sincos(np.int32(words[2 * j + 1] >> np.uint32(8)))
            values[2 * j] = r * c
            values[2 * j + 1] = r * s

    @njit(inline="always")
    def _logistic(w):
        a = np.int32(w >> np.uint32(9)) * np.int32(2) + np.int32(1)
        return _log32(np.float32(a)) - _log32(np.float32(np.int32(1 << 24) - a))

    @_parallel_kernel
    def _noise_fill(out, kind, k0, k1, c1, c2, c3, nthreads):
        """out[i] = standard normal (kind 0) or logistic (kind 1) float32 of mask index i."""
        n = out.size
        nblocks = (n + 3) // 4
        per = -(-nblocks // nthreads)
        for tid in prange(nthreads):
            b_lo = tid * per
            b_hi = min(b_lo + per, nblocks)
            words64 = np.empty(2 * _CHUNK_BLOCKS, np.uint64)
            words = words64.view(np.uint32)
            values = np.empty(4 * _CHUNK_BLOCKS, np.float32)
            for cb in range(b_lo, b_hi, _CHUNK_BLOCKS):
                nb = min(_CHUNK_BLOCKS, b_hi - cb)
                _fill_words(words64, cb, nb, k0, k1, c1, c2, c3)
                if kind == 0:  # word pair j: element 2j (r cos), 2j + 1 (r sin)
                    _normals(words, 2 * nb, values)
                else:  # element i from word i, in one simple loop over the uint32 view (it vectorizes)
                    for i in range(4 * nb):
                        values[i] = _logistic(words[i])
                e_lo = 4 * cb
                e_n = min(4 * nb, n - e_lo)
                outs = out[e_lo:e_lo + e_n]
                for i in range(e_n):
                    outs[i] = values[i]

    @_parallel_kernel
    def _gaussian_flat(x, y, k0, k1, c1, c2, c3, sigma, one, nthreads):
        """y = x * (1 + sigma * z) with z the element's own normal value (flat, contiguous)."""
        n = x.size
        nblocks = (n + 3) // 4
        per = -(-nblocks // nthreads)
        for tid in prange(nthreads):
            b_lo = tid * per
            b_hi = min(b_lo + per, nblocks)
            words64 = np.empty(2 * _CHUNK_BLOCKS, np.uint64)
            words = words64.view(np.uint32)
            factors = np.empty(4 * _CHUNK_BLOCKS, np.float32)
            for cb in range(b_lo, b_hi, _CHUNK_BLOCKS):
                nb = min(_CHUNK_BLOCKS, b_hi - cb)
                _fill_words(words64, cb, nb, k0, k1, c1, c2, c3)
                _normals(words, 2 * nb, factors)
                e_lo = 4 * cb
                e_n = min(4 * nb, n - e_lo)
                xs = x[e_lo:e_lo + e_n]
                ys = y[e_lo:e_lo + e_n]
                for i in range(e_n):
                    ys[i] = _store(_load(xs[i]) * (sigma * factors[i] + one), xs[0])

    @_parallel_kernel
    def _dropblock_keep(keep, kept, planes, sizes, block, k0, k1, c1, c2, c3, threshold, nthreads):
        """Block keep mask over ``planes`` maps of ``sizes = (D, H, W)``; ``kept[plane]`` counts kept positions.

        Origin ``o`` of plane ``pl`` (row-major on the ``(D-bd+1, H-bh+1, W-bw+1)`` grid) is mask index
        ``pl * origins + o``; a dropped origin (word < threshold) clears its block.
        """
        d, h, w = sizes[0], sizes[1], sizes[2]
        bd, bh, bw = block[0], block[1], block[2]
        od, oh, ow = d - bd + 1, h - bh + 1, w - bw + 1
        origins = od * oh * ow
        plane = d * h * w
        per = -(-planes // nthreads)
        t = np.uint32(threshold)
        scratch_blocks = origins // 4 + 2
        for tid in prange(nthreads):
            words64 = np.empty(2 * scratch_blocks, np.uint64)
            words = words64.view(np.uint32)
            for pl in range(tid * per, min(tid * per + per, planes)):
                kp = keep[pl * plane:(pl + 1) * plane]
                kp[:] = True
                first = pl * origins
                b0 = first // 4
                _fill_words(words64, b0, (first + origins + 3) // 4 - b0, k0, k1, c1, c2, c3)
                ws = words[first - 4 * b0:first - 4 * b0 + origins]
                dropped = 0
                for o in range(origins):
                    if ws[o] < t:
                        dropped += 1
                        z0 = o // (oh * ow)
                        y0 = (o // ow) % oh
                        x0 = o % ow
                        for dz in range(bd):
                            for dy in range(bh):
                                row = ((z0 + dz) * h + y0 + dy) * w + x0
                                kp[row:row + bw] = False
                count = 0
                if dropped:
                    for i in range(plane):
                        count += kp[i]
                else:
                    count = plane
                kept[pl] = count

    @njit(inline="always")
    def _word_of(v, k0, k1, c1, c2, c3):
        w0, w1, w2, w3 = _philox(np.uint64(v // 4), c1, c2, c3, k0, k1)
        r = v % 4
        return w0 if r == 0 else (w1 if r == 1 else (w2 if r == 2 else w3))

    @_parallel_kernel
    def _rows_masked_scale(src, idx, y, gather, k0, k1, c1, c2, c3, threshold, scale, nthreads):
        """y[r] = src[idx[r] if gather else r] * scale if word(idx[r]) >= threshold, else 0 (2-D, row-major)."""
        rows, dim = y.shape
        per = -(-rows // nthreads)
        k0, k1, c1, c2, c3 = np.uint64(k0), np.uint64(k1), np.uint64(c1), np.uint64(c2), np.uint64(c3)
        t = np.uint64(threshold)
        for tid in prange(nthreads):
            for r in range(tid * per, min(tid * per + per, rows)):
                v = idx[r]
                xs = src[v] if gather else src[r]
                ys = y[r]
                if _word_of(np.uint64(v), k0, k1, c1, c2, c3) >= t:
                    for i in range(dim):
                        ys[i] = _store(_load(xs[i]) * scale, xs[0])
                else:
                    z = _store(_zero(_load(xs[0]) * scale), xs[0])
                    for i in range(dim):
                        ys[i] = z

    @_parallel_kernel
    def _rows_scatter_add(grad, idx, out, skip, k0, k1, c1, c2, c3, threshold, scale, nthreads):
        """out[idx[r]] += grad[r] * scale for kept rows, in row order (columns split over threads)."""
        rows, dim = grad.shape
        keep = np.empty(rows, np.bool_)
        k0, k1, c1, c2, c3 = np.uint64(k0), np.uint64(k1), np.uint64(c1), np.uint64(c2), np.uint64(c3)
        t = np.uint64(threshold)
        for r in prange(rows):
            v = idx[r]
            keep[r] = v != skip and _word_of(np.uint64(v), k0, k1, c1, c2, c3) >= t
        per = -(-dim // nthreads)
        for tid in prange(nthreads):
            lo = tid * per
            hi = min(lo + per, dim)
            for r in range(rows):
                if keep[r]:
                    gs = grad[r, lo:hi]
                    os = out[idx[r], lo:hi]
                    for i in range(hi - lo):
                        os[i] += gs[i] * scale

_NUMBA_THREADS = numba.config.NUMBA_NUM_THREADS if numba is not None else 1
_BITS_VIEW = {torch.float16: torch.uint16, torch.bfloat16: torch.int16}
_NUMPY_FLOATS = {torch.float32: np.float32, torch.float64: np.float64}
# a row kernel copies and scales a row per Philox call, a small share of the elementwise kernel's work per
# element: it takes threads only for this many times the elementwise kernel's elements per thread
_ROW_COPY_SHARE = 16
_NAMES = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16", torch.bfloat16: "bfloat16"}

# ---------------------------------------------------------------------- the eager path's launch
# A small call's cost is its Python and numpy plumbing, not its arithmetic: the eager launch passes the
# tensors' addresses, and a jitted wrapper views them as arrays and runs the serial twin of the flat kernel.
_PROTO = {torch.float32: np.float32(0), torch.float64: np.float64(0), torch.float16: np.uint16(0),
          torch.bfloat16: np.int16(0)}  # the element type the kernels see (half types as their bits)

if numba is not None:
    @intrinsic
    def _pointer_at(typingctx, address, proto):
        """The integer ``address`` as a pointer to ``proto``'s type."""
        if not isinstance(address, types.Integer) or not isinstance(proto, (types.Float, types.Integer)):
            return None
        pointer = types.CPointer(proto)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(pointer))
        return pointer(address, proto), codegen

    _masked_scale_flat_serial = _masked_scale_flat.serial

    def _masked_scale_at(x_address, y_address, n, proto, k0, k1, c1, c2, c3, threshold, scale):
        """The serial flat kernel over ``n`` contiguous elements at two addresses."""
        x = numba.carray(_pointer_at(x_address, proto), n)
        y = numba.carray(_pointer_at(y_address, proto), n)
        _masked_scale_flat_serial(x, y, k0, k1, c1, c2, c3, threshold, scale, 1)

    _masked_scale_at = _jit(_masked_scale_at, parallel=False)


def dropout_eager(x: torch.Tensor, counters: tuple) -> torch.Tensor:
    """The eager path's launch (see :mod:`droplab.kernels.ops`): ``x * scale`` where the mask keeps, 0 elsewhere.

    ``x`` is a CPU tensor of a supported dtype; ``counters = (k0, k1, step, replica, threshold, scale,
    mask_shape)``, ``(k0, k1)`` the key's 32-bit words and ``mask_shape`` ``None`` for an element-wise mask,
    else the noise shape. One thread's worth of contiguous elements goes straight to the serial kernel by
    address; everything else takes :func:`masked_scale` and gets the input's dimension order back, as the
    registered op's output has.
    """
    k0, k1, step, replica, threshold, scale, mask_shape = counters
    n = x.numel()
    if mask_shape is None and 0 < n <= _MIN_PER_THREAD and threshold <= _MASK32 and x.is_contiguous():
        y = torch.empty_like(x)
        _masked_scale_at(x.data_ptr(), y.data_ptr(), n, _PROTO[x.dtype], k0, k1, step & _MASK32,
                         replica & _MASK32, 0, threshold,
                         np.float64(scale) if x.dtype is torch.float64 else np.float32(scale))
        return y
    y = masked_scale(x, (k0, k1), step, replica, 0, threshold, scale,
                     tuple(x.shape) if mask_shape is None else tuple(mask_shape))
    if x.is_contiguous():
        return y
    from .ops import dense_like  # the layout the registered op gives

    return dense_like(x).copy_(y)


def _threads(n: int) -> int:
    """Threads for ``n`` elements: torch's count, clamped to numba's pool and to the work available."""
    if _in_forked_child():
        return 1
    wanted = min(torch.get_num_threads(), _NUMBA_THREADS, -(-n // _MIN_PER_THREAD))
    return max(wanted, 1)


def _timed(name: str, kernel: _Kernel, *args) -> None:
    """Run a kernel (its last argument is the thread count), recording its first call's seconds.

    One thread's worth of work runs the serial twin: no thread-pool launch, nothing to lock, and safe in
    a forked child. More runs the parallel twin under the launch lock.
    """
    nthreads = args[-1]
    first = name not in _jit_seconds
    start = time.perf_counter()
    if nthreads == 1:
        kernel.serial(*args)
    else:
        with _LAUNCH:
            # numba's thread count is per calling thread and settable at any time: follow torch on every call
            numba.set_num_threads(nthreads)
            kernel.parallel(*args)
    if first:
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
    keep = keep_mask(math.prod(mask_shape), key, step, replica, stream, threshold)
    return _apply_keep_into(xa, ya, y, keep.numpy(), mask_shape, scale_c)


def _apply_keep_into(xa: np.ndarray, ya: np.ndarray, y: torch.Tensor, keep: np.ndarray,
                     mask_shape: tuple[int, ...], scale_c) -> torch.Tensor:
    sizes, shared = _collapse(tuple(y.shape), tuple(mask_shape))
    if not sizes:  # every axis of size 1: one element
        sizes, shared = [1], [False]
    # mask strides over the collapsed axes: 0 along shared axes, row-major over the mask otherwise
    mstrides = [0] * len(sizes)
    running = 1
    for axis in range(len(sizes) - 1, -1, -1):
        if not shared[axis]:
            mstrides[axis] = running
            running *= sizes[axis]
    _timed(f"masked_scale_broadcast[{_NAMES[y.dtype]}]", _masked_scale_broadcast, xa, ya, keep,
           np.asarray(sizes, dtype=np.int64), np.asarray(mstrides, dtype=np.int64), scale_c, _threads(y.numel()))
    return y


def _scale_for(dtype: torch.dtype, scale: float):
    return np.float64(scale) if dtype == torch.float64 else np.float32(scale)


def _key_counters(key, step, replica, stream) -> tuple[int, ...]:
    return (key[0] & _MASK32, key[1] & _MASK32, step & _MASK32, replica & _MASK32, stream & _MASK32)


def apply_keep(x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
    """``x * scale`` where the boolean ``keep`` (broadcast to ``x``) is True, exactly 0 elsewhere."""
    y = torch.empty(x.shape, dtype=x.dtype)
    if y.numel() == 0:
        return y
    xa, ya = _as_numpy(x.contiguous()), _as_numpy(y)
    keep_a = keep.contiguous().view(-1).numpy()
    return _apply_keep_into(xa, ya, y, keep_a, tuple(keep.shape), _scale_for(x.dtype, scale))


def noise(kind: str, numel: int, key: tuple[int, int], step: int, replica: int, stream: int,
          device: torch.device | str | None = None) -> torch.Tensor:
    """Flat float32 noise of mask indices ``0 .. numel - 1``: ``"normal"`` or ``"logistic"`` (spec: droplab.rng)."""
    out = np.empty(int(numel), dtype=np.float32)
    if numel:
        _timed(f"noise[{kind}]", _noise_fill, out, 0 if kind == "normal" else 1,
               *_key_counters(key, step, replica, stream), _threads(int(numel)))
    return torch.from_numpy(out)


def gaussian_scale(x: torch.Tensor, key: tuple[int, int], step: int, replica: int, stream: int, sigma: float,
                   mask_shape: tuple[int, ...]) -> torch.Tensor:
    """``x * (1 + sigma * z)`` with ``z`` the normal noise of ``mask_shape`` (broadcast), in one pass when
    the noise is element-wise."""
    if tuple(mask_shape) != tuple(x.shape):
        return reference.gaussian_from_noise(x, noise("normal", math.prod(mask_shape), key, step, replica, stream)
                                             .reshape(mask_shape), sigma)
    y = torch.empty(x.shape, dtype=x.dtype)
    if y.numel():
        xa, ya = _as_numpy(x.contiguous()), _as_numpy(y)
        _timed(f"gaussian[{_NAMES[x.dtype]}]", _gaussian_flat, xa, ya, *_key_counters(key, step, replica, stream),
               _scale_for(x.dtype, sigma), _scale_for(x.dtype, 1.0), _threads(y.numel()))
    return y


def dropblock_keep(planes: int, spatial: tuple[int, int, int], block: tuple[int, int, int], key: tuple[int, int],
                   step: int, replica: int, stream: int, threshold: int,
                   device: torch.device | str | None = None) -> tuple[torch.Tensor, int]:
    """DropBlock's keep mask ``(planes, D, H, W)`` from the origin words, and the number of kept positions."""
    keep = np.empty(planes * math.prod(spatial), dtype=np.bool_)
    kept = np.zeros(planes, dtype=np.int64)
    if threshold >= 2**32:  # p = 1: every origin dropped (2**32 does not fit the kernel's uint32 compare)
        keep[:] = False
    elif keep.size:
        _timed("dropblock_keep", _dropblock_keep, keep, kept, planes, np.asarray(spatial, dtype=np.int64),
               np.asarray(block, dtype=np.int64), *_key_counters(key, step, replica, stream), int(threshold),
               _threads(keep.size))
    return torch.from_numpy(keep).reshape((planes,) + tuple(spatial)), int(kept.sum())


def _rows(src: torch.Tensor, indices: torch.Tensor, out_rows: int, gather: bool, key, step, replica, stream,
          threshold: int, scale: float) -> torch.Tensor:
    dim = src.shape[-1]
    y = torch.empty(out_rows, dim, dtype=src.dtype)
    if y.numel():
        idx = indices.reshape(-1).to(torch.int64).contiguous().numpy()
        view = _BITS_VIEW.get(src.dtype)
        s2 = src.contiguous().reshape(-1, dim)
        s2, y2 = (s2.view(view), y.view(view)) if view is not None else (s2, y)
        _timed(f"rows[{_NAMES[src.dtype]}]", _rows_masked_scale, s2.numpy(), idx, y2.numpy(), gather,
               *_key_counters(key, step, replica, stream), int(threshold), _scale_for(src.dtype, scale),
               _threads(y.numel() // _ROW_COPY_SHARE))
    return y


def embedding_forward(weight: torch.Tensor, indices: torch.Tensor, key: tuple[int, int], step: int, replica: int,
                      stream: int, threshold: int, scale: float) -> torch.Tensor:
    """``weight[indices] * scale`` for rows whose vocabulary entry is kept, 0 for dropped ones."""
    check_indices(indices, weight.shape[0])  # before the kernel reads weight[indices]
    y = _rows(weight, indices, indices.numel(), True, key, step, replica, stream, threshold, scale)
    return y.reshape(tuple(indices.shape) + (weight.shape[1],))


def rows_masked_scale(src: torch.Tensor, indices: torch.Tensor, key: tuple[int, int], step: int, replica: int,
                      stream: int, threshold: int, scale: float) -> torch.Tensor:
    """``src`` (shape ``(*indices.shape, D)``) with row ``r`` kept iff vocabulary entry ``indices[r]`` is."""
    check_rows(src, indices, "src")
    check_indices(indices, MAX_INDEX)
    y = _rows(src, indices, indices.numel(), False, key, step, replica, stream, threshold, scale)
    return y.reshape(src.shape)


def embedding_backward(grad: torch.Tensor, indices: torch.Tensor, num_weights: int, padding_idx: int,
                       key: tuple[int, int], step: int, replica: int, stream: int, threshold: int,
                       scale: float) -> torch.Tensor:
    """Dense weight gradient: row ``v`` sums ``grad[r] * scale`` over the kept positions ``r`` reading ``v``."""
    check_rows(grad, indices, "grad")
    check_indices(indices, num_weights)  # before the kernel writes out[indices]
    if grad.dtype not in _NUMPY_FLOATS:
        return reference.embedding_backward(grad, indices, num_weights, padding_idx, key, step, replica, stream,
                                            threshold, scale)
    dim = grad.shape[-1]
    # calloc's zeros: one serial memset (or fresh zero pages), where torch.zeros opens torch's thread pool
    # right beside numba's, which on a busy machine cost several times the fill itself
    out = torch.from_numpy(np.zeros((num_weights, dim), dtype=_NUMPY_FLOATS[grad.dtype]))
    if grad.numel():
        idx = indices.reshape(-1).to(torch.int64).contiguous().numpy()
        _timed(f"rows_scatter[{_NAMES[grad.dtype]}]", _rows_scatter_add, grad.contiguous().reshape(-1, dim).numpy(),
               idx, out.numpy(), padding_idx, *_key_counters(key, step, replica, stream), int(threshold),
               _scale_for(grad.dtype, scale), _threads(grad.numel() // _ROW_COPY_SHARE))
    return out


def warmup(dtypes: tuple[torch.dtype, ...] = (torch.float32,)) -> dict[str, float]:
    """Compile (or load from the disk cache) the kernels for ``dtypes``; returns :func:`jit_seconds`."""
    rows = 2 * _MIN_PER_THREAD // 2  # enough work for two threads: the parallel twins compile too
    for dtype in dtypes:
        for x in (torch.ones(8, 2, dtype=dtype), torch.ones(rows, 2, dtype=dtype)):
            masked_scale(x, (1, 2), 0, 0, 0, 2**31, 2.0, tuple(x.shape))
            masked_scale(x, (1, 2), 0, 0, 0, 2**31, 2.0, (x.shape[0], 1))
        dropout_eager(torch.ones(8, dtype=dtype), (1, 2, 0, 0, 2**31, 2.0, None))  # the eager path's launch
    return jit_seconds()
