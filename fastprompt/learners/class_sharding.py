"""Class-sharded text encoding under ``torchrun``: each rank encodes a slice of the classes.

A full-vocabulary loss (POMP's ``mode="full"``, RPP's plain cross-entropy) needs the text
features of all ``N`` classes on every rank, and encoding them is the step's largest cost once
``N`` reaches ImageNet-21K's thousands. Every rank would otherwise encode the same ``N`` classes.
Here rank ``r`` of ``W`` encodes only its contiguous slice (``ceil(N/W)`` classes at most) on the
packed prefix-shared path (``learner.text_features(class_indices)``) and the slices are
all-gathered with autograd, so the text cost per rank falls as ranks are added while the loss and
the (rank-averaged) prompt gradients stay those of one process.

Works on gloo (CPU) and nccl (GPU): only ``all_gather`` and ``all_reduce`` are used (gloo has no
``reduce_scatter``). Without a process group (or with one rank) everything falls back to
``learner.text_features()``, unchanged.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.distributed as dist

__all__ = ["shard_bounds", "all_gather_rows", "sharded_text_features", "full_text_features"]


def _world(group=None) -> Tuple[int, int]:
    """``(rank, world_size)`` in ``group``; ``(0, 1)`` without a running process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def shard_bounds(n_rows: int, world_size: int) -> List[Tuple[int, int]]:
    """Contiguous ``[start, stop)`` row ranges of every rank: ``ceil(n_rows / world_size)`` rows each,
    the last non-empty one shorter, and empty ranges ``(n_rows, n_rows)`` past the end (when
    ``n_rows < world_size`` or the rounding leaves ranks over).

    Contiguous slices of equal size ``S`` put every rank's rows at ``r*S`` in the gathered
    ``[W*S, E]`` tensor and all the padding at its end, so the class order is restored by one
    ``[:n_rows]`` (no index scatter), and each rank's slice is one ``plan.select`` of a range.
    """
    if n_rows < 0:
        raise ValueError(f"n_rows must be >= 0, got {n_rows}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    per_rank = -(-n_rows // world_size)
    return [(min(r * per_rank, n_rows), min((r + 1) * per_rank, n_rows)) for r in range(world_size)]


class _AllGatherRows(torch.autograd.Function):
    """Forward: every rank's ``[n_r, E]`` rows, padded to ``S`` rows and all-gathered, cut to ``[N, E]``.

    Backward: the full ``[N, E]`` gradient summed over the ranks, then this rank's rows.

    Why the sum: rank ``q``'s loss ``L_q`` reads the rows of every rank, but the rows of rank ``r``
    have an autograd graph (into the prompts) on rank ``r`` only. So rank ``r`` must push
    ``sum_q dL_q/dF_r`` through its encoder, which the ``all_reduce(SUM)`` of the gathered gradient
    gives. Each rank then holds ``sum_q dL_q/dtheta`` restricted to its text slice plus its own
    ``dL_r/dtheta`` through the image side; the trainer's gradient averaging over ranks
    (``fastprompt.distributed.average_gradients``: sum, then divide by ``W``) adds the slices
    and yields ``(1/W) sum_q dL_q/dtheta``, the gradient of the mean of the per-rank losses, which
    for equal per-rank batches is the one-process gradient of the whole batch.
    """

    @staticmethod
    def forward(ctx, local: torch.Tensor, n_rows: int, group) -> torch.Tensor:
        rank, size = _world(group)
        bounds = shard_bounds(n_rows, size)
        start, stop = bounds[rank]
        if local.shape[0] != stop - start:
            raise ValueError(f"rank {rank} passed {local.shape[0]} rows but its slice of {n_rows} rows over "
                             f"{size} ranks is [{start}, {stop}); compute it from shard_bounds(n_rows, world_size)")
        per_rank = bounds[0][1] - bounds[0][0]
        padded = local.new_zeros((per_rank,) + tuple(local.shape[1:]))
        padded[:local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(size)]
        dist.all_gather(parts, padded.contiguous(), group=group)
        ctx.group, ctx.start, ctx.stop = group, start, stop
        return torch.cat(parts)[:n_rows]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        total = grad.contiguous().clone()  # all_reduce is in place; the incoming gradient may be shared
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        return total[ctx.start:ctx.stop], None, None


def all_gather_rows(local: torch.Tensor, n_rows: int, group=None) -> torch.Tensor:
    """All ranks' contiguous row slices ``[n_r, ...]`` concatenated in rank order: ``[n_rows, ...]``.

    ``local`` must hold rows ``shard_bounds(n_rows, W)[rank]`` (possibly none, but with the same
    trailing shape and dtype as the other ranks'); every rank of ``group`` must call this, and,
    when the result requires grad on one rank, backpropagate through it on all of them (the
    backward is a collective too). Gradient: see :class:`_AllGatherRows`. With one process it
    returns ``local`` itself.
    """
    if _world(group)[1] == 1:
        if local.shape[0] != n_rows:
            raise ValueError(f"one process holds all {n_rows} rows, got {local.shape[0]}")
        return local
    return _AllGatherRows.apply(local, n_rows, group)


def sharded_text_features(learner, group=None) -> torch.Tensor:
    """Unnormalised text features ``[N, E]`` of all ``N = learner.n_classes`` classes, in class
    order, with autograd into the prompts: this rank encodes only its contiguous slice
    (``learner.text_features(indices)``, the packed prefix-shared path) and the slices are
    all-gathered. One process: exactly ``learner.text_features()``.

    A rank whose slice is empty (``N < W``) still encodes one class and keeps none of its rows:
    its output then requires grad exactly when the other ranks' does, so every rank reaches the
    backward's ``all_reduce`` together (and it would only have waited for the others anyway).
    """
    rank, size = _world(group)
    if size == 1:
        return learner.text_features()
    n_rows = learner.n_classes
    start, stop = shard_bounds(n_rows, size)[rank]
    if stop > start:
        local = learner.text_features(torch.arange(start, stop))
    else:
        local = learner.text_features(torch.tensor([n_rows - 1]))[:0]
    return all_gather_rows(local, n_rows, group)


def full_text_features(learner, group: Optional[object] = None) -> torch.Tensor:
    """The ``[N, E]`` text features of a full-vocabulary loss: :func:`sharded_text_features` when
    ``learner.shard_classes`` is on, else ``learner.text_features()`` (the default, one process)."""
    if getattr(learner, "shard_classes", False):
        return sharded_text_features(learner, group)
    return learner.text_features()
