"""Training batches from WebDataset shards with a fixed epoch length and an exact, cheap resume.

:class:`ShardBatchStream` turns a :class:`~fastprompt.data.shards.ShardDataset` into the batches a
trainer consumes, for long (multi-day, preemptible) runs:

* **Endless per-rank stream.** Each DataLoader worker ``w`` of ``N`` on rank ``r`` of ``W`` reads,
  epoch after epoch, the shards ``order(e)[r::W][w::N]`` (``order(e)``: the shard list, shuffled
  from ``dataset.seed + e`` when the dataset shuffles shards) through the dataset's seeded shuffle
  buffer. These *stream epochs* are the worker's own: a worker runs into its next one whenever its
  shards are used up, mid-batch if need be.
* **Fixed trainer epochs.** ``len(stream)`` = samples of the set (``shards.json``, or counted from
  the tar headers) ``// (batch_size * W)``, the same on every rank, so ranks always take the same
  number of steps and never wait for one another in a collective at an epoch's end. A batch comes
  whole from one worker (IterableDataset semantics), workers taking turns.
* **Exact position.** Every sample carries its worker's raw position: ``(stream epoch, raw samples
  taken from that epoch's shuffled stream, samples skipped so far)``. Raw samples include those that
  then fail to decode, so a corrupt sample (skipped and counted as by ``ShardDataset``) cannot shift
  the stream. The stream records each worker's position as of the last batch it yielded;
  :meth:`ShardBatchStream.state_dict` is these positions plus the batch count. On resume each
  worker reads its epoch's samples up to its position without decoding them (tar reading only) and
  goes on; earlier stream epochs are not read at all.
* **Augmentation.** A sample's transform runs under RNG seeds derived from ``(seed, rank, worker,
  stream epoch, raw position)``, so the images after a resume equal those of an uninterrupted run.

The dataset's own ``set_epoch`` and ``split_by_node`` are not used: rank and world come from the
constructor.
"""
from __future__ import annotations

import hashlib
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..errors import DataError
from .images import skip_collate
from .shards import ShardDataset, count_samples

__all__ = ["ShardBatchStream"]

STATE_FORMAT = "fastprompt.shard_stream/1"
Position = Tuple[int, int, int]  # (stream epoch, raw samples taken in it, samples skipped in all)


def transform_seed(seed: int, rank: int, worker: int, epoch: int, position: int) -> int:
    """A 63-bit seed for the transform of one raw sample of one worker's stream."""
    digest = hashlib.blake2b(f"{seed}/{rank}/{worker}/{epoch}/{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class _SkipCount:
    """Samples one worker skipped so far; a damaged tar member met while re-reading already-counted
    samples on resume (``replaying``) is not counted again."""

    def __init__(self, dataset: ShardDataset, skipped: int, replaying: bool):
        self.dataset, self.skipped, self.replaying = dataset, skipped, replaying

    def tar_error(self, exc: Exception) -> bool:
        if self.replaying:
            return True
        self.skipped += 1
        return self.dataset.tar_error(exc)


class _WorkerSamples(IterableDataset):
    """``(image, label, (worker, epoch, taken, skipped))`` of one logical worker, endless.

    DataLoader worker ``i`` plays logical worker ``(i + rotate) % workers``: a resumed DataLoader
    starts with its worker 0, and the rotation makes that the worker whose turn it was.
    """

    def __init__(self, dataset: ShardDataset, seed: int, rank: int, world: int, workers: int,
                 starts: Sequence[Position], rotate: int):
        super().__init__()
        self.dataset, self.seed, self.rank, self.world, self.workers = dataset, seed, rank, world, workers
        self.starts, self.rotate = list(starts), rotate

    def __iter__(self):
        info = get_worker_info()
        worker = ((0 if info is None else info.id) + self.rotate) % self.workers
        epoch, skip, skipped = self.starts[worker]
        count = _SkipCount(self.dataset, skipped, replaying=skip > 0)
        while True:
            taken = decoded = 0
            raw = self.dataset.raw_samples(epoch, rank=self.rank, world=self.world, worker=worker,
                                           num_workers=self.workers, handler=count.tar_error)
            for sample in raw:
                taken += 1
                if taken <= skip:  # already consumed before the saved position: read, not decoded
                    count.replaying = taken < skip
                    continue
                out = self.dataset.decode(sample, transform_seed(self.seed, self.rank, worker, epoch, taken))
                if out is None:
                    count.skipped += 1
                    continue
                decoded += 1
                yield out[0], out[1], (worker, epoch, taken, count.skipped)
            if taken < skip:
                raise DataError(f"rank {self.rank} worker {worker}: the saved position is raw sample {skip} of stream "
                                f"epoch {epoch}, but its shards hold only {taken}; the shards changed since the state "
                                "was saved: resume with the shard set it was saved with, or start the run afresh")
            if decoded == 0 and skip == 0:  # an endless loop over empty stream epochs otherwise
                shards = self.dataset.shard_order(epoch, rank=self.rank, world=self.world, worker=worker,
                                                  num_workers=self.workers)
                raise DataError(f"rank {self.rank} worker {worker}: stream epoch {epoch} gave no decodable sample "
                                f"from its shards {shards}; repack them (`fastprompt data pack`) or leave them out")
            epoch, skip = epoch + 1, 0


class _CollateWithPosition:
    """``(collate_fn(images and labels), position of the batch's last sample)``; a batch of an
    IterableDataset comes from one worker, so its last sample holds the worker's furthest position."""

    def __init__(self, collate_fn: Callable):
        self.collate_fn = collate_fn

    def __call__(self, samples):
        return self.collate_fn([(image, label) for image, label, _ in samples]), samples[-1][2]


class ShardBatchStream:
    """Batches ``(images [B, ...], labels [B])`` of one rank, ``B = batch_size``, from an endless,
    resumable per-rank sample stream (see the module docstring).

    Args:
        dataset: the shards; its ``transform`` must give tensors (the batches are collated).
        batch_size: samples per batch of this process.
        num_workers: DataLoader worker processes (0: read in this process, as one worker).
        seed: seeds the per-sample transform RNG (shard order and shuffle buffer use ``dataset.seed``).
        rank, world: this process and the number of processes.
        pin_memory, collate_fn: passed to the DataLoader (``collate_fn`` gets ``(image, label)`` lists).

    Use: ``set_position(epoch, start)`` then ``for batch in stream`` gives the ``len(stream) - start``
    batches left in that epoch, continuing one persistent DataLoader iterator; ``state_dict()`` /
    ``load_state_dict(state)`` save and restore the position between batches.
    """

    def __init__(self, dataset: ShardDataset, batch_size: int, *, num_workers: int = 0, seed: int = 0,
                 rank: int = 0, world: int = 1, pin_memory: bool = False, collate_fn: Callable = skip_collate):
        if batch_size < 1 or num_workers < 0 or world < 1 or not 0 <= rank < world:
            raise ValueError(f"ShardBatchStream needs batch_size >= 1, num_workers >= 0 and 0 <= rank < world; got "
                             f"batch_size={batch_size}, num_workers={num_workers}, rank={rank}, world={world}")
        self.dataset, self.batch_size, self.num_workers = dataset, int(batch_size), int(num_workers)
        self.seed = int(seed)
        self.rank, self.world, self.pin_memory, self.collate_fn = int(rank), int(world), pin_memory, collate_fn
        self.workers = max(1, self.num_workers)
        if len(dataset.shards) < self.world * self.workers:
            raise DataError(f"{len(dataset.shards)} shard(s) cannot give each of {self.world} process(es) x "
                            f"{self.workers} worker(s) a shard; use fewer DataLoader workers or pack smaller shards "
                            "(`fastprompt data pack --shard-size`)")
        total = dataset.num_samples if dataset.num_samples is not None else count_samples(dataset.shards)
        self.batches_per_epoch = total // (self.batch_size * self.world)
        if self.batches_per_epoch < 1:
            raise DataError(f"{total} samples cannot fill one global batch of {self.batch_size * self.world} "
                            f"({self.world} process(es) x {self.batch_size}); lower the batch size")
        self._positions: List[Position] = [(0, 0, 0)] * self.workers
        self._batches = 0
        self._iterator: Optional[Iterator] = None

    def __len__(self) -> int:
        """Batches per epoch, the same on every rank."""
        return self.batches_per_epoch

    @property
    def position(self) -> Tuple[int, int]:
        """``(epoch, batches of it done)`` the next batch belongs to."""
        return divmod(self._batches, self.batches_per_epoch)

    @property
    def skipped(self) -> int:
        """Samples of this rank skipped before the yielded batches (undecodable, incomplete, damaged
        tar members): exact, and kept across a resume (unlike ``dataset.skipped``, which counts what
        this process's workers met, read-ahead included)."""
        return sum(p[2] for p in self._positions)

    def set_position(self, epoch: int, start: int) -> None:
        """Check that the trainer is at ``(epoch, start)`` where the stream is (after ``load_state_dict``
        for a resumed run); the stream moves only forward, batch by batch."""
        if epoch * self.batches_per_epoch + start != self._batches:
            at_epoch, at_start = self.position
            raise ValueError(f"the trainer is at epoch {epoch} batch {start}, the shard stream at epoch {at_epoch} "
                             f"batch {at_start} ({len(self)} batches per epoch); load the stream state saved with "
                             "the trainer's checkpoint (ShardBatchStream.load_state_dict) before resuming")

    def __iter__(self) -> Iterator:
        """The batches left in the current epoch, continuing the persistent stream."""
        for _ in range(self.batches_per_epoch - self._batches % self.batches_per_epoch):
            batch, (worker, epoch, taken, skipped) = next(self._loader_iterator())
            self._positions[worker] = (epoch, taken, skipped)
            self._batches += 1  # counted before the yield: the trainer has the batch once it is yielded
            yield batch

    def _loader_iterator(self) -> Iterator:
        if self._iterator is None:
            source = _WorkerSamples(self.dataset, self.seed, self.rank, self.world, self.workers, self._positions,
                                    rotate=self._batches % self.workers)
            # an own generator: creating the iterator must not draw from the trainer's global RNG
            loader = DataLoader(source, batch_size=self.batch_size, num_workers=self.num_workers,
                                collate_fn=_CollateWithPosition(self.collate_fn), pin_memory=self.pin_memory,
                                generator=torch.Generator().manual_seed(self.seed))
            self._iterator = iter(loader)
        return self._iterator

    def close(self) -> None:
        """Stop the DataLoader workers (a later iteration starts new ones at the recorded position)."""
        self._iterator = None

    def _config(self) -> dict:
        """What the worker streams depend on besides the partition: a resume under other values would
        silently read other samples."""
        d = self.dataset
        return {"shards": len(d.shards), "dataset_seed": d.seed, "shuffle_shards": bool(d.shuffle_shards),
                "shuffle_buffer": d.shuffle_buffer, "seed": self.seed, "batch_size": self.batch_size}

    def state_dict(self) -> dict:
        """This rank's position: JSON-serialisable (ints, lists, strings)."""
        return {"format": STATE_FORMAT, "rank": self.rank, "world": self.world, "num_workers": self.num_workers,
                "batches": self._batches, "workers": [list(p) for p in self._positions], "config": self._config()}

    def gathered_state_dict(self) -> List[dict]:
        """Every rank's :meth:`state_dict`, in rank order, for rank 0 to save; a collective under
        ``torch.distributed`` (every rank must call it; with NCCL the current CUDA device must be
        this rank's). Without an initialised process group: ``[self.state_dict()]``."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return [self.state_dict()]
        if dist.get_world_size() != self.world or dist.get_rank() != self.rank:
            raise ValueError(f"the stream was built for rank {self.rank} of {self.world}, torch.distributed runs "
                             f"rank {dist.get_rank()} of {dist.get_world_size()}; build it with the process "
                             "group's rank and world size")
        out: List[Optional[dict]] = [None] * self.world
        dist.all_gather_object(out, self.state_dict())
        return out  # type: ignore[return-value]

    def load_state_dict(self, state: Union[dict, Sequence[dict], None]) -> None:
        """Resume at ``state``: this rank's :meth:`state_dict`, or the list of
        :meth:`gathered_state_dict` (this rank's entry is taken). Refused when the partition of shards
        over ranks and workers, or the stream's configuration, would differ from the saved one."""
        if state is None:
            raise ValueError("the checkpoint holds no shard stream state (it was saved by a run that did not train "
                             "from shards, or before the stream saved its position), so the data position cannot be "
                             "restored; resume from a checkpoint of this shard run, or start afresh")
        if not isinstance(state, dict):
            states = list(state)
            if len(states) != self.world:
                raise ValueError(f"the saved shard stream state has {len(states)} rank(s), this run has world size "
                                 f"{self.world}; resume with {len(states)} process(es), or start the data stream "
                                 "afresh")
            state = states[self.rank]
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a shard stream state (format {state.get('format')!r}, expected {STATE_FORMAT!r})")
        if state["world"] != self.world or state["rank"] != self.rank:
            raise ValueError(f"the shard stream state was saved by rank {state['rank']} of {state['world']}, this is "
                             f"rank {self.rank} of {self.world}: each rank reads its own shards, so resume with "
                             f"{state['world']} process(es)")
        if max(1, state["num_workers"]) != self.workers:
            raise ValueError(f"the shard stream state was saved with num_workers={state['num_workers']}, this stream "
                             f"has num_workers={self.num_workers}: the workers' shares of the shards would change; "
                             f"resume with num_workers={state['num_workers']}")
        changed = {k: (v, self._config()[k]) for k, v in state["config"].items() if self._config().get(k) != v}
        if changed:
            what = ", ".join(f"{k} saved {a!r} now {b!r}" for k, (a, b) in changed.items())
            raise ValueError(f"the shard stream state does not fit this stream ({what}); resume with the saved values")
        self.close()
        self._positions = [tuple(int(x) for x in p) for p in state["workers"]]  # type: ignore[misc]
        self._batches = int(state["batches"])
