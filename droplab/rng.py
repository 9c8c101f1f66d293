r"""The keep-mask generator: the one written specification of droplab's randomness.

Every dropout mask droplab draws, on every backend, is a pure function of five integers and an
element index. Nothing is stateful, nothing is stored: backward, checkpoint recomputation, a resumed
run and another device all regenerate the same mask from the same integers.

Specification
-------------
Generator: Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3",
SC 2011), the generator of cuRAND, JAX and Triton. All arithmetic is on unsigned 32-bit words.

* Constants: ``M0 = 0xD2511F53``, ``M1 = 0xCD9E8D57`` (multipliers), ``W0 = 0x9E3779B9``,
  ``W1 = 0xBB67AE85`` (Weyl key increments).
* One round maps counter ``(c0, c1, c2, c3)`` and key ``(k0, k1)`` to::

      hi0, lo0 = mulhilo(M0, c0)          # the 64-bit product split in two 32-bit halves
      hi1, lo1 = mulhilo(M1, c2)
      (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)

  then the key is bumped, ``k0 += W0``, ``k1 += W1`` (mod 2**32). Ten rounds are applied; the key
  bump after the tenth does not matter. The output is the final counter, four 32-bit words.

Inputs:

* ``key = (seed mod 2**32, (seed >> 32) mod 2**32)``: the 64-bit seed, low word first.
* ``counter = (block mod 2**32, step mod 2**32, replica mod 2**32, stream mod 2**32)`` where
  ``block = index // 4``. ``step`` is the module's training-step counter, ``replica`` the
  data-parallel rank (0 unless masks are meant to differ across replicas), and ``stream`` separates
  independent masks drawn by one call site at one step (for example the input and the recurrent mask
  of an LSTM). Indices up to ``4 * 2**32`` (16 Gi elements) are supported.
* Element ``index`` takes output word ``index % 4`` of its block.

Keep decision: with drop probability ``p`` the threshold is ``t = floor(p * 2**32)`` computed
exactly (see :func:`drop_threshold`), and an element is **kept iff word >= t**. This is an integer
compare: ``p = 0`` keeps everything (t = 0), ``p = 1`` drops everything (t = 2**32 exceeds every
word), and the keep probability is exactly ``1 - t / 2**32``.

The index of an element is its position in the row-major (C-order) flattening of the *mask* tensor.
For element-wise dropout the mask has the input's shape; with a noise shape (an axis of size 1 shares
one mask value along that axis) the mask has the noise shape and is broadcast. The memory layout of
the input never matters: a transposed view gets the mask of its logical shape.

Noise from the same words (Gaussian and Concrete dropout): every transform below is a fixed
sequence of IEEE float32 operations (``+ - * sqrt``, exact bit casts, no fused multiply-add, no
libm call), so every backend reproduces it bit for bit:

* :func:`normal_from_words`: Box-Muller. Element ``i`` uses the two words ``2 (i // 2)`` and
  ``2 (i // 2) + 1`` of its block's four (block ``i // 4``, as for masks): radius
  ``r = sqrt(-2 ln u1)``, ``u1 = ((w_a >> 8) + 1) 2**-24``, angle ``2 pi u2``,
  ``u2 = (w_b >> 8) 2**-24``; even ``i`` takes ``r cos``, odd ``i`` takes ``r sin``. ``ln``, ``sin``
  and ``cos`` are Cephes' float32 polynomials (see :func:`log_f32`, :func:`sincos_turns_f32`).
* :func:`logistic_from_words`: ``ln(a) - ln(b)``, ``a = 2 (w >> 9) + 1``, ``b = 2**24 - a``: the
  logit of ``u = a 2**-24``, uniform on the 2**23 midpoints of ``(0, 1)``, so always finite.

Every backend (``droplab.kernels``) must be bit-identical to :func:`philox4x32` here.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "PHILOX_M0",
    "PHILOX_M1",
    "PHILOX_W0",
    "PHILOX_W1",
    "PHILOX_ROUNDS",
    "MAX_INDEX",
    "encode_seed",
    "seed_key",
    "split_seed",
    "drop_threshold",
    "keep_probability",
    "philox4x32",
    "philox4x32_scalar",
    "block_words",
    "words_at",
    "random_words",
    "keep_mask",
    "uniform_from_words",
    "log_f32",
    "sincos_turns_f32",
    "normal_from_words",
    "logistic_from_words",
    "random_uniform",
    "random_normal",
    "random_logistic",
]

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10
MASK32 = 0xFFFFFFFF
MAX_INDEX = 4 * 2**32


def split_seed(seed: int) -> tuple[int, int]:
    """Return the Philox key ``(k0, k1)`` of a seed: its low and high 32-bit words (mod 2**64)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, but got {type(seed).__name__}")
    s = seed % 2**64
    return s & MASK32, s >> 32


def encode_seed(seed: int) -> int:
    """The 64-bit seed as the signed value an int64 tensor holds (two's complement of ``seed mod 2**64``).

    The one place that encodes a seed: modules' ``seed`` buffers and the ops' seed tensors use it (through
    :func:`droplab.functional.seed_tensor`), and :func:`seed_key` reads it back, so any int (negative, or
    above 2**63) means its value mod 2**64.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, but got {type(seed).__name__}")
    s = seed % 2**64
    return s - 2**64 if s >= 2**63 else s


def seed_key(seed: int | torch.Tensor) -> tuple[int, int]:
    """The Philox key ``(k0, k1)`` of a seed given as an int or as an int64 tensor (:func:`encode_seed`)."""
    return split_seed(int(seed))


def drop_threshold(p: float) -> int:
    """Return ``floor(p * 2**32)`` exactly, for a drop probability ``0 <= p <= 1``.

    ``p`` is a binary float, so ``p * 2**32`` is exact (a power-of-two scaling) and ``floor`` of it
    is an exact integer in ``[0, 2**32]``.
    """
    # NaN fails the range test; math.isnan would cost a torch.compile graph break per new rate
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    return math.floor(float(p) * 2**32)


def keep_probability(p: float) -> float:
    """The exact keep probability the generator realizes for drop probability ``p``."""
    return 1.0 - drop_threshold(p) / 2**32


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """32x32 -> 64-bit product of a constant ``a`` and int64 tensor ``b`` of 32-bit words.

    The product can exceed 2**63, so it is formed from 16-bit halves of ``b`` to stay inside int64.
    """
    b_lo = b & 0xFFFF
    b_hi = b >> 16
    p_lo = a * b_lo  # < 2**48
    p_hi = a * b_hi  # < 2**48
    low_sum = p_lo + ((p_hi & 0xFFFF) << 16)  # < 2**49
    lo = low_sum & MASK32
    hi = (p_hi >> 16) + (low_sum >> 32)
    return hi & MASK32, lo


def philox4x32(
    c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor, k0: int, k1: int,
    rounds: int = PHILOX_ROUNDS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference Philox4x32 on int64 tensors holding 32-bit words (broadcasting counters)."""
    c0, c1, c2, c3 = (torch.as_tensor(c, dtype=torch.int64) & MASK32 for c in (c0, c1, c2, c3))
    c0, c1, c2, c3 = torch.broadcast_tensors(c0, c1, c2, c3)
    for _ in range(rounds):
        hi0, lo0 = _mulhilo(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + PHILOX_W0) & MASK32
        k1 = (k1 + PHILOX_W1) & MASK32
    return c0, c1, c2, c3


def philox4x32_scalar(counter: tuple[int, int, int, int], key: tuple[int, int],
                      rounds: int = PHILOX_ROUNDS) -> tuple[int, int, int, int]:
    """Philox4x32 on plain Python ints: the spec as a dozen lines, used to check the tensor versions."""
    c0, c1, c2, c3 = (c & MASK32 for c in counter)
    k0, k1 = (k & MASK32 for k in key)
    for _ in range(rounds):
        p0 = PHILOX_M0 * c0
        p1 = PHILOX_M1 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0, p1 & MASK32, (p0 >> 32) ^ c3 ^ k1, p0 & MASK32)
        k0 = (k0 + PHILOX_W0) & MASK32
        k1 = (k1 + PHILOX_W1) & MASK32
    return c0, c1, c2, c3


def _check_counter(step: int, replica: int, stream: int) -> None:
    for name, value in (("step", step), ("replica", replica), ("stream", stream)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, but got {value!r}")


def block_words(blocks: torch.Tensor, key: tuple[int, int], step: int, replica: int,
                stream: int) -> torch.Tensor:
    """The four words of each Philox block in ``blocks`` (int64), as an int64 tensor ``(*blocks.shape, 4)``.

    The one pure-torch evaluation of the generator: every reference path (:func:`random_words`,
    :func:`words_at`, :mod:`droplab.kernels.reference`) calls it. Counters live on ``blocks``' device.
    """
    counters = [torch.full((), v & MASK32, dtype=torch.int64, device=blocks.device) for v in (step, replica, stream)]
    return torch.stack(philox4x32(blocks, *counters, key[0] & MASK32, key[1] & MASK32), dim=-1)


def words_at(indices: torch.Tensor, key: tuple[int, int], step: int, replica: int, stream: int) -> torch.Tensor:
    """The word of each mask index in ``indices`` (any shape, int64): word ``index % 4`` of block ``index // 4``."""
    indices = indices.to(torch.int64)
    words = block_words(indices // 4, key, step, replica, stream)
    return words.gather(-1, (indices % 4).unsqueeze(-1)).squeeze(-1)


def random_words(numel: int, seed: int, step: int = 0, replica: int = 0, stream: int = 0,
                 *, offset: int = 0, device: torch.device | str | None = None) -> torch.Tensor:
    """The 32-bit words for mask indices ``offset .. offset + numel - 1``, as int64 (reference path)."""
    _check_counter(step, replica, stream)
    if numel < 0 or offset < 0 or offset + numel > MAX_INDEX:
        raise ValueError(f"mask indices must lie in [0, {MAX_INDEX}), got offset={offset}, numel={numel}")
    first_block = offset // 4
    blocks = torch.arange(first_block, (offset + numel + 3) // 4, dtype=torch.int64, device=device)
    words = block_words(blocks, split_seed(seed), step, replica, stream).reshape(-1)
    start = offset - 4 * first_block
    return words[start:start + numel]


def keep_mask(shape: int | tuple[int, ...] | torch.Size, p: float, seed: int, step: int = 0,
              replica: int = 0, stream: int = 0, *, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean keep mask of ``shape`` (True = kept) by the reference implementation."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    threshold = drop_threshold(p)
    words = random_words(math.prod(shape), seed, step, replica, stream, device=device)
    return (words >= threshold).reshape(shape)


def uniform_from_words(words: torch.Tensor, dtype: torch.dtype = torch.float32, *,
                       open_low: bool = False) -> torch.Tensor:
    r"""Turn 32-bit generator words into uniform floats: :math:`u = \lfloor w / 2^8 \rfloor \cdot 2^{-24}`.

    Specification: the top 24 bits of each word, ``(word >> 8)``, scaled by ``2**-24``. Every value is
    a multiple of ``2**-24`` in ``[0, 1 - 2**-24]``, so it is exact in float32 (and float64), and the
    result is the same on every device. With ``open_low=True`` the value is ``((word >> 8) + 1) * 2**-24``,
    in ``(0, 1]``: safe under ``log``. ``words`` is an int64 tensor of 32-bit words, as
    :func:`random_words` returns; the result has its shape and ``dtype`` (float16/bfloat16 round the
    exact float32 value once).
    """
    top = (words >> 8) + (1 if open_low else 0)
    return (top.to(torch.float64) * 2.0**-24).to(dtype)


# ---------------------------------------------------------------------------------------------------
# float32 transforms: Cephes' polynomials, written as explicit float32 operations so that every
# backend (numba, Triton, this pure-torch reference) computes the same bits
LOG_COEFFS = (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
              -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1)
LN2_HI, LN2_LO = 0.693359375, -2.12194440e-4
SQRT_HALF = 0.70710678118654752440
SIN_COEFFS = (-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1)
COS_COEFFS = (2.443315711809948e-5, -1.388731625493765e-3, 4.166664568298827e-2)
HALF_PI = 1.5707963267948966


def _f32(v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float32)


def log_f32(v: torch.Tensor) -> torch.Tensor:
    r"""Natural log of positive, normal float32 values: Cephes ``logf``, op for op.

    ``v = m 2^e`` with ``m`` in ``[1, 2)`` (from the bits); ``m > sqrt(2)`` is halved (``e + 1``);
    ``x = m - 1``, ``z = x x``, ``y = x z P(x)`` (Horner, :data:`LOG_COEFFS`),
    ``y = y + e \cdot \mathrm{LN2\_LO}``, ``y = y - 0.5 z``, result ``(x + y) + e \cdot \mathrm{LN2\_HI}``.
    Relative error about 1e-7.
    """
    bits = v.view(torch.int32)
    e = ((bits >> 23) & 0xFF) - 127
    m = ((bits & 0x7FFFFF) | 0x3F800000).view(torch.float32)
    big = m > _f32(1.41421356)
    m = torch.where(big, m * _f32(0.5), m)
    e = (e + big.to(torch.int32)).to(torch.float32)
    x = m - _f32(1.0)
    z = x * x
    poly = torch.full_like(x, LOG_COEFFS[0])
    for c in LOG_COEFFS[1:]:
        poly = poly * x + _f32(c)
    y = x * z * poly
    y = y + e * _f32(LN2_LO)
    y = y - z * _f32(0.5)
    return (x + y) + e * _f32(LN2_HI)


def sincos_turns_f32(top24: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(cos, sin)`` of :math:`2\pi u`, :math:`u` = ``top24 * 2**-24`` (``top24`` a 24-bit integer tensor).

    Quadrant ``q = top24 >> 22``; :math:`\varphi = (f - 1/2)\,\pi/2` with ``f = (top24 & 0x3FFFFF) 2**-22``
    (so :math:`2\pi u = (q + 1/2)\pi/2 + \varphi`, :math:`|\varphi| \le \pi/4`); ``s``, ``c`` are Cephes'
    ``sinf``/``cosf`` polynomials of :math:`\varphi` (:data:`SIN_COEFFS`, :data:`COS_COEFFS`), and with
    ``d = c - s``, ``a = c + s``, ``h = sqrt(1/2)``: quadrant 0..3 gives
    ``cos = h (d, -a, -d, a)[q]``, ``sin = h (a, d, -a, -d)[q]``.
    """
    q = top24 >> 22
    f = (top24 & 0x3FFFFF).to(torch.float32) * _f32(2.0**-22)
    phi = (f - _f32(0.5)) * _f32(HALF_PI)
    z = phi * phi
    ps = torch.full_like(z, SIN_COEFFS[0])
    for c in SIN_COEFFS[1:]:
        ps = ps * z + _f32(c)
    s = phi + (phi * z) * ps
    pc = torch.full_like(z, COS_COEFFS[0])
    for c in COS_COEFFS[1:]:
        pc = pc * z + _f32(c)
    c = (_f32(1.0) - z * _f32(0.5)) + (z * z) * pc
    h = _f32(SQRT_HALF)
    d, a = (c - s) * h, (c + s) * h
    cos = torch.where(q == 0, d, torch.where(q == 1, -a, torch.where(q == 2, -d, a)))
    sin = torch.where(q == 0, a, torch.where(q == 1, d, torch.where(q == 2, -a, -d)))
    return cos, sin


def normal_from_words(words: torch.Tensor) -> torch.Tensor:
    r"""Standard normal float32 values from a flat int64 tensor of words (even length), by Box-Muller.

    Elements ``2j`` and ``2j + 1`` share the word pair ``(2j, 2j + 1)``: :math:`r = \sqrt{-2 \ln u_1}`,
    :math:`u_1 = ((w_{2j} \gg 8) + 1)\,2^{-24}`, angle :math:`2\pi u_2`, :math:`u_2 = (w_{2j+1} \gg 8)\,2^{-24}`;
    element ``2j`` is :math:`r\cos`, ``2j + 1`` is :math:`r\sin` (:func:`log_f32`, :func:`sincos_turns_f32`).
    The 24-bit resolution bounds :math:`|z| \le \sqrt{48 \ln 2} \approx 5.77`.
    """
    pairs = words.reshape(-1, 2)
    u1 = ((pairs[:, 0] >> 8) + 1).to(torch.float32) * _f32(2.0**-24)
    # the correctly rounded float32 square root (torch's float32 sqrt on CPU can be 1 ulp off; the
    # float64 root rounded once to float32 is exact, as sqrt's double rounding is innocuous)
    r = torch.sqrt((log_f32(u1) * _f32(-2.0)).to(torch.float64)).to(torch.float32)
    cos, sin = sincos_turns_f32(pairs[:, 1] >> 8)
    return torch.stack((r * cos, r * sin), dim=1).reshape(-1)


def logistic_from_words(words: torch.Tensor) -> torch.Tensor:
    r"""Standard logistic float32 values :math:`\ln a - \ln b`, ``a = 2 (w >> 9) + 1``, ``b = 2**24 - a``.

    The logit of :math:`u = a\,2^{-24}`, uniform over the 2**23 midpoints of ``(0, 1)``: finite, within
    :math:`\pm 16.64`; both ``a`` and ``b`` are exact in float32.
    """
    a = (words >> 9) * 2 + 1
    return log_f32(a.to(torch.float32)) - log_f32((2**24 - a).to(torch.float32))


def _shaped_words(shape, seed: int, step: int, replica: int, stream: int, device, count: int) -> torch.Tensor:
    """Words ``0 .. count - 1`` of the stream, padded to whole blocks (a multiple of 4)."""
    _check_counter(step, replica, stream)
    if count < 0 or count > MAX_INDEX:
        raise ValueError(f"mask indices must lie in [0, {MAX_INDEX}), got numel={count}")
    blocks = torch.arange((count + 3) // 4, dtype=torch.int64, device=device)
    return block_words(blocks, split_seed(seed), step, replica, stream).reshape(-1)


def random_uniform(shape: int | tuple[int, ...] | torch.Size, seed: int, step: int = 0, replica: int = 0,
                   stream: int = 0, *, dtype: torch.dtype = torch.float32, open_low: bool = False,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """Uniform floats of ``shape`` from the generator: element ``i`` (row-major) uses word ``i``.

    The words are those a keep mask of the same ``(seed, step, replica, stream)`` would compare, turned
    into floats by :func:`uniform_from_words`. Draw masks and noise that must be independent from
    different ``stream`` values.
    """
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    numel = math.prod(shape)
    words = _shaped_words(shape, seed, step, replica, stream, device, numel)[:numel]
    return uniform_from_words(words, dtype, open_low=open_low).reshape(shape)


def random_normal(shape: int | tuple[int, ...] | torch.Size, seed: int, step: int = 0, replica: int = 0,
                  stream: int = 0, *, dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """Standard normal values of ``shape``: element ``i`` (row-major) is :func:`normal_from_words`' ``i``.

    Computed in float32 (bit-identical on every backend), then converted to ``dtype``.
    """
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    numel = math.prod(shape)
    words = _shaped_words(shape, seed, step, replica, stream, device, numel)
    return normal_from_words(words)[:numel].to(dtype).reshape(shape)


def random_logistic(shape: int | tuple[int, ...] | torch.Size, seed: int, step: int = 0, replica: int = 0,
                    stream: int = 0, *, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """Standard logistic values of ``shape``: element ``i`` (row-major) from word ``i``.

    The transform is :func:`logistic_from_words`, computed in float32, then converted to ``dtype``.
    """
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    numel = math.prod(shape)
    words = _shaped_words(shape, seed, step, replica, stream, device, numel)[:numel]
    return logistic_from_words(words).to(dtype).reshape(shape)
