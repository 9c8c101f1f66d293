"""timm's own tests of its DropBlock and DropPath (``tests/test_layers_drop.py``, huggingface/pytorch-image-models,
2026-08), ported to droplab: 20 tests, each keeping timm's inputs and assertions.

timm cannot be installed beside this project's CPU torch, so its names are bound to droplab's here:
``DropBlock2d`` *is* :class:`droplab.nn.DropBlock2d`, called with timm's arguments unchanged (the point:
timm code switches by changing its import); timm's functions, whose names droplab does not share, go
through two thin adapters that only rename arguments (the mapping :class:`droplab.nn.DropBlock2d`
documents); ``DropPath`` takes timm's keyword ``drop_prob`` through an adapter likewise.
"""

import pytest
import torch

import droplab.functional as DF
import droplab.nn as dnn

DropBlock2d = dnn.DropBlock2d


def drop_block_2d(x, drop_prob=0.1, block_size=7, gamma_scale=1.0, with_noise=False, inplace=False,
                  couple_channels=True, scale_by_keep=True):
    """timm's ``drop_block_2d`` (training only) in droplab's words."""
    return DF.dropblock2d(x, drop_prob * gamma_scale, block_size, True, inplace, with_noise=with_noise,
                          per_channel=not couple_channels, scaling="inverted" if scale_by_keep else "classic")


def drop_path(x, drop_prob=0.0, training=False, scale_by_keep=True):
    return DF.drop_path(x, drop_prob, training, scale_by_keep=scale_by_keep)


def DropPath(drop_prob=0.0, scale_by_keep=True):  # noqa: N802 - timm's class name
    return dnn.DropPath(drop_prob, scale_by_keep)


def _dropped(t):
    return (t == 0).float()


# ------------------------------------------------------------------------------------ drop_block_2d (10 tests)
def test_drop_block_2d_output_shape():
    for h, w in [(7, 7), (4, 8), (10, 5), (3, 3)]:
        x = torch.ones((2, 3, h, w))
        assert drop_block_2d(x, drop_prob=0.1, block_size=3).shape == x.shape, (h, w)


def test_drop_block_2d_no_drop_when_prob_zero():
    x = torch.ones((2, 3, 8, 8))
    assert torch.allclose(drop_block_2d(x, drop_prob=0.0, block_size=3), x)


def test_drop_block_2d_approximate_keep_ratio():
    torch.manual_seed(123)
    x = torch.ones((32, 16, 56, 56))  # a large batch: the measured ratio is stable
    result = drop_block_2d(x, drop_prob=0.1, block_size=7, scale_by_keep=False)  # kept 1.0, dropped 0.0
    ratio = (result == 0).sum().item() / result.numel()
    assert abs(ratio - 0.1) < 0.03, ratio


def test_drop_block_2d_inplace():
    x_clone = torch.ones((2, 3, 8, 8)).clone()
    torch.manual_seed(42)
    assert drop_block_2d(x_clone, drop_prob=0.3, block_size=3, inplace=True) is x_clone


def test_drop_block_2d_couple_channels_true():
    torch.manual_seed(42)
    x = torch.ones((2, 4, 16, 16))
    result = drop_block_2d(x, drop_prob=0.3, block_size=5, couple_channels=True)
    for b in range(x.shape[0]):
        for c in range(1, x.shape[1]):
            assert torch.allclose(_dropped(result[b, 0]), _dropped(result[b, c])), (b, c)


def test_drop_block_2d_couple_channels_false():
    torch.manual_seed(42)
    result = drop_block_2d(torch.ones((2, 4, 16, 16)), drop_prob=0.3, block_size=5, couple_channels=False)
    assert not torch.allclose(_dropped(result[0, 0]), _dropped(result[0, 1]))  # independent per channel


def test_drop_block_2d_with_noise():
    torch.manual_seed(42)
    result = drop_block_2d(torch.ones((2, 3, 16, 16)), drop_prob=0.3, block_size=5, with_noise=True)
    assert len(torch.unique(result)) > 2  # the dropped blocks hold noise, not one value


def test_drop_block_2d_even_block_size():
    x = torch.ones((2, 3, 16, 16))
    for block_size in [2, 4, 6]:
        assert drop_block_2d(x, drop_prob=0.1, block_size=block_size).shape == x.shape, block_size


def test_drop_block_2d_asymmetric_input():
    for h, w in [(8, 16), (16, 8), (7, 14), (14, 7)]:
        x = torch.ones((2, 3, h, w))
        assert drop_block_2d(x, drop_prob=0.1, block_size=5).shape == x.shape, (h, w)


def test_drop_block_2d_scale_by_keep():
    torch.manual_seed(42)
    x = torch.ones((2, 3, 16, 16))
    scaled = drop_block_2d(x.clone(), drop_prob=0.3, block_size=5, scale_by_keep=True)
    assert scaled[scaled > 0].min() > 1.0  # kept values scaled up for the dropped ones
    torch.manual_seed(42)
    unscaled = drop_block_2d(x.clone(), drop_prob=0.3, block_size=5, scale_by_keep=False)
    kept = unscaled[unscaled > 0]
    assert torch.allclose(kept, torch.ones_like(kept))


# ------------------------------------------------------------------------------------ DropBlock2d (4 tests)
def test_deprecated_args_accepted():
    with pytest.warns(DeprecationWarning):  # timm consumes them silently; droplab says they do nothing
        module1 = DropBlock2d(drop_prob=0.1, batchwise=True)
        module2 = DropBlock2d(drop_prob=0.1, fast=False)
        module3 = DropBlock2d(drop_prob=0.1, batchwise=False, fast=True)
    assert module1.drop_prob == 0.1 and module2.drop_prob == 0.1 and module3.drop_prob == 0.1


def test_unknown_args_warned():
    with pytest.warns(UserWarning, match="unexpected keyword argument 'unknown_arg'"):
        DropBlock2d(drop_prob=0.1, unknown_arg=True)


def test_training_mode():
    module = DropBlock2d(drop_prob=0.5, block_size=3)
    x = torch.ones((2, 3, 8, 8))
    module.eval()
    assert torch.allclose(module(x), x)
    module.train()
    torch.manual_seed(42)
    assert not torch.allclose(module(x), x)


def test_couple_channels_parameter():
    x = torch.ones((2, 4, 16, 16))
    coupled = DropBlock2d(drop_prob=0.3, block_size=5, couple_channels=True).train()
    torch.manual_seed(42)
    result = coupled(x)
    assert torch.allclose(_dropped(result[0, 0]), _dropped(result[0, 1]))
    uncoupled = DropBlock2d(drop_prob=0.3, block_size=5, couple_channels=False).train()
    torch.manual_seed(42)
    result = uncoupled(x)
    assert not torch.allclose(_dropped(result[0, 0]), _dropped(result[0, 1]))


# ------------------------------------------------------------------------------------ drop_path, DropPath (6 tests)
def test_drop_path_no_drop_when_prob_zero():
    x = torch.ones((4, 8, 16, 16))
    assert torch.allclose(drop_path(x, drop_prob=0.0, training=True), x)


def test_drop_path_no_drop_when_not_training():
    x = torch.ones((4, 8, 16, 16))
    assert torch.allclose(drop_path(x, drop_prob=0.5, training=False), x)


def test_drop_path_scaling():
    torch.manual_seed(42)
    result = drop_path(torch.ones((100, 8, 4, 4)), drop_prob=0.2, training=True, scale_by_keep=True)
    kept = result[result[:, 0, 0, 0] != 0, 0, 0, 0]
    assert kept.numel() > 0 and torch.allclose(kept, torch.full_like(kept, 1 / 0.8), atol=1e-5)


def test_drop_path_no_scaling():
    torch.manual_seed(42)
    result = drop_path(torch.ones((100, 8, 4, 4)), drop_prob=0.2, training=True, scale_by_keep=False)
    kept = result[result[:, 0, 0, 0] != 0, 0, 0, 0]
    assert kept.numel() > 0 and torch.allclose(kept, torch.ones_like(kept))


def test_drop_path_module_training_mode():
    module = DropPath(drop_prob=0.5)
    x = torch.ones((32, 8, 4, 4))
    module.eval()
    assert torch.allclose(module(x), x)
    module.train()
    torch.manual_seed(42)
    assert (module(x) == 0).any()  # 32 examples at p = 0.5: some branch is dropped


def test_drop_path_extra_repr():
    assert "0.123" in DropPath(drop_prob=0.123).extra_repr()
