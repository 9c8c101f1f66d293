"""LockedDropout and EmbeddingDropout: contract, masks constant along shared axes, word-level drops."""

import pytest
import torch
from scipy.stats import binomtest
from torch import nn

import droplab.functional as F
import droplab.nn as dnn
from contract import Adapter, Case, install
from droplab._fx import fx_leaf_forward


class _EmbeddingAsWeightMap(Adapter):
    """Contract adapter: ``w -> EmbeddingDropout(ids = 0..V-1)`` with ``w`` as the embedding weight.

    The contract drives tensor -> tensor maps; looking up every row once makes the module a map of its
    (float) weight matrix, so eval, expectation, endpoints, gradcheck and state_dict are checked on the
    quantity EmbeddingDropout actually drops. ``torch.func.functional_call`` swaps ``w`` in; under
    ``torch.compile`` it would drop the step buffer's in-place advance, so a compiled call runs the
    module's own counter path (``_call_functional``) with ``w`` instead. Under torch.fx the adapter is
    one leaf, as the module it adapts (``functional_call`` cannot take a Proxy).
    """

    @fx_leaf_forward  # one call_module node under torch.fx, as the module it adapts
    def forward(self, w):
        ids = torch.arange(w.shape[0])
        inner = self.inner
        if not torch.compiler.is_compiling():
            return torch.func.functional_call(inner, {"embedding.weight": w}, (ids,))

        def lookup(indices, p, training, **kwargs):
            return F.embedding_dropout(indices, w, p, training, **kwargs)
        return inner._call_functional(lookup, ids, padding_idx=inner.embedding.padding_idx, scaling=inner.scaling)


def _embedding(p, s, **kw):
    return _EmbeddingAsWeightMap(dnn.EmbeddingDropout(nn.Embedding(30, 4), p, seed=s, **kw))


CASES = [
    Case("LockedDropout", lambda p, s: dnn.LockedDropout(p, seed=s), (5, 8, 3), expectation_steps=800,
         repr_args=("p", "batch_first", "inplace", "seed", "scaling")),
    Case("LockedDropout-batch-first", lambda p, s: dnn.LockedDropout(p, batch_first=True, seed=s), (8, 5, 3),
         expectation_steps=800),
    Case("LockedDropout-classic", lambda p, s: dnn.LockedDropout(p, seed=s, scaling="classic"), (4, 8, 3),
         eval_rule="scale", expectation_steps=800),
    Case("EmbeddingDropout", _embedding, (30, 4), expectation_steps=800,
         repr_args=("p", "num_embeddings", "embedding_dim", "seed")),
    Case("EmbeddingDropout-classic", lambda p, s: _embedding(p, s, scaling="classic"), (30, 4), eval_rule="scale",
         expectation_steps=800),
]

install(globals(), CASES)


@pytest.mark.parametrize("batch_first", [False, True])
def test_locked_mask_constant_over_time_and_keep_rate(batch_first):
    m = dnn.LockedDropout(0.35, batch_first=batch_first, seed=3)
    x = torch.ones(12, 40, 16) if not batch_first else torch.ones(40, 12, 16)
    y = m(x)
    time_axis = 1 if batch_first else 0
    first = y.narrow(time_axis, 0, 1)
    assert torch.equal(y, first.expand_as(y))  # one mask per sequence, shared by every step
    kept = int((first != 0).sum())
    assert binomtest(kept, first.numel(), 0.65).pvalue > 1e-3
    # and masks differ between examples and features: not constant along the batch axis
    batch_axis = 0 if batch_first else 1
    assert not torch.equal(y, y.narrow(batch_axis, 0, 1).expand_as(y))


def test_locked_equals_noise_shaped_dropout():
    x = torch.randn(6, 4, 5)
    y = F.locked_dropout(x, 0.4, batch_first=True, seed=9, step=2)
    assert torch.equal(y, F.dropout(x, 0.4, seed=9, step=2, noise_shape=(None, 1, None)))
    with pytest.raises(ValueError, match="locked_dropout expects a sequence"):
        F.locked_dropout(torch.ones(5), 0.4, seed=0)


def test_variational_mask_matches_dropout_values():
    mask = F.variational_mask((7, 9), 0.3, seed=4, step=1, stream=2)
    assert torch.equal(mask, F.dropout(torch.ones(7, 9), 0.3, seed=4, step=1, stream=2))


def test_embedding_drops_whole_words():
    torch.manual_seed(0)
    emb = nn.Embedding(1000, 8)
    m = dnn.EmbeddingDropout(emb, 0.25, seed=5)
    ids = torch.randint(0, 1000, (16, 50))
    y = m(ids)
    row_dropped = (y == 0).all(-1)
    # a word is dropped in every position where it occurs, or in none; kept rows are scaled by 1/q
    for word in ids.unique()[:200]:
        where = ids == word
        assert bool(row_dropped[where].all()) or not bool(row_dropped[where].any())
    kept = ~row_dropped
    torch.testing.assert_close(y[kept], emb(ids)[kept] / 0.75)
    # the row mask is Bernoulli(q) over the vocabulary
    vocab_mask = F.dropout(torch.ones(1000, 1), 0.25, seed=5, step=0) != 0
    assert binomtest(int(vocab_mask.sum()), 1000, 0.75).pvalue > 1e-3
    assert torch.equal(row_dropped, ~vocab_mask[ids, 0])


def test_embedding_equals_dropped_weight_lookup_and_eval_is_plain():
    torch.manual_seed(0)
    emb = nn.Embedding(50, 6, padding_idx=0)
    ids = torch.randint(0, 50, (4, 9))
    y = F.embedding_dropout(ids, emb.weight, 0.3, seed=2, step=3, padding_idx=0)
    dropped_weight = F.dropout(emb.weight, 0.3, seed=2, step=3, noise_shape=(None, 1))
    assert torch.equal(y, nn.functional.embedding(ids, dropped_weight, padding_idx=0))
    m = dnn.EmbeddingDropout(emb, 0.3, seed=2).eval()
    assert torch.equal(m(ids), emb(ids))


def test_embedding_gradient_reaches_kept_rows_only():
    torch.manual_seed(0)
    m = dnn.EmbeddingDropout.new(20, 3, 0.5, seed=1)
    ids = torch.arange(20)
    m(ids).sum().backward()
    kept = F.dropout(torch.ones(20, 1), 0.5, seed=1, step=0)[:, 0] != 0
    assert torch.equal(m.embedding.weight.grad, kept[:, None].float().expand(20, 3) * 2.0)


def test_embedding_bad_arguments():
    with pytest.raises(TypeError, match="wraps an nn.Embedding"):
        dnn.EmbeddingDropout(nn.Linear(3, 3), 0.1)
    with pytest.raises(TypeError, match="integer indices"):
        dnn.EmbeddingDropout.new(5, 2, 0.1, seed=0)(torch.ones(3))
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1, but got 1.5"):
        dnn.EmbeddingDropout.new(5, 2, 1.5)


def _saved_by_autograd(fn, *inputs):
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = fn(*inputs)
    return out, saved


@pytest.mark.parametrize("seed", [5, None])
def test_no_mask_is_saved_for_backward(seed):
    """Only integers (indices, counters) are saved: the row mask is regenerated in backward."""
    emb = dnn.EmbeddingDropout(nn.Embedding(40, 6), 0.5, seed=seed)
    ids = torch.randint(0, 40, (3, 7))
    out, saved = _saved_by_autograd(emb, ids)
    assert saved and all(not t.is_floating_point() and t.dtype != torch.bool for t in saved)
    locked = dnn.LockedDropout(0.5, seed=seed)
    x = torch.randn(5, 3, 4, requires_grad=True)
    _, saved = _saved_by_autograd(locked, x)
    assert all(not t.is_floating_point() and t.dtype != torch.bool for t in saved)


def test_embedding_gradient_is_the_masked_scatter_by_hand():
    """Independent reference: a Python loop over positions adds the scaled gradient of kept words."""
    from droplab import rng
    weight = torch.randn(25, 3, requires_grad=True)
    ids = torch.tensor([[1, 4, 4, 0], [7, 1, 3, 3]])
    y = F.embedding_dropout(ids, weight, 0.5, seed=11, step=2, padding_idx=3)
    grad = torch.randn_like(y)
    y.backward(grad)
    keep = rng.keep_mask(25, 0.5, seed=11, step=2)
    expected = torch.zeros(25, 3)
    for (i, j), v in zip(torch.cartesian_prod(torch.arange(2), torch.arange(4)).tolist(), ids.flatten().tolist()):
        assert torch.equal(y[i, j], weight[v].detach() * 2.0 if keep[v] else torch.zeros(3))
        if keep[v] and v != 3:
            expected[v] += grad[i, j] * 2.0
    torch.testing.assert_close(weight.grad, expected, rtol=0, atol=1e-6)


def test_sparse_and_scale_grad_by_freq_take_torchs_lookup():
    from droplab import rng
    weight = torch.randn(12, 3, requires_grad=True)
    ids = torch.tensor([2, 2, 5, 7])
    keep = rng.keep_mask(12, 0.5, seed=1)[ids].unsqueeze(1)
    y = F.embedding_dropout(ids, weight, 0.5, seed=1, sparse=True)
    assert torch.equal(y, torch.where(keep, weight.detach()[ids] * 2.0, torch.zeros(())))
    y.sum().backward()
    assert weight.grad.is_sparse
    weight.grad = None
    y = F.embedding_dropout(ids, weight, 0.5, seed=1, scale_grad_by_freq=True)
    y.sum().backward()
    # word 2 appears twice: torch divides its gradient by its frequency
    expected = torch.zeros(12, 3)
    for v in ids.tolist():
        expected[v] += 2.0 * keep[ids.tolist().index(v)].float() / ids.tolist().count(v)
    torch.testing.assert_close(weight.grad, expected)
