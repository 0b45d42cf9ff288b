"""Measuring the memory of a forward/backward: bytes saved for backward, and the live-bytes peak.

Two context managers, used together around a probe step:

* :class:`SavedBytes` counts the bytes of the tensors autograd saves for the backward
  (``torch.autograd.graph.saved_tensors_hooks``). A tensor is counted by its *storage*, once per
  storage (views of one buffer, and the same tensor saved by several ops, cost memory once), and
  storages of the frozen weights are left out (saving them costs nothing: they are resident anyway).
* :class:`PeakBytes` measures the highest number of bytes allocated on the device inside the
  block, above what was allocated when it started. On CUDA that is the caching allocator's own
  peak (``torch.cuda.max_memory_allocated``), which sees every allocation. Elsewhere (CPU) a
  ``TorchDispatchMode`` records the storage of every tensor an op creates and a finaliser on the
  storage records its release; it sees every tensor of the forward and the backward, but not the
  scratch memory a kernel allocates and frees inside one call.
"""
from __future__ import annotations

import weakref
from typing import Dict, Iterable, List, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["SavedBytes", "PeakBytes", "storage_key", "unique_storage_bytes"]


def storage_key(tensor: torch.Tensor) -> Optional[int]:
    """The address of ``tensor``'s storage (what identifies one buffer), or ``None`` without one."""
    try:
        return tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # sparse / nested / meta tensors have no plain storage
        return None


def unique_storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (tied or viewed weights counted once)."""
    seen: Dict[int, int] = {}
    for t in tensors:
        key = storage_key(t)
        if key is not None and key != 0:
            seen[key] = t.untyped_storage().nbytes()
    return sum(seen.values())


class SavedBytes:
    """Counts the bytes autograd saves for the backward inside the ``with`` block.

    Args:
        exclude: storage addresses (:func:`storage_key`) not to count, e.g. the model's weights.

    Attributes:
        bytes: the distinct storages saved so far, in bytes.
    """

    def __init__(self, exclude: Iterable[int] = ()):
        self._exclude = set(exclude)
        self._seen: Dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    @property
    def bytes(self) -> int:
        return sum(self._seen.values())

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key = storage_key(tensor)
        if key is not None and key != 0 and key not in self._exclude:
            self._seen[key] = tensor.untyped_storage().nbytes()
        return tensor  # kept as autograd would keep it: counting must not change what is stored

    @staticmethod
    def _unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def __enter__(self) -> "SavedBytes":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


class _LiveStorages(TorchDispatchMode):
    """Tracks the bytes of the storages that ops create (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: Dict[int, int] = {}
        self._finalizers: List[weakref.finalize] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # An output that shares storage with an input (in-place ops, views, out=) allocates nothing.
        inputs = {storage_key(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                key = storage_key(t)
                if key is not None and key != 0 and key not in inputs and key not in self._live:
                    self._add(key, t.untyped_storage())
        return out

    def _add(self, key: int, storage) -> None:
        size = storage.nbytes()
        self._live[key] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        # The storage's Python object lives exactly as long as the buffer (PyTorch preserves it), so
        # its finaliser runs when the memory is released.
        self._finalizers.append(weakref.finalize(storage, self._release, key))

    def _release(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)

    def detach(self) -> None:
        """Stop listening for releases (storages still alive keep no reference to this tracker)."""
        for f in self._finalizers:
            f.detach()
        self._finalizers.clear()


class PeakBytes:
    """Peak bytes allocated on ``device`` inside the ``with`` block, above its start (see the
    module docstring for how each device is measured).

    Attributes:
        bytes: the peak, available after the block.
    """

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.bytes = 0
        self._start = 0
        self._mode: Optional[_LiveStorages] = None

    def __enter__(self) -> "PeakBytes":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._mode = _LiveStorages()
            self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._mode is None:
            torch.cuda.synchronize(self.device)
            self.bytes = max(0, torch.cuda.max_memory_allocated(self.device) - self._start)
            return
        self._mode.__exit__(*exc)
        self._mode.detach()
        self.bytes = self._mode.peak
