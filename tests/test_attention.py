"""Attention dropout, multi-head self-attention and the reference transformer block."""

import pytest
import torch
from scipy import stats
from torch import nn

import droplab
import droplab.functional as F
import droplab.nn as dnn
from contract import Case, install


def _probs(shape, dtype):
    g = torch.Generator().manual_seed(0)
    return torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64), dim=-1).to(dtype)


CASES = [
    Case("AttentionDropout", lambda p, s: dnn.AttentionDropout(p, seed=s), (2, 3, 4, 5), make_input=_probs,
         repr_args=("p", "inplace", "share_across_heads", "seed", "scaling")),
    Case("AttentionDropout-shared-heads", lambda p, s: dnn.AttentionDropout(p, seed=s, share_across_heads=True),
         (2, 3, 4, 5), make_input=_probs, expectation_steps=800),
    Case("AttentionDropout-classic", lambda p, s: dnn.AttentionDropout(p, seed=s, scaling="classic"), (3, 4, 4),
         eval_rule="scale"),
]

install(globals(), CASES)


def test_attention_dropout_keep_rate_and_shared_heads():
    p = 0.25
    w = F.attention_dropout(torch.ones(4, 8, 16, 16), p, seed=3)
    assert stats.binomtest(int((w == 0).sum()), w.numel(), p).pvalue > 1e-3
    shared = F.attention_dropout(torch.ones(4, 8, 16, 16), p, seed=3, share_across_heads=True)
    assert torch.equal(shared, shared[:, :1].expand_as(shared))
    with pytest.raises(ValueError, match="share_across_heads=True expects"):
        F.attention_dropout(torch.ones(8, 16, 16), p, seed=3, share_across_heads=True)


def test_sdpa_without_dropout_matches_torch():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64) for _ in range(3))
    padding = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    ours = F.scaled_dot_product_attention(q, k, v, key_padding_mask=padding)
    theirs = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=~padding[:, None, None, :])
    torch.testing.assert_close(ours, theirs)
    causal = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(causal, torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_fully_masked_query_attends_to_nothing():
    q = k = torch.randn(1, 1, 3, 2)
    w = F.attention_weights(q, k, key_padding_mask=torch.tensor([[True, True, True]]))
    assert torch.equal(w, torch.zeros_like(w))


def _copy_to_torch(block: dnn.TransformerBlock, norm_first: bool) -> nn.TransformerEncoderLayer:
    ref = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=norm_first,
                                     dtype=torch.float64)
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(block.self_attn.in_proj.weight)
        ref.self_attn.in_proj_bias.copy_(block.self_attn.in_proj.bias)
        ref.self_attn.out_proj.weight.copy_(block.self_attn.out_proj.weight)
        ref.self_attn.out_proj.bias.copy_(block.self_attn.out_proj.bias)
        for name in ("linear1", "linear2", "norm1", "norm2"):
            ref.get_submodule(name).load_state_dict(block.get_submodule(name).state_dict())
    return ref


@pytest.mark.parametrize("norm_first", [True, False])
def test_block_with_zero_rates_equals_torch_encoder_layer(norm_first):
    torch.manual_seed(0)
    block = dnn.TransformerBlock(16, 4, 32, dropout=0.0, norm_first=norm_first, seed=0).double().train()
    ref = _copy_to_torch(block, norm_first).train()
    x = torch.randn(3, 6, 16, dtype=torch.float64)
    padding = torch.zeros(3, 6, dtype=torch.bool)
    padding[1, 4:] = True
    torch.testing.assert_close(block(x, key_padding_mask=padding), ref(x, src_key_padding_mask=padding))


def _zero_sublayers(block):
    with torch.no_grad():
        for layer in (block.self_attn.out_proj, block.linear2):
            layer.weight.zero_()
            layer.bias.zero_()


def test_pre_norm_block_never_drops_the_identity_path():
    # with the sublayers' output projections zeroed the block is exactly the identity in training,
    # although every site draws masks at p = 0.5: nothing on the residual path is masked or rescaled
    block = dnn.TransformerBlock(16, 4, dropout=0.5, norm_first=True, seed=1).train()
    _zero_sublayers(block)
    x = torch.randn(4, 7, 16)
    assert torch.equal(block(x), x)
    steps = [int(s.module.step) for s in droplab.sites(block)]
    assert steps == [1, 1, 1, 1]  # every site was stochastic in that forward


def test_post_norm_block_identity_path_is_only_normalized():
    block = dnn.TransformerBlock(16, 4, dropout=0.5, norm_first=False, seed=1).train()
    _zero_sublayers(block)
    x = torch.randn(4, 7, 16)
    assert torch.equal(block(x), block.norm2(block.norm1(x)))


def test_residual_dropout_one_drops_whole_sublayers_but_not_the_input():
    block = dnn.TransformerBlock(16, 4, dropout=0.2, residual_dropout=1.0, seed=2).train()
    x = torch.randn(2, 5, 16)
    assert torch.equal(block(x), x)
    assert not torch.allclose(block.eval()(x), x)


def test_key_padding_mask_isolates_padded_positions():
    block = dnn.TransformerBlock(16, 4, dropout=0.3, seed=3).train()
    x = torch.randn(2, 6, 16)
    padding = torch.zeros(2, 6, dtype=torch.bool)
    padding[:, 4:] = True
    y1 = block(x, key_padding_mask=padding)
    for s in droplab.sites(block):  # rewind so the second call draws the same masks
        s.module.reseed(int(s.module.seed), 0)
    x2 = x.clone()
    x2[:, 4:] = torch.randn(2, 2, 16) * 100
    y2 = block(x2, key_padding_mask=padding)
    torch.testing.assert_close(y1[:, :4], y2[:, :4], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(y1[:, 4:], y2[:, 4:])


def test_block_rates_per_site_and_names():
    block = dnn.TransformerBlock(8, 2, dropout=0.1, attention_dropout=0.2, ffn_dropout=0.3, residual_dropout=0.05,
                                 seed=0)
    rows = [(s.name, s.kind, s.p) for s in droplab.sites(block)]
    assert rows == [("self_attn.attn_drop", "AttentionDropout", 0.2), ("attn_resid_drop", "Dropout", 0.05),
                    ("ffn_drop", "Dropout", 0.3), ("ffn_resid_drop", "Dropout", 0.05)]
    assert [int(s.module.seed) for s in droplab.sites(block)] == [0, 1, 2, 3]
    block.set_rates(attention=0.0, residual=0.4)
    assert [s.p for s in droplab.sites(block)] == [0.0, 0.4, 0.3, 0.4]
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1, but got 1.5"):
        block.set_rates(ffn=0.2, residual=1.5)
    assert block.ffn_drop.p == 0.3  # validated before anything changed
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1, but got -0.1"):
        dnn.TransformerBlock(8, 2, ffn_dropout=-0.1)
    with pytest.raises(ValueError, match="num_heads must be positive and divide embed_dim"):
        dnn.TransformerBlock(8, 3)


def test_block_backward_and_eval_determinism():
    block = dnn.TransformerBlock(8, 2, dropout=0.2, seed=5)
    x = torch.randn(2, 3, 8, requires_grad=True)
    block(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    block.eval()
    torch.testing.assert_close(block(x), block(x), rtol=0, atol=0)
