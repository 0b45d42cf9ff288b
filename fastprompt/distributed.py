"""``torchrun`` support: process group from the environment, gradient averaging, gathering.

Under ``torchrun --nproc_per_node N`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``
set) :func:`init_from_env` starts the default process group (nccl when the process has a GPU,
gloo otherwise) and picks the process's device. Only the prompt parameters train, so instead of
wrapping the learner in ``DistributedDataParallel`` (whose hooks only fire through the wrapped
``forward``, while a learner trains through ``learner.loss``), the trainer averages their
gradients with one ``all_reduce`` per optimizer step: the same result as DDP's bucketed
all-reduce, for a few kilobytes to megabytes of prompts.
"""
from __future__ import annotations

import os
from typing import Callable, List, Tuple, TypeVar

import torch
import torch.distributed as dist

from .errors import ConfigError, TrainError

__all__ = ["init_from_env", "checked_device", "shutdown", "world", "is_main", "launched_rank", "average_gradients",
           "gather_cat", "barrier", "broadcast_object", "all_gather_objects", "mean_over_ranks", "on_every_rank",
           "is_launch_main"]

T = TypeVar("T")

_OWNED = False  # whether init_from_env started the process group (then shutdown() ends it)


def init_from_env(device: str = "") -> Tuple[int, int, torch.device]:
    """``(rank, world_size, device)``; starts the process group when ``WORLD_SIZE > 1``."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device:
        dev = checked_device(device)
    else:
        dev = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local)
    if size > 1 and not dist.is_initialized():
        global _OWNED
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        _OWNED = True
    rank, size = world()
    return rank, size, dev


def checked_device(device: str) -> torch.device:
    """``torch.device(device)`` when this machine has it, else a ``ConfigError`` saying what it has."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"TRAIN.DEVICE (--device) {device!r} is not a torch device: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"TRAIN.DEVICE (--device) {device!r}: no CUDA device is available here "
                              "(torch.cuda.is_available() is False); use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"TRAIN.DEVICE (--device) {device!r}: this machine has {count} CUDA device(s), "
                              f"cuda:0 to cuda:{count - 1}")
    elif dev.type != "cpu":
        try:
            torch.empty(0, device=dev)
        except (RuntimeError, AssertionError) as exc:
            raise ConfigError(f"TRAIN.DEVICE (--device) {device!r} is not usable here: {str(exc).splitlines()[0]}") \
                from None
    return dev


def shutdown() -> None:
    """End of a run on every rank: wait for the others, then destroy the process group that
    :func:`init_from_env` started (one the caller started is left alone). A rank that exits with
    the group alive can abort at interpreter exit ("terminate called without an active exception")
    while gloo's threads still run."""
    global _OWNED
    if _OWNED and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    _OWNED = False


def world() -> Tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def launched_rank() -> int:
    """This process's rank as torchrun launched it (``RANK``), known before the process group starts."""
    return int(os.environ.get("RANK", "0"))


def is_launch_main() -> bool:
    """Whether this process is rank 0 of a torchrun launch (or the only process): the one that says
    and writes what must appear once (a command's summary, a grid's progress and evaluations).

    The rank is torchrun's ``RANK`` (:func:`launched_rank`), not the process group's: each run starts
    and shuts down its own group, so between runs, or when a summary prints, every rank would look
    like rank 0. Errors are not summaries: each rank that fails reports its own.
    """
    return launched_rank() == 0


def average_gradients(params: List[torch.nn.Parameter], ok: bool = True) -> bool:
    """Average ``p.grad`` over the ranks; ``False`` (grads untouched) when some rank is not ``ok``.

    A parameter with a gradient on some rank only gets zeros elsewhere; one with no gradient on any
    rank keeps ``None`` (as in a single process, so SGD's weight decay and momentum skip it alike).
    ``ok=False`` (this rank's loss was not finite) travels in the same reduction, so every rank
    learns of it at the same step and stops together instead of waiting for a rank that stopped.
    """
    _, size = world()
    if size == 1:
        return ok
    device = params[0].device
    has = torch.tensor([p.grad is not None for p in params] + [not ok], dtype=torch.float32, device=device)
    dist.all_reduce(has)
    if has[-1] > 0:
        return False
    active = [p for p, h in zip(params, has[:-1].tolist()) if h > 0]
    if not active:
        return True
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in active])
    dist.all_reduce(flat)
    flat /= size
    offset = 0
    for p in active:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).to(p.dtype)
        offset += n
    return True


def gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenation over the ranks of a CPU tensor (lengths may differ)."""
    _, size = world()
    if size == 1:
        return t
    parts: List[torch.Tensor] = [None] * size  # type: ignore[list-item]
    dist.all_gather_object(parts, t.cpu())
    return torch.cat(parts)


def mean_over_ranks(total: float, count: int) -> float:
    """``sum(total) / sum(count)`` over the ranks (e.g. the mean loss of the global batches)."""
    if world()[1] > 1:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        box = torch.tensor([float(total), float(count)], dtype=torch.float64, device=device)
        dist.all_reduce(box)  # nccl reduces CUDA tensors only
        total, count = float(box[0]), float(box[1])
    return total / max(count, 1)


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank."""
    _, size = world()
    if size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in one process)."""
    _, size = world()
    if size == 1:
        return [obj]
    out = [None] * size
    dist.all_gather_object(out, obj)
    return out


def on_every_rank(step: Callable[[], T], errors: Tuple[type, ...]) -> T:
    """``step()`` on this rank, and every rank goes on only if it succeeded on all of them.

    A rank where ``step`` raised one of ``errors`` re-raises it; the other ranks raise a
    :class:`~fastprompt.errors.TrainError` naming the first rank that failed and its message. So
    every rank stops at the same point with a line of its own, instead of waiting in the next
    collective for a rank that has left. Every rank of the group must call it (one
    ``all_gather_object``; nothing to exchange in one process). Any other exception is a bug: it
    propagates at once, and torchrun ends the other ranks.
    """
    error = None
    try:
        value = step()
    except errors as exc:
        error = exc
    failed = [(rank, msg) for rank, msg in enumerate(all_gather_objects(None if error is None else str(error)))
              if msg is not None]
    if error is not None:
        raise error
    if failed:
        rank, msg = failed[0]
        raise TrainError(f"stopped because rank {rank} failed: {msg}")
    return value


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()
