"""The two random streams an original's augmentation draws from, as one value.

Dassl's training transforms draw from torch's CPU generator (``RandomResizedCrop``,
``RandomHorizontalFlip``) and from Python's ``random`` (``RandAugment2``): the main process's
global ones with ``DATALOADER.NUM_WORKERS 0``, worker ``k``'s with N workers.
:class:`Streams` holds both states; :func:`installed` makes them the process's global streams
for a block (the real transforms read the globals) and puts the caller's back afterwards, so
replaying a batch in the main process leaves its own streams as they were.
"""
from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from typing import Iterator, Tuple

import torch

__all__ = ["Streams", "capture", "installed", "generator_at", "random_at"]


@dataclass(frozen=True, eq=False)
class Streams:
    """``torch``: a CPU ``torch.Generator`` state (``uint8 [5056]``, ``get_state()``, the mt19937
    words and the cached normal sample); ``python``: a ``random.getstate()`` tuple."""

    torch: torch.Tensor
    python: Tuple

    def same_as(self, other: "Streams") -> bool:
        """Whether both streams are at the same position (bitwise)."""
        return torch.equal(self.torch, other.torch) and self.python == other.python

    @staticmethod
    def seeded(seed: int) -> "Streams":
        """The streams after ``torch.manual_seed(seed)`` and ``random.seed(seed)`` (what a DataLoader
        worker does first, with ``seed = base_seed + worker_id``)."""
        return Streams(torch.Generator().manual_seed(seed).get_state(), random.Random(seed).getstate())


def capture() -> Streams:
    """The process's global torch CPU and Python ``random`` states now."""
    return Streams(torch.get_rng_state(), random.getstate())


def generator_at(state: torch.Tensor) -> torch.Generator:
    """A private CPU generator at ``state``."""
    gen = torch.Generator()
    gen.set_state(state)
    return gen


def random_at(state: Tuple) -> random.Random:
    """A private ``random.Random`` at ``state``."""
    rng = random.Random()
    rng.setstate(state)
    return rng


@contextlib.contextmanager
def installed(streams: Streams) -> Iterator[None]:
    """Run the block with ``streams`` as the global torch CPU and Python streams, then restore the
    caller's. Read the block's end position with :func:`capture` inside the block."""
    before = capture()
    torch.set_rng_state(streams.torch)
    random.setstate(streams.python)
    try:
        yield
    finally:
        torch.set_rng_state(before.torch)
        random.setstate(before.python)
