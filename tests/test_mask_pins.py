"""Masks drawn under droplab's first mask spec never change: literal words and bits, pinned.

Every expected value below was computed once (2026-12-07) by the pure-torch reference of the spec as it
stood before any kernel rewrite, and is written out literally: a faster kernel, a new default spec or a
refactor that changes one bit of a mask an old checkpoint would draw fails here. Each pin is checked on
every backend that runs in this environment (the Triton one is checked against the reference, bit for
bit, in ``test_triton.py``).
"""

from __future__ import annotations

import pytest
import torch

import droplab as dl
from droplab import rng
from droplab.kernels import available_backends, use_backend

BACKENDS = [name for name in available_backends() if name != "triton"]


def _rows(t: torch.Tensor) -> list[str]:
    t = t.reshape(t.shape[0], -1).to(torch.int64)
    return ["".join(str(int(v)) for v in row) for row in t]


def test_generator_words_pinned():
    # the 32-bit words behind every mask: key = 64-bit seed, counter = (index // 4, step, replica, stream)
    words = rng.random_words(8, seed=2**40 + 5, step=3, replica=1, stream=2)
    assert [int(w) for w in words] == [0xB15A24CE, 0x52688264, 0xEDDC4CED, 0x1C89D644,
                                       0xBB7A8930, 0x19695A6A, 0xEB0F6467, 0x31914C64]
    # a negative seed (its value mod 2**64), the last step counter and an offset past 2**33 (block >= 2**31)
    words = rng.random_words(6, seed=-1, step=2**32 - 1, offset=4 * 2**31 + 1)
    assert [int(w) for w in words] == [0x27E65FB2, 0x095B69A6, 0x66A736DE, 0x5CB44609, 0x717CF356, 0x05266492]


def test_reference_keep_mask_pinned():
    assert _rows(rng.keep_mask((3, 16), 0.3, seed=7, step=3)) == [
        "1011111011100110", "1101111111111011", "1101101011110111"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_functional_masks_pinned(backend):
    with use_backend(backend):
        y = dl.functional.dropout(torch.ones(4, 12), 0.5, seed=123, step=9)
        channel = dl.functional.dropout(torch.ones(2, 3, 2, 5), 0.25, seed=42, step=1,
                                        noise_shape=(None, None, 1, 1))
        weight = torch.arange(1.0, 11.0).unsqueeze(1).repeat(1, 2)
        emb = dl.functional.embedding_dropout(torch.arange(10), weight, 0.5, seed=99, step=4)
        block = dl.functional.dropblock_mask((1, 1, 6, 6), 0.3, 2, 2, seed=8, step=0)
    assert _rows(y != 0) == ["110001111000", "101101101000", "011100111000", "000110010001"]
    assert torch.equal(y[y != 0], torch.full_like(y[y != 0], 2.0))
    assert _rows((channel != 0)[:, :, 0, 0]) == ["110", "101"]
    assert bool(((channel != 0) == (channel != 0)[:, :, :1, :1]).all())
    assert _rows((emb[:, 0] != 0).unsqueeze(0)) == ["1110111110"]
    assert _rows(block[0, 0]) == ["111111", "100001", "000000", "001100", "111001", "111001"]


def test_seeded_module_masks_pinned():
    """A seeded module's first two training forwards, and the counter its state_dict carries."""
    m = dl.nn.Dropout(0.5, seed=2024)
    first, second = (_rows(m(torch.ones(2, 16)) != 0) for _ in range(2))
    assert first == ["1010001010101000", "0011100010110111"]
    assert second == ["0011010100111111", "1101101111010001"]
    assert int(m.state_dict()["step"]) == 2
    # a module restored from that state draws the third mask, as the original does
    resumed = dl.nn.Dropout(0.5, seed=0)
    resumed.load_state_dict(m.state_dict())
    assert torch.equal(resumed(torch.ones(2, 16)), m(torch.ones(2, 16)))


def test_normal_noise_pinned():
    values = rng.random_normal(4, seed=5, step=1).double().tolist()
    assert values == [float.fromhex(h) for h in ("-0x1.27364ap-4", "0x1.7884c2p-2", "-0x1.51bfd2p-1",
                                                  "0x1.e58964p+0")]
