"""Data-parallel dropout: two gloo processes on loopback against single-process references.

What the tests prove, for a small MLP with ``droplab.nn.Dropout`` trained for a few SGD steps under
DistributedDataParallel (2 ranks, each taking its half of every global batch):

1. By default the ranks' masks differ: rank ``r``'s mask is exactly the single-process mask drawn with
   ``replica=r``, and the two ranks' masks agree no more often than independent Bernoulli masks would
   (binomial test, p-value > 1e-3). With ``share_across_ranks=True`` they are identical.
2. Gradients are averaged: after backward, both ranks hold the same gradient, equal to the mean of the
   two shards' gradients computed in one process (each shard with its rank's mask).
3. The default run equals a single-process run over the union of the ranks' batches in which each half
   is masked as its rank masks it (``replica = r`` for half ``r``): same parameters after every step.
4. With matching masks (``share_across_ranks=True`` and a batch-shared noise shape ``(1, None)``, so the
   mask does not depend on where an example sits in the batch) the run equals the *plain* single-process
   run over the union of the batches, with the very same module: DDP is then exactly large-batch SGD.
5. A run is reproducible: the same world size and seed give bit-identical parameters.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

import droplab.functional as DF
from droplab.lab import distributed as D
from droplab.nn import Dropout

WORLD = 2
STEPS = 3
BATCH = 16  # global batch: 8 examples per rank


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mlp(share: bool = False, noise_shape=None) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), Dropout(0.5, seed=11, share_across_ranks=share,
                                                              noise_shape=noise_shape),
                         nn.Linear(32, 4)).double()


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(BATCH, 8, generator=g, dtype=torch.float64), torch.randint(0, 4, (BATCH,), generator=g))
            for _ in range(STEPS)]


def _train_ddp(ctx: D.DistContext, share: bool, noise_shape) -> dict:
    model = D.wrap(_mlp(share, noise_shape), ctx)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    grads, params = [], []
    for xb, yb in _data():
        opt.zero_grad()
        loss = F.cross_entropy(model(D.shard(xb, ctx)), D.shard(yb, ctx))
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        opt.step()
        params.append([p.detach().clone() for p in model.parameters()])
    return {"grads": grads, "params": params, "step": int(D.unwrap(model)[2].step)}


def _lab_train(out_dir: str) -> dict:
    """The lab's train() under the process group: DDP inside, only rank 0 writes the store."""
    from droplab.lab.config import ExperimentConfig
    from droplab.lab.store import RunStore
    from droplab.lab.trainer import train

    config = ExperimentConfig().replace(dataset="digits", width=32, epochs=2, batch_size=64, threads=1)
    with RunStore(os.path.join(out_dir, "runs.db")) as store:
        result = train(config, store=store, name="ddp", progress=False)
    return {"params": [p.detach().clone() for p in result.model.parameters()], "run_id": result.run_id,
            "batch_loss": [m["batch_loss"] for m in result.history],
            "drop_steps": [int(m.step) for m in result.model.modules() if isinstance(m, Dropout)]}


def _rank_main(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    ctx = D.setup("cpu")
    try:
        result = {"rank": ctx.rank, "world_size": ctx.world_size, "backend": ctx.backend}
        ones = torch.ones(64, 256)
        result["mask"] = Dropout(0.5, seed=123)(ones) != 0
        result["shared_mask"] = Dropout(0.5, seed=123, share_across_ranks=True)(ones) != 0
        result["default"] = _train_ddp(ctx, share=False, noise_shape=None)
        result["default_again"] = _train_ddp(ctx, share=False, noise_shape=None)
        result["matched"] = _train_ddp(ctx, share=True, noise_shape=(1, None))
        # metric reduction weighs uneven shards by their example counts
        result["reduced"] = D.all_reduce_mean({"loss": 10.0 * (rank + 1)}, count=5 * (rank + 1), ctx=ctx)
        result["train"] = _lab_train(out_dir)
        # an unseeded module keeps no counters: wrapping must not look for any, and its masks still differ
        torch.manual_seed(0)
        unseeded = D.wrap(nn.Sequential(nn.Linear(8, 256, bias=False), Dropout(0.5)), ctx)
        result["unseeded_mask"] = unseeded(torch.ones(1, 8)) != 0
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        D.cleanup(ctx)


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_rank_main, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return out


@pytest.fixture(scope="module")
def ranks(spawned):
    return [torch.load(spawned / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def _reference(per_half_replica: bool, share: bool = False, noise_shape=None) -> dict:
    """One process: SGD on the union of the ranks' batches.

    ``per_half_replica``: mask half ``r`` with the mask rank ``r`` draws (functional dropout with
    ``replica=r`` at the module's step), averaging the halves' mean losses as DDP averages gradients.
    Otherwise: the plain module over the whole global batch.
    """
    model = _mlp(share, noise_shape)
    drop = model[2]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    grads, params, half_grads = [], [], []
    for xb, yb in _data():
        opt.zero_grad()
        if per_half_replica:
            step = drop.step.clone()
            drop.step.add_(1)
            per_half = []
            for r, (xs, ys) in enumerate(zip(torch.tensor_split(xb, WORLD), torch.tensor_split(yb, WORLD))):
                h = DF.dropout(model[1](model[0](xs)), 0.5, True, seed=drop.seed, step=step, replica=r)
                g = torch.autograd.grad(F.cross_entropy(model[3](h), ys), list(model.parameters()))
                per_half.append(g)
            half_grads.append(per_half)
            for p, *gs in zip(model.parameters(), *per_half):
                p.grad = sum(gs) / WORLD
        else:
            F.cross_entropy(model(xb), yb).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        opt.step()
        params.append([p.detach().clone() for p in model.parameters()])
    return {"grads": grads, "params": params, "half_grads": half_grads}


def _close(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.allclose(x, y, rtol=1e-10, atol=1e-12) for x, y in zip(a, b))


@pytest.mark.slow
def test_process_group_from_torchrun_environment(ranks):
    assert [(r["rank"], r["world_size"], r["backend"]) for r in ranks] == [(0, 2, "gloo"), (1, 2, "gloo")]


@pytest.mark.slow
def test_masks_differ_across_ranks_by_default(ranks):
    m0, m1 = ranks[0]["mask"], ranks[1]["mask"]
    # each rank draws exactly the mask of its replica index
    for r, m in enumerate((m0, m1)):
        expected = DF.dropout(torch.ones(64, 256), 0.5, True, seed=123, step=0, replica=r) != 0
        assert torch.equal(m, expected)
    # independent masks with keep probability 1/2 agree at each element with probability 1/2
    n, agree = m0.numel(), int((m0 == m1).sum())
    assert stats.binomtest(agree, n, 0.5).pvalue > 1e-3, (agree, n)
    assert torch.equal(ranks[0]["shared_mask"], ranks[1]["shared_mask"])


@pytest.mark.slow
def test_gradients_are_averaged_across_ranks(ranks):
    ref = _reference(per_half_replica=True)
    for step in range(STEPS):
        g0, g1 = ranks[0]["default"]["grads"][step], ranks[1]["default"]["grads"][step]
        assert all(torch.equal(a, b) for a, b in zip(g0, g1))
        mean = [(a + b) / 2 for a, b in zip(*ref["half_grads"][step])]
        assert _close(g0, mean)
        # and the average is not one of the halves: each shard's gradient differs from the mean
        assert not _close(g0, list(ref["half_grads"][step][0]))


@pytest.mark.slow
def test_default_run_equals_single_process_with_each_half_masked_by_its_rank(ranks):
    ref = _reference(per_half_replica=True)
    for r in range(WORLD):
        for step in range(STEPS):
            assert _close(ranks[r]["default"]["params"][step], ref["params"][step]), (r, step)
        assert ranks[r]["default"]["step"] == STEPS


@pytest.mark.slow
def test_matched_masks_run_equals_single_process_over_the_union(ranks):
    ref = _reference(per_half_replica=False, share=True, noise_shape=(1, None))
    for r in range(WORLD):
        for step in range(STEPS):
            assert _close(ranks[r]["matched"]["grads"][step], ref["grads"][step]), (r, step)
            assert _close(ranks[r]["matched"]["params"][step], ref["params"][step]), (r, step)
    # whereas the default (rank-folded) run is a different run from the plain union
    plain = _reference(per_half_replica=False)
    assert not _close(ranks[0]["default"]["params"][-1], plain["params"][-1])


@pytest.mark.slow
def test_run_is_reproducible_for_a_given_world_size(ranks):
    for r in range(WORLD):
        for a, b in zip(ranks[r]["default"]["params"], ranks[r]["default_again"]["params"]):
            assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.slow
def test_all_reduce_mean_weighs_ranks_by_example_count(ranks):
    # rank 0: loss sum 10 over 5 examples, rank 1: 20 over 10 -> 30 / 15
    assert ranks[0]["reduced"] == ranks[1]["reduced"] == {"loss": pytest.approx(2.0)}


def test_single_process_context_without_torchrun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    ctx = D.setup("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
    x = torch.arange(6)
    assert D.shard(x, ctx) is x
    model = nn.Linear(2, 2)
    assert D.wrap(model, ctx) is model and D.unwrap(model) is model
    assert D.all_reduce_mean({"acc": 3.0}, 4, ctx) == {"acc": 0.75}
    with pytest.raises(ValueError, match="backend must be"):
        D.setup("cpu", backend="mpi")
    monkeypatch.setenv("LOCAL_RANK", "x")
    with pytest.raises(ValueError, match="LOCAL_RANK"):
        D.setup("cpu")


@pytest.mark.slow
def test_lab_train_under_the_process_group_keeps_ranks_in_sync_and_only_rank0_writes(ranks, spawned):
    from droplab.lab.store import RunStore

    t0, t1 = ranks[0]["train"], ranks[1]["train"]
    # DDP averaged the gradients, so both ranks end with bit-identical parameters
    assert all(torch.equal(a, b) for a, b in zip(t0["params"], t1["params"]))
    assert t0["batch_loss"] == t1["batch_loss"]  # all-reduced over the ranks' shards
    assert t0["drop_steps"] == t1["drop_steps"] and min(t0["drop_steps"]) > 0
    assert isinstance(t0["run_id"], int) and t1["run_id"] is None
    with RunStore(spawned / "runs.db") as store:
        assert [r["name"] for r in store.list_runs()] == ["ddp"]


@pytest.mark.slow
def test_a_model_with_unseeded_dropout_wraps_and_ranks_still_draw_different_masks(ranks):
    masks = [r["unseeded_mask"] for r in ranks]
    assert masks[0].shape == (1, 256)
    assert not torch.equal(masks[0], masks[1])  # same torch seed on both ranks; the rank is folded in
