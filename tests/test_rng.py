"""The mask generator against its spec: Random123 known answers, exact thresholds, keep-rate and
independence statistics."""

import math

import pytest
import torch
from scipy import stats

import droplab.functional as F
from droplab import rng
from droplab.kernels import reference

# Random123's published known-answer vectors for philox4x32-10 (kat_vectors)
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_known_answer_vectors(counter, key, expected):
    assert rng.philox4x32_scalar(counter, key) == expected
    words = rng.philox4x32(*(torch.tensor([c]) for c in counter), *key)
    assert tuple(int(w) for w in words) == expected


def test_tensor_and_scalar_implementations_agree():
    g = torch.Generator().manual_seed(0)
    counters = torch.randint(0, 2**32, (4, 64), generator=g, dtype=torch.int64)
    key = (0xDEADBEEF, 0x01234567)
    words = torch.stack(rng.philox4x32(*counters, *key))
    for j in range(64):
        assert tuple(words[:, j].tolist()) == rng.philox4x32_scalar(tuple(counters[:, j].tolist()), key)


def test_word_layout_follows_the_spec():
    # element i takes word i % 4 of block i // 4 with counter (block, step, replica, stream)
    seed = 2**40 + 17
    words = rng.random_words(11, seed, step=3, replica=2, stream=1)
    k = rng.split_seed(seed)
    for i in range(11):
        block = rng.philox4x32_scalar((i // 4, 3, 2, 1), k)
        assert int(words[i]) == block[i % 4]
    # an offset window is a slice of the full sequence
    assert torch.equal(rng.random_words(5, seed, 3, 2, 1, offset=6), words[6:11])


def test_seed_is_64_bit():
    assert rng.split_seed(2**64 + 5) == (5, 0)
    assert rng.split_seed(-1) == (0xFFFFFFFF, 0xFFFFFFFF)
    a = rng.keep_mask(256, 0.5, seed=1)
    b = rng.keep_mask(256, 0.5, seed=1 + 2**32)
    assert not torch.equal(a, b)  # the high word is part of the key


@pytest.mark.parametrize("p,threshold", [(0.0, 0), (1.0, 2**32), (0.5, 2**31), (0.25, 2**30),
                                         (1e-300, 0), (0.1, math.floor(0.1 * 2**32))])
def test_threshold_is_exact(p, threshold):
    assert rng.drop_threshold(p) == threshold


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), float("inf"), True, "0.5"])
def test_threshold_rejects_bad_rates(bad):
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1, but got"):
        rng.drop_threshold(bad)


def test_p_zero_and_one_are_exact():
    assert rng.keep_mask(10_000, 0.0, seed=3).all()
    assert not rng.keep_mask(10_000, 1.0, seed=3).any()


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("seed", [0, 1, 12345, 2**63 + 7])
def test_keep_rate_binomial(p, seed):
    n = 200_003
    kept = int(rng.keep_mask(n, p, seed=seed, step=5).sum())
    pvalue = stats.binomtest(kept, n, 1 - p).pvalue
    assert pvalue > 1e-3, f"keep rate {kept / n:.5f} vs {1 - p} (p-value {pvalue:.2g})"


def _independence_pvalue(a: torch.Tensor, b: torch.Tensor) -> float:
    """Chi-square test of independence of two boolean sequences from their 2x2 contingency table."""
    table = [[int((a & b).sum()), int((a & ~b).sum())], [int((~a & b).sum()), int((~a & ~b).sum())]]
    return stats.chi2_contingency(table, correction=False).pvalue


N = 100_000


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_neighbouring_elements_independent(p):
    m = rng.keep_mask(2 * N + 1, p, seed=11)
    assert _independence_pvalue(m[:-1:2], m[1::2]) > 1e-3  # pairs (2i, 2i+1)
    assert _independence_pvalue(m[1:-1:2], m[2::2]) > 1e-3  # pairs across block boundaries too
    assert _independence_pvalue(m[:-4:4], m[4::4][: len(m[:-4:4])]) > 1e-3  # same word slot, next block


@pytest.mark.parametrize("what", ["step", "seed", "replica", "stream"])
def test_adjacent_counters_independent(what):
    base = dict(seed=41, step=9, replica=0, stream=0)
    other = dict(base)
    other[what] += 1
    a = rng.keep_mask(N, 0.5, **base)
    b = rng.keep_mask(N, 0.5, **other)
    assert _independence_pvalue(a, b) > 1e-3
    assert _independence_pvalue(a, rng.keep_mask(N, 0.5, **base)) < 1e-10  # the test can fail


def test_reference_keep_mask_matches_rng_module():
    for numel in (0, 1, 3, 4, 5, 4097):
        expected = rng.keep_mask(numel, 0.3, seed=5, step=2, replica=1, stream=3)
        got = reference.keep_mask(numel, rng.split_seed(5), 2, 1, 3, rng.drop_threshold(0.3))
        assert torch.equal(got, expected)


def test_counter_arguments_validated():
    with pytest.raises(ValueError, match="step must be a non-negative int"):
        rng.keep_mask(4, 0.5, seed=0, step=-1)
    with pytest.raises(TypeError, match="seed must be an int"):
        rng.keep_mask(4, 0.5, seed=1.5)


def test_one_seed_encoding_round_trips():
    """encode_seed is two's complement of seed mod 2**64; seed_key reads ints and tensors alike."""
    for seed in (0, 1, 2**63 - 1, 2**63, 2**64 - 1, -1, -(2**63), 2**70 + 5):
        encoded = rng.encode_seed(seed)
        assert -(2**63) <= encoded < 2**63 and encoded % 2**64 == seed % 2**64
        tensor = F.seed_tensor(seed)
        assert tensor.dtype == torch.int64 and tensor.dim() == 0 and int(tensor) == encoded
        s = seed % 2**64
        assert rng.seed_key(seed) == rng.seed_key(tensor) == (s & 0xFFFFFFFF, s >> 32)
    with pytest.raises(TypeError):
        rng.encode_seed(True)


def test_a_seed_is_encoded_in_one_place():
    """One helper turns a seed into the ops' tensor (``droplab.functional.seed_tensor``, which draws a fresh
    key for ``None``), over one encoding of the integer (``droplab.rng.encode_seed``)."""
    import ast
    import pathlib

    import droplab

    root = pathlib.Path(droplab.__file__).parent
    defined = sorted((path.relative_to(root).as_posix(), node.name) for path in root.rglob("*.py")
                     for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.FunctionDef)
                     and node.name in ("seed_tensor", "encode_seed", "fresh_key", "split_seed"))
    assert defined == [("functional/standard.py", "fresh_key"), ("functional/standard.py", "seed_tensor"),
                       ("rng.py", "encode_seed"), ("rng.py", "split_seed")]
    assert not hasattr(rng, "seed_tensor")
    torch.manual_seed(3)
    first = F.seed_tensor(None)  # None draws a fresh key from torch's generator
    torch.manual_seed(3)
    assert first.dtype == torch.int64 and torch.equal(F.seed_tensor(None), first)


def test_words_at_and_block_words_follow_the_scalar_spec():
    key = rng.split_seed(2**64 - 3)
    indices = torch.tensor([[0, 5, 4095], [17, 2**33 + 2, 3]])
    got = rng.words_at(indices, key, 7, 1, 2)
    for index, word in zip(indices.flatten().tolist(), got.flatten().tolist()):
        assert word == rng.philox4x32_scalar((index // 4, 7, 1, 2), key)[index % 4]
    blocks = rng.block_words(torch.tensor([3, 2**32 - 1]), key, 7, 1, 2)
    assert blocks.tolist() == [list(rng.philox4x32_scalar((b, 7, 1, 2), key)) for b in (3, 2**32 - 1)]
