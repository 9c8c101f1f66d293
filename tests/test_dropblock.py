"""DropBlock: contract, contiguous blocks of the given size, realized rate ~ p for H != W."""

import pytest
import torch
import torch.nn.functional as TF

import droplab.functional as F
import droplab.nn as dnn
from contract import Case, install
from droplab.functional.block import dropblock_gamma, dropblock_mask

_BORDER = ("positions near the border lie in fewer possible blocks, so DropBlock preserves the mean of the "
           "map as a whole (tested in test_constant_input_mean_preserved), not every element's expectation")

CASES = [
    Case("DropBlock2d", lambda p, s: dnn.DropBlock2d(p, 3, seed=s), (2, 3, 7, 9), expectation=False,
         repr_args=("p", "block_size", "per_channel", "seed", "scaling"), notes={"expectation": _BORDER}),
    Case("DropBlock2d-shared", lambda p, s: dnn.DropBlock2d(p, (2, 3), per_channel=False, seed=s), (2, 3, 6, 5),
         expectation=False, notes={"expectation": _BORDER}),
    Case("DropBlock2d-classic", lambda p, s: dnn.DropBlock2d(p, 3, seed=s, scaling="classic"), (2, 2, 6, 7),
         eval_rule="scale", expectation=False, notes={"expectation": _BORDER}),
    Case("DropBlock1d", lambda p, s: dnn.DropBlock1d(p, 3, seed=s), (2, 3, 11), expectation=False,
         notes={"expectation": _BORDER}),
    Case("DropBlock3d", lambda p, s: dnn.DropBlock3d(p, 2, seed=s), (1, 2, 4, 5, 3), expectation=False,
         notes={"expectation": _BORDER}),
]

install(globals(), CASES)


def _windows_fully_dropped(dropped: torch.Tensor, block: tuple[int, ...]) -> torch.Tensor:
    """Origins whose whole block is dropped (a min-pool over the dropped map, via max-pool of kept)."""
    pool = {1: TF.max_pool1d, 2: TF.max_pool2d, 3: TF.max_pool3d}[len(block)]
    return pool((~dropped).float(), block, 1) == 0


@pytest.mark.parametrize("shape,block", [((2, 3, 13, 29), (5, 5)), ((2, 2, 16, 9), (3, 4)), ((3, 2, 31), (7,)),
                                         ((1, 2, 6, 9, 7), (3, 2, 3))])
def test_drops_whole_contiguous_blocks(shape, block):
    """Every dropped position belongs to a fully dropped block of exactly block_size inside the map."""
    for seed in range(5):
        keep = dropblock_mask(shape, 0.2, block, len(block), seed=seed)
        dropped = ~keep
        assert dropped.any()
        origins = _windows_fully_dropped(dropped, block)
        assert torch.equal(_expand(origins, block, tuple(shape[-len(block):])), dropped)


def _expand(origins: torch.Tensor, block: tuple[int, ...], spatial: tuple[int, ...]) -> torch.Tensor:
    """Grow dropped origins into blocks by a max-pool over the zero-padded origin grid (timm's way)."""
    pool = {1: TF.max_pool1d, 2: TF.max_pool2d, 3: TF.max_pool3d}[len(block)]
    pad = [b - 1 for b in reversed(block) for _ in range(2)]
    return pool(TF.pad(origins.float(), pad), block, 1) > 0


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_mask_is_the_kernels_origin_mask_grown_by_max_pool(backend):
    """Independent reference: the origin keep mask from droplab.rng, expanded by a max-pool."""
    from droplab import kernels, rng
    shape, block = (2, 3, 13, 17), (3, 5)
    gamma = dropblock_gamma(0.3, (13, 17), block)
    origins = ~rng.keep_mask((2, 3, 11, 13), gamma, seed=9, step=4, stream=1)
    expected = ~_expand(origins, block, (13, 17))
    with kernels.use_backend(backend):
        assert torch.equal(dropblock_mask(shape, 0.3, block, 2, seed=9, step=4, stream=1), expected)


@pytest.mark.parametrize("p", [0.1, 0.3])
@pytest.mark.parametrize("hw,block", [((20, 33), 5), ((9, 31), 7), ((32, 17), (3, 6))])
def test_realized_rate_within_10_percent_for_non_square_maps(p, hw, block):
    rates = []
    for seed in range(20):
        keep = dropblock_mask((8, 4) + hw, p, block, 2, seed=seed, step=seed)
        rates.append(1.0 - keep.float().mean().item())
    mean = sum(rates) / len(rates)
    assert abs(mean - p) / p < 0.10, f"realized rate {mean:.4f} for p={p}"


def test_gamma_is_exact_and_beats_the_paper_approximation():
    # the expected dropped fraction under the solved gamma is exactly p
    spatial, block = (20, 33), (7, 7)
    gamma = dropblock_gamma(0.4, spatial, block)
    cov = [torch.minimum(torch.arange(s).double(), torch.tensor(s - b).double())
           - torch.clamp(torch.arange(s).double() - b + 1, min=0) + 1 for s, b in zip(spatial, block)]
    counts = cov[0][:, None] * cov[1][None, :]
    assert abs(float((1 - (1 - gamma) ** counts).mean()) - 0.4) < 1e-12
    paper = 0.4 / 49 * (20 * 33) / (14 * 27)
    assert float((1 - (1 - paper) ** counts).mean()) < 0.36  # the approximation undershoots at large p
    assert dropblock_gamma(0.0, spatial, block) == 0.0 and dropblock_gamma(1.0, spatial, block) == 1.0


def test_constant_input_mean_preserved():
    x = torch.full((4, 3, 10, 13), 2.5)
    for step in range(5):
        y = F.dropblock2d(x, 0.3, 3, seed=11, step=step)
        assert 0 < torch.count_nonzero(y) < y.numel()
        torch.testing.assert_close(y.mean(), x.mean(), rtol=1e-6, atol=0)


def test_shared_pattern_is_constant_over_channels():
    y = dnn.DropBlock2d(0.3, 3, per_channel=False, seed=1)(torch.ones(3, 5, 12, 11))
    assert torch.equal(y == 0, (y[:, :1] == 0).expand_as(y))
    y = dnn.DropBlock2d(0.3, 3, seed=1)(torch.ones(3, 5, 12, 11))
    assert not torch.equal(y == 0, (y[:, :1] == 0).expand_as(y))  # per-channel blocks differ (p < 1e-9 otherwise)


def test_reproducible_and_new_mask_per_step():
    m = dnn.DropBlock2d(0.2, 3, seed=5)
    x = torch.ones(2, 2, 10, 10)
    a, b = m(x), m(x)
    m.reseed(5)
    assert torch.equal(m(x), a)
    # independent steps: agreement of the two dropped maps is far below identity
    assert (a == 0).logical_xor(b == 0).any()


def test_block_larger_than_map_is_clipped_and_bad_arguments():
    y = F.dropblock2d(torch.ones(1, 1, 3, 4), 1.0, 7, seed=0)
    assert torch.count_nonzero(y) == 0
    with pytest.raises(ValueError, match="block_size"):
        dnn.DropBlock2d(0.1, 0)
    with pytest.raises(ValueError, match="block_size"):
        dnn.DropBlock2d(0.1, (3, 3, 3))
    with pytest.raises(ValueError, match="dropblock2d expects"):
        F.dropblock2d(torch.ones(4, 5), 0.1, 3, seed=0)


def test_gradient_is_the_mask_times_scale():
    x = torch.randn(2, 3, 9, 8, requires_grad=True)
    y = F.dropblock2d(x, 0.3, 3, seed=2)
    y.sum().backward()
    keep = dropblock_mask(x.shape, 0.3, 3, 2, seed=2)
    scale = keep.numel() / keep.sum().item()
    torch.testing.assert_close(x.grad, keep.float() * scale)


@pytest.mark.slow
def test_bench_variants_quick_smoke(tmp_path, capsys):
    """``droplab bench variants --quick`` runs end to end and reports every row (timings are not asserted)."""
    from droplab.cli import main

    out = tmp_path / "variants.json"
    assert main(["bench", "variants", "--quick", "--repeats", "1", "--json", str(out)]) == 0
    import json

    result = json.loads(out.read_text())
    cases = [r["case"] for r in result["rows"]]
    assert len(cases) == 7 and any("DropBlock2d" in c for c in cases) and any("VariationalLSTM" in c for c in cases)
    assert any("EmbeddingDropout" in c for c in cases) and any("GaussianDropout" in c for c in cases)
    assert all(r["droplab_saved_mask_B"] == 0 for r in result["rows"] if r["droplab_saved_mask_B"] is not None)
    assert all(r["droplab_ms"] > 0 and r["torch_ms"] > 0 for r in result["rows"])
    rate = next(r["rate"] for r in result["rows"] if "rate" in r)
    assert 0 < rate["droplab_mean"] < 1 and 0 < rate["torch_mean"] < 1
    assert "| case | shape |" in capsys.readouterr().out


@pytest.mark.parametrize("seed", [2, None])
def test_nothing_but_integers_is_saved_and_backward_regenerates_the_mask(seed):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 11, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = dnn.DropBlock2d(0.3, 3, seed=seed)(x)
    assert all(not t.is_floating_point() and t.dtype != torch.bool for t in saved)
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    kept = y != 0
    scale = kept.numel() / int(kept.sum())
    assert torch.equal(g, kept.float() * scale)


# ------------------------------------------------------------------------------------ timm's signature
def test_with_noise_fills_dropped_blocks_with_droplabs_normal_noise():
    from droplab import rng

    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    for per_channel in (True, False):
        y = F.dropblock2d(x, 0.3, 3, seed=5, step=2, stream=1, with_noise=True, per_channel=per_channel)
        keep = dropblock_mask(x.shape, 0.3, 3, 2, seed=5, step=2, stream=1, per_channel=per_channel).to(x.dtype)
        z = rng.random_normal(x.shape, 5, 2, 0, 1 + 2**31, dtype=x.dtype)  # the noise stream: stream + 2**31
        torch.testing.assert_close(y, x * keep + z * (1 - keep), rtol=0, atol=0)  # kept positions unscaled
        assert 0 < keep.mean() < 1
    leaf = x.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a: F.dropblock2d(a, 0.3, 3, seed=5, with_noise=True), (leaf,))
    assert torch.equal(F.dropblock2d(x, 0.3, 3, False, with_noise=True), x)  # inference: timm's identity


def test_timm_arguments_map_to_droplabs():
    x = torch.randn(2, 4, 10, 10)
    timm_style = dnn.DropBlock2d(0.1, 3, 2.0, False, False, True, False, seed=7)  # timm's positional order
    native = dnn.DropBlock2d(0.2, 3, per_channel=False, scaling="classic", seed=7)
    assert torch.equal(timm_style(x), native(x))  # gamma_scale 2 doubles the drawn rate
    assert (timm_style.drop_prob, timm_style.couple_channels, timm_style.scale_by_keep) == (0.1, True, False)
    timm_style.drop_prob = 0.05
    assert timm_style.p == 0.05
    assert set(timm_style.state_dict()) == set(native.state_dict())  # no new state
    assert "gamma_scale=2.0" in repr(timm_style) and "with_noise" not in repr(timm_style)
    y = x.clone()
    assert dnn.DropBlock2d(drop_prob=0.3, block_size=3, inplace=True)(y) is y
    noisy = dnn.DropBlock2d(drop_prob=0.3, block_size=3, with_noise=True, seed=1)
    assert torch.equal(noisy(x), F.dropblock2d(x, 0.3, 3, seed=1, step=0, with_noise=True))


def test_timm_arguments_that_contradict_or_overflow_are_rejected():
    with pytest.raises(ValueError, match="per_channel=True contradicts timm's couple_channels=True"):
        dnn.DropBlock2d(0.1, 3, couple_channels=True, per_channel=True)
    with pytest.raises(ValueError, match="scaling='inverted' contradicts timm's scale_by_keep=False"):
        dnn.DropBlock2d(0.1, 3, scale_by_keep=False, scaling="inverted")
    with pytest.raises(ValueError, match="p=0.3 and timm's drop_prob=0.2 both give the rate"):
        dnn.DropBlock2d(0.3, drop_prob=0.2)
    with pytest.raises(ValueError, match=r"the drawn rate p \* gamma_scale has to be between 0 and 1, but got 1.2"):
        dnn.DropBlock2d(0.6, 3, gamma_scale=2.0)
    with pytest.raises(ValueError, match="gamma_scale must be a non-negative finite number"):
        dnn.DropBlock2d(0.1, 3, gamma_scale=float("nan"))
    assert dnn.DropBlock2d(0.1, 3, couple_channels=False, per_channel=True).per_channel
