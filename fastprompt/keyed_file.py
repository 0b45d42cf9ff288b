"""A safetensors file whose metadata is the key it was computed for: the caches' one read and write.

fastprompt's caches live under :func:`cache_dir` (``$FASTPROMPT_CACHE``, else
``$XDG_CACHE_HOME/fastprompt`` or ``~/.cache/fastprompt``). The caches (the zero-shot classifier, :mod:`fastprompt.learners.zero_shot_cache`; the frozen
image features, :mod:`fastprompt.features.store`) store tensors that are a pure function of
the key fields. The fields are the file's metadata: a file is trusted only when they equal the
key asked for, and any file that cannot be read is recomputed (a warning, never an error). Writes
go through :func:`fastprompt.atomic_io.atomic_write` (temporary file, fsync, rename); a folder that
cannot be written is skipped with a warning, the run goes on with what it computed.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, Optional

import torch

__all__ = ["cache_dir", "read_keyed", "write_keyed"]

logger = logging.getLogger("fastprompt")


def cache_dir() -> str:
    """fastprompt's cache folder (not created here)."""
    explicit = os.environ.get("FASTPROMPT_CACHE")
    if explicit:
        return os.path.abspath(os.path.expanduser(explicit))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(os.path.abspath(base), "fastprompt")


def read_keyed(path: str, key: Dict[str, str], what: str) -> Optional[Dict[str, torch.Tensor]]:
    """Every tensor of the file at ``path`` if it exists and its metadata is ``key``; else ``None``
    (``what`` names the cache in the warnings: "zero-shot cache")."""
    if not os.path.isfile(path):
        return None
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            if f.metadata() != key:
                logger.warning("fastprompt: %s %s has other key fields; recomputing", what, path)
                return None
            return {name: f.get_tensor(name) for name in f.keys()}
    except Exception as exc:  # noqa: BLE001 - any unreadable entry is recomputed, never trusted
        logger.warning("fastprompt: cannot read the %s %s (%s); recomputing", what, path, exc)
        return None


def write_keyed(path: str, tensors: Dict[str, torch.Tensor], key: Dict[str, str], what: str, hint: str) -> None:
    """Write ``tensors`` (moved to the CPU, contiguous) with ``key`` as metadata, atomically; a
    failure is a warning naming ``what`` and ``path``, with ``hint`` (what to do)."""
    from safetensors.torch import save_file

    from .atomic_io import atomic_write

    tensors = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=key))
    except OSError as exc:
        logger.warning("fastprompt: cannot write the %s %s (%s); %s", what, path, exc.strerror or exc, hint)
