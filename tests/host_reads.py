"""Count the places where Python code reads tensor values back to the host.

On a GPU each such read is a device sync (what ``torch.cuda.set_sync_debug_mode("warn")`` reports
there); on the CPU it is cheap but happens at the same places, so counting them on the CPU tells
how many syncs a step would make on a GPU. Counted: every scalar read (``item``, ``int``,
``float``, ``bool``, ``__index__`` all reach ``aten::_local_scalar_dense``), ops whose output size
depends on values (``nonzero``, ``masked_select``, ``unique``, ``repeat_interleave`` without
``output_size``), and ``Tensor.tolist`` / ``Tensor.numpy`` (which read without dispatching).
"""
from __future__ import annotations

import collections
import contextlib
import os
import traceback
from typing import Counter, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fastprompt

_VALUE_DEPENDENT = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::_unique2",
                    "aten::unique_consecutive", "aten::unique_dim"}


# The package's own directory, not any path with "fastprompt" in it: CI's virtualenv lives in
# ~/.cache/fastprompt/venv, so torch's own frames would otherwise pass for the project's.
_PACKAGE_DIR = os.path.dirname(os.path.abspath(fastprompt.__file__)) + os.sep


def _where() -> str:
    """The innermost frame of the fastprompt package on the current stack (``file:line``, relative
    to the package), or ``?``."""
    for frame in reversed(traceback.extract_stack()):
        filename = os.path.abspath(frame.filename)
        if filename.startswith(_PACKAGE_DIR):
            return f"{filename[len(_PACKAGE_DIR):]}:{frame.lineno}"
    return "?"


# Code that reads only for CPU tensors and skips without reading for others: the attention op's
# check for NaN or inf before it picks its exact masked path (fastprompt/ops/masked_exactness.py).
CPU_ONLY = ("ops/masked_exactness.py",)


class HostReads(TorchDispatchMode):
    """``with HostReads() as reads: ...`` then ``reads.total`` and ``reads.where`` (a Counter of
    ``(kind, fastprompt file:line)``)."""

    def __init__(self):
        super().__init__()
        self.where: Counter = collections.Counter()

    @property
    def total(self) -> int:
        return sum(self.where.values())

    @property
    def on_gpu(self) -> Counter:
        """The reads a GPU run would make: those of :data:`CPU_ONLY` code are left out."""
        return collections.Counter({k: n for k, n in self.where.items() if not k[1].startswith(CPU_ONLY)})

    def record(self, kind: str) -> None:
        self.where[(kind, _where())] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        if name in _VALUE_DEPENDENT or (name == "aten::repeat_interleave" and kwargs.get("output_size") is None
                                        and not isinstance(args[1] if len(args) > 1 else None, int)):
            self.record(name)
        return func(*args, **kwargs)

    @contextlib.contextmanager
    def _patched(self) -> Iterator[None]:
        originals = {name: getattr(torch.Tensor, name) for name in ("tolist", "numpy")}

        def wrap(name):
            def method(tensor, *args, **kwargs):
                self.record(f"Tensor.{name}")
                return originals[name](tensor, *args, **kwargs)
            return method

        try:
            for name in originals:
                setattr(torch.Tensor, name, wrap(name))
            yield
        finally:
            for name, fn in originals.items():
                setattr(torch.Tensor, name, fn)

    def __enter__(self):
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(self._patched())
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._stack.close()
