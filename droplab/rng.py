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
    "split_seed",
    "drop_threshold",
    "keep_probability",
    "philox4x32",
    "philox4x32_scalar",
    "random_words",
    "keep_mask",
    "uniform_from_words",
    "random_uniform",
    "random_normal",
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


def drop_threshold(p: float) -> int:
    """Return ``floor(p * 2**32)`` exactly, for a drop probability ``0 <= p <= 1``.

    ``p`` is a binary float, so ``p * 2**32`` is exact (a power-of-two scaling) and ``floor`` of it
    is an exact integer in ``[0, 2**32]``.
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)) or math.isnan(p) or not 0.0 <= p <= 1.0:
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


def random_words(numel: int, seed: int, step: int = 0, replica: int = 0, stream: int = 0,
                 *, offset: int = 0, device: torch.device | str | None = None) -> torch.Tensor:
    """The 32-bit words for mask indices ``offset .. offset + numel - 1``, as int64 (reference path)."""
    _check_counter(step, replica, stream)
    if numel < 0 or offset < 0 or offset + numel > MAX_INDEX:
        raise ValueError(f"mask indices must lie in [0, {MAX_INDEX}), got offset={offset}, numel={numel}")
    k0, k1 = split_seed(seed)
    first_block = offset // 4
    last_block = (offset + numel + 3) // 4
    blocks = torch.arange(first_block, last_block, dtype=torch.int64, device=device)
    words = philox4x32(blocks, torch.tensor(step), torch.tensor(replica), torch.tensor(stream), k0, k1)
    words = torch.stack(words, dim=1).reshape(-1)  # word index % 4 of block index // 4
    start = offset - 4 * first_block
    return words[start:start + numel]


def keep_mask(shape: int | tuple[int, ...] | torch.Size, p: float, seed: int, step: int = 0,
              replica: int = 0, stream: int = 0, *, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean keep mask of ``shape`` (True = kept) by the reference implementation."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    numel = math.prod(shape)
    threshold = drop_threshold(p)
    words = random_words(numel, seed, step, replica, stream, device=device)
    return (words >= threshold).reshape(shape)


def _words_on_device(numel: int, seed: int, step: int, replica: int, stream: int,
                     device: torch.device | str | None) -> torch.Tensor:
    """``random_words(numel, ...)`` with every counter tensor on ``device`` (no host-device mixing)."""
    _check_counter(step, replica, stream)
    if numel < 0 or numel > MAX_INDEX:
        raise ValueError(f"mask indices must lie in [0, {MAX_INDEX}), got numel={numel}")
    k0, k1 = split_seed(seed)
    blocks = torch.arange((numel + 3) // 4, dtype=torch.int64, device=device)
    counters = (torch.full((), v, dtype=torch.int64, device=device) for v in (step, replica, stream))
    return torch.stack(philox4x32(blocks, *counters, k0, k1), dim=1).reshape(-1)[:numel]


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


def random_uniform(shape: int | tuple[int, ...] | torch.Size, seed: int, step: int = 0, replica: int = 0,
                   stream: int = 0, *, dtype: torch.dtype = torch.float32, open_low: bool = False,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """Uniform floats of ``shape`` from the generator: element ``i`` (row-major) uses word ``i``.

    The words are those a keep mask of the same ``(seed, step, replica, stream)`` would compare, turned
    into floats by :func:`uniform_from_words`. Draw masks and noise that must be independent from
    different ``stream`` values.
    """
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    words = _words_on_device(math.prod(shape), seed, step, replica, stream, device)
    return uniform_from_words(words, dtype, open_low=open_low).reshape(shape)


def random_normal(shape: int | tuple[int, ...] | torch.Size, seed: int, step: int = 0, replica: int = 0,
                  stream: int = 0, *, dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None) -> torch.Tensor:
    r"""Standard normal floats of ``shape`` from the generator, by Box-Muller on two words.

    Specification: element ``i`` (row-major) uses words ``2i`` and ``2i + 1`` of the stream,
    :math:`u_1 = ((w_{2i} \gg 8) + 1)\,2^{-24} \in (0, 1]` and :math:`u_2 = (w_{2i+1} \gg 8)\,2^{-24}`,
    and :math:`z = \sqrt{-2 \ln u_1}\,\cos(2\pi u_2)`, computed in float64 and rounded once to
    ``dtype``. The 24-bit resolution bounds :math:`|z| \le \sqrt{48 \ln 2} \approx 5.77`: the tails
    beyond 5.77 standard deviations (probability 8e-9) are not represented. ``log`` and ``cos`` may
    differ in the last bit between devices; the words never do.
    """
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    numel = math.prod(shape)
    words = _words_on_device(2 * numel, seed, step, replica, stream, device).reshape(numel, 2)
    u1 = uniform_from_words(words[:, 0], torch.float64, open_low=True)
    u2 = uniform_from_words(words[:, 1], torch.float64)
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)
    return z.to(dtype).reshape(shape)
