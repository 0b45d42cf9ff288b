"""Atomic files and the resumable training state.

Every file of a run directory is written atomically: a temporary file in the same folder,
``fsync``, ``os.replace`` over the target, ``fsync`` of the folder. A process killed at any
moment leaves either the old file or the new one, never a torn one.

The resumable state (``state.pt``) is one ``torch.save`` of plain containers, tensors and
numbers, so ``torch.load(path, weights_only=True)`` reads it (no pickled objects):

    {"format": 1, "method": str, "model": str, "epoch": int, "batch": int, "step": int,
     "finished": bool, "params": {name: tensor}, "optimizer": optimizer.state_dict(),
     "scaler": GradScaler.state_dict() or {}, "rng": {...}, "aggregator": {...} or {},
     "best": {"score": float, "epoch": int, "params": {...}} or {}, "skipped_images": int,
     "epoch_sums": [loss sum, batches] of the epoch so far (the logged running mean resumes too),
     "stream": every rank's batch-source state or None (on the original's streams: {"epoch": int,
               "torch": the epoch's start G state, "python": its start random.getstate()})}

``epoch``/``batch``: the next batch to train is batch ``batch`` of epoch ``epoch`` (0-based);
``step``: optimizer steps done. ``params`` holds the prompts themselves, so the state alone
restores the run (the ``prompt.safetensors`` beside it is for ``from_pretrained``).
"""
from __future__ import annotations

import io
import json
import random
from typing import Any, Dict

import numpy as np
import torch

from ..atomic_io import atomic_write, atomic_write_bytes, atomic_write_text
from ..errors import TrainError

__all__ = ["atomic_write", "write_text", "write_json", "save_state", "load_state", "rng_state", "set_rng_state",
           "STATE_FILE", "STATE_FORMAT"]

STATE_FILE = "state.pt"
STATE_FORMAT = 1


def write_text(path: str, text: str) -> None:
    atomic_write_text(path, text)


def write_json(path: str, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def rng_state() -> Dict[str, Any]:
    """The python / numpy / torch (and CUDA) RNG states as weights-only-loadable values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                                                   "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "torch": torch.random.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.random.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(path: str, state: Dict[str, Any]) -> None:
    """``torch.save`` of ``state`` to ``path``, atomically. Serialised in memory first (the state is
    the prompts, their optimizer state and a few numbers) and written by Python, so that a full disk
    is a :class:`~fastprompt.atomic_io.StorageFullError` with its errno, not torch's C++ stream error."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getbuffer())


def load_state(path: str) -> Dict[str, Any]:
    """Read a ``state.pt`` with ``weights_only=True``; errors name the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainError(f"no resumable state at {path}") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for damaged files
        raise TrainError(f"cannot read the resumable state {path} (damaged, or not a fastprompt state): {exc}") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise TrainError(f"{path} is not a fastprompt resumable state (format {STATE_FORMAT})")
    return state
