"""Why a ``pretrained`` weights file (or folder) cannot be loaded into an open_clip model, in words.

:func:`~fastprompt.learners.pretrained.load_open_clip` asks :func:`weights_file_problem` only after
open_clip failed on a file, and raises its answer as one
:class:`~fastprompt.errors.PretrainedFileError`: a text file, an empty or truncated file, a file
whose suffix names the other format, pickled objects, or another architecture's weights, each
named with the path — instead of torch's or open_clip's traceback.
"""
from __future__ import annotations

import logging
import os
import pickle
from typing import Any, Dict, Mapping, Optional, Tuple

__all__ = ["CHECKPOINT_SUFFIXES", "WHAT_TO_GIVE", "folder_message", "weights_file_problem"]

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")

WHAT_TO_GIVE = ("Give a weights file of that model (an open_clip or OpenAI CLIP state dict: .pt, .bin or "
               ".safetensors), one of its open_clip tags, or random weights (pretrained=None, --pretrained none)")


def folder_message(path: str) -> str:
    """A ``pretrained`` folder: name the weights files in it, if any."""
    try:
        found = sorted(f for f in os.listdir(path) if f.lower().endswith(CHECKPOINT_SUFFIXES))
    except OSError:
        found = []
    inside = f" (in it: {', '.join(found[:3])}{', ...' if len(found) > 3 else ''})" if found else ""
    return (f"pretrained weights {path} is a folder, not a weights file: give the path of the checkpoint file "
            f"itself{inside}, or random weights (pretrained=None, --pretrained none)")


def _few(names, n: int = 3) -> str:
    names = list(names)
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def _file_format(head: bytes) -> Optional[str]:
    """What a weights file's first bytes say it is: ``"torch"`` (``torch.save``'s zip archive or
    its legacy pickle), ``"safetensors"`` (an 8-byte header length, then the JSON header), or None."""
    if head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        return "torch"
    if head[8:9] == b"{":
        return "safetensors"
    return None


def _read_weights(path: str, kind: str) -> Any:
    """The file's contents as open_clip reads them (safetensors, or ``torch.load`` weights-only)."""
    if kind == "safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def weights_file_problem(name: str, path: str) -> Optional[str]:
    """Why the weights file ``path`` cannot be loaded into the open_clip model ``name``, as a phrase
    for an error message; ``None`` when nothing is found wrong with it.

    Checked in order, as open_clip reads it: readable and not empty; a torch or safetensors file
    (by its first bytes), named by the suffix open_clip chooses its reader by; readable as such
    (not truncated, no pickled objects); a state dict of tensors; and its names and shapes those
    of ``name``'s parameters and buffers, after the renaming and resizing open_clip does itself
    (a ``module.`` prefix, the old text-tower names, a position embedding of another length).
    """
    if path.lower().endswith((".npz", ".npy")):  # big_vision weights: open_clip's own converter, not examined here
        return None
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as err:
        return f"it cannot be read ({err.strerror or err})"
    if size == 0:
        return "the file is empty (0 bytes)"
    kind = _file_format(head)
    if kind is None:
        return f"it is not a torch or safetensors file (it begins {head!r})"
    named = "safetensors" if path.lower().endswith(".safetensors") else "torch"
    if kind != named:
        return (f"it is a {kind} file but its name says {named}, and open_clip picks the reader by the name: rename it "
                f"to end in {'.safetensors' if kind == 'safetensors' else '.pt'}")
    try:
        state = _read_weights(path, kind)
    except Exception as err:  # noqa: BLE001 - torch and safetensors raise many types for a damaged file
        if isinstance(err, pickle.UnpicklingError) and "weights only load failed" in str(err).lower():
            return ("it holds pickled Python objects, which a weights-only load refuses: save the model's "
                    "state_dict() instead")
        first = (str(err).splitlines() or [""])[0].split(". ")[0][:160]  # torch goes on with advice of its own
        return f"the {kind} file is damaged or truncated (an interrupted download or copy?): {type(err).__name__}: {first}"
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not state:
        what = "an empty state dict" if isinstance(state, Mapping) else f"a {type(state).__name__}"
        return f"it holds {what}, not a state dict of the model's tensors"
    import torch

    bad = [repr(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        return f"it is not a state dict of named tensors: the entries {_few(bad)} are not"
    return _mismatch(name, state)


# Entries open_clip adds or drops itself when loading (factory.load_checkpoint).
_FILLED_IN = ("logit_bias",)
_DROPPED_SUFFIX = "position_ids"
_RESIZED = ("visual.positional_embedding", "positional_embedding", "text.positional_embedding")


def _mismatch(name: str, state: Mapping[str, Any]) -> Optional[str]:
    """The tensors of ``state`` that ``name``'s model lacks, the ones it has that ``state`` lacks,
    and those of another shape; ``None`` when all match."""
    import open_clip
    from open_clip.model import convert_to_custom_text_state_dict

    from ..models import load_hf_kernels_first  # here: this module stays free of torch at import

    load_hf_kernels_first()  # a Hugging Face text tower builds through transformers

    state = dict(state)
    if next(iter(state)).startswith("module"):
        state = {k[7:]: v for k, v in state.items()}
    saved = logging.root.manager.disable
    logging.disable(logging.WARNING)  # open_clip warns "no pretrained weights loaded" on stderr
    try:
        model = open_clip.create_model(name, pretrained=None, device="meta")
    except Exception:  # noqa: BLE001 - the architecture itself fails to build: not the file's fault
        return None
    finally:
        logging.disable(saved)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    expected: Dict[str, Tuple[int, ...]] = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state and k not in _FILLED_IN]
    unexpected = [k for k in state if k not in expected and not k.endswith(_DROPPED_SUFFIX)]
    reshaped = [k for k in state if k in expected and _other_shape(k, tuple(state[k].shape), expected[k])]
    if not (missing or unexpected or reshaped):
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} of the model's {len(expected)} tensors are missing ({_few(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} are not the model's ({_few(unexpected)})")
    if reshaped:
        parts.append(f"{len(reshaped)} have another shape ("
                     + _few(f"{k} {list(state[k].shape)} vs {list(expected[k])}" for k in reshaped) + ")")
    return f"its tensors are not those of {name!r} (the weights of another architecture?): {'; '.join(parts)}"


def _other_shape(key: str, got: Tuple[int, ...], want: Tuple[int, ...]) -> bool:
    if got == want:
        return False
    if key in ("logit_scale", "logit_bias"):  # a scalar for a 1-element tensor: open_clip reshapes it
        return _numel(got) != _numel(want)
    if key in _RESIZED:  # open_clip interpolates a position embedding of another length
        return len(got) != 2 or len(want) != 2 or got[1] != want[1]
    return True


def _numel(shape: Tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
