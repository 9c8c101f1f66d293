"""Data-parallel training for the lab: process-group setup from ``torchrun``, DDP, batch sharding, metrics.

The lab trains one model per process; under ``torchrun --nproc-per-node N`` the N processes form a
process group (gloo on CPU, NCCL on GPU), wrap the model in ``DistributedDataParallel``, and each
takes one contiguous shard of every *global* batch, so the data order, and therefore the run, is a
function of the seed and the world size only. Gradients are averaged by DDP's all-reduce; metrics are
all-reduced as example-weighted sums; only rank 0 writes the run store and the report.

droplab's dropout modules fold the rank into the mask counter, so each rank draws its own masks (the
data-parallel run is SGD on the global batch with an independent mask per shard). Modules built with
``share_across_ranks=True`` draw the same masks on every rank instead.

.. warning::
    ``torch.nn.Dropout`` under DDP draws from each process's global generator; with equal seeds on
    every rank its masks are identical across ranks, which quietly weakens the regularization. Convert
    models with :func:`droplab.convert` before wrapping them.

Example (``torchrun --nproc-per-node 2 train.py``)::

    ctx = setup()
    model = wrap(model, ctx)
    for xb, yb in batches:                       # global batches, identical on every rank
        xs, ys = shard(xb, ctx), shard(yb, ctx)  # this rank's part
        loss = F.cross_entropy(model(xs), ys)
        ...
    metrics = all_reduce_mean({"loss": total_loss}, count, ctx)
    cleanup(ctx)
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["DistContext", "setup", "cleanup", "wrap", "unwrap", "shard", "all_reduce_mean", "broadcast_object",
           "barrier", "launched_by_torchrun"]

_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a data-parallel job (``world_size == 1`` for a plain run)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # True when setup() created the process group (and cleanup() destroys it)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes the run store, checkpoints and reports."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when the environment carries a multi-process launch (``torchrun`` sets these variables)."""
    return all(name in os.environ for name in _ENV) and int(os.environ["WORLD_SIZE"]) > 1


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, but got {value!r}") from None


def setup(device: str | torch.device | None = None, *, backend: str | None = None,
          timeout_s: float = 300.0) -> DistContext:
    """Join the process group described by ``torchrun``'s environment, or return a single-process context.

    Args:
        device: the device to train on; ``None`` picks ``cuda:LOCAL_RANK`` when CUDA is available,
            else the CPU. Default: None.
        backend: ``"gloo"`` or ``"nccl"``; ``None`` picks NCCL for CUDA devices and gloo otherwise.
            Default: None.
        timeout_s: collective timeout in seconds. Default: 300.

    An existing process group (e.g. initialized by the caller) is reused and left to its owner.
    """
    import torch.distributed as dist

    if backend is not None and backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo', 'nccl' or None, but got {backend!r}")
    local_rank = _int_env("LOCAL_RANK", 0)
    if device is None:
        device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dist.get_backend(), device, False)
    if not launched_by_torchrun():
        return DistContext(device=device)
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed support; run without torchrun")
    if backend is None:
        backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, backend, device, True)


def cleanup(ctx: DistContext) -> None:
    """Destroy the process group if :func:`setup` created it."""
    import torch.distributed as dist

    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, ctx: DistContext, **ddp_kwargs) -> nn.Module:
    """``model`` on ``ctx.device``, wrapped in ``DistributedDataParallel`` when the job has several ranks.

    Every droplab dropout module's seed and step are first broadcast from rank 0, so ranks differ in
    their masks only through the rank folded into the counter (and not at all with
    ``share_across_ranks=True``).
    """
    model = model.to(ctx.device)
    if not ctx.distributed:
        return model
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from ..nn import StochasticModule

    # droplab's seed/step counters are CPU int64 buffers by design; NCCL cannot broadcast CPU tensors,
    # so DDP leaves them alone and they are made equal here once: equal seeds and equal step counts keep
    # every rank's counter in lockstep (the rank, not the seed, is what separates their masks)
    counters = []
    for name, module in model.named_modules():
        if isinstance(module, StochasticModule) and module.seeded:  # an unseeded module keeps no counters
            for buffer_name in ("seed", "step"):
                counters.append((f"{name}.{buffer_name}" if name else buffer_name, getattr(module, buffer_name)))
    if counters:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, [n for n, _ in counters])
        for _, buffer in counters:
            carrier = buffer.to(ctx.device) if ctx.backend == "nccl" else buffer.clone()
            dist.broadcast(carrier, src=0)
            buffer.copy_(carrier.cpu())
    if ctx.device.type == "cuda":
        ddp_kwargs.setdefault("device_ids", [ctx.device.index])
    return DistributedDataParallel(model, **ddp_kwargs)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (for state_dict, checkpoints and evaluation)."""
    return getattr(model, "module", model)


def shard(batch: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """This rank's contiguous part of a global batch (split along dim 0 as evenly as possible).

    Rank ``r`` of ``W`` takes rows ``[r*B/W, (r+1)*B/W)``, the same split on every run, so a run is
    reproducible for a given world size. A rank may receive an empty shard when ``B < W``.
    """
    if not ctx.distributed:
        return batch
    return torch.tensor_split(batch, ctx.world_size)[ctx.rank]


def all_reduce_mean(sums: Mapping[str, float], count: float, ctx: DistContext) -> dict[str, float]:
    """Example-weighted means over all ranks: ``sum_r sums[k]_r / sum_r count_r``.

    ``sums`` holds each metric's *sum* over this rank's examples (e.g. loss x batch size) and
    ``count`` this rank's number of examples, so uneven shards weigh correctly.
    """
    keys = sorted(sums)
    values = torch.tensor([float(sums[k]) for k in keys] + [float(count)], dtype=torch.float64)
    if ctx.distributed:
        import torch.distributed as dist

        # NCCL reduces only CUDA tensors; gloo only CPU ones
        values = values.to(ctx.device) if ctx.backend == "nccl" else values
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values = values.cpu()
    total = float(values[-1])
    if total <= 0:
        raise ValueError("all_reduce_mean needs a positive example count over all ranks, but got "
                         f"{total}")
    return {k: float(v) / total for k, v in zip(keys, values[:-1].tolist())}


def broadcast_object(obj, ctx: DistContext, src: int = 0):
    """``obj`` as rank ``src`` holds it, on every rank (e.g. an early-stopping decision)."""
    if not ctx.distributed:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src, device=ctx.device if ctx.backend == "nccl" else None)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        import torch.distributed as dist

        dist.barrier()
