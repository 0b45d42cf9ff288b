"""Prompt checkpoints: ``prompt.safetensors`` + ``fastprompt_config.json``, written atomically,
and readers for the original repositories' checkpoints."""
from __future__ import annotations

import collections.abc
import dataclasses
import json
import os
import typing
from typing import Any, Dict, Mapping

import torch

from ..atomic_io import atomic_write_bytes, atomic_write_text

PROMPT_FILE = "prompt.safetensors"
CONFIG_FILE = "fastprompt_config.json"


def write_prompt_checkpoint(directory: str, tensors: Dict[str, torch.Tensor], config: Dict[str, Any],
                            metadata: Dict[str, str]) -> None:
    """``tensors`` to ``prompt.safetensors`` and ``config`` to ``fastprompt_config.json`` in
    ``directory``, each atomically; serialised in memory first, so that a full disk is a
    :class:`~fastprompt.atomic_io.StorageFullError` with its errno."""
    from safetensors.torch import save

    os.makedirs(directory, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write_bytes(os.path.join(directory, PROMPT_FILE), save(tensors, metadata=metadata))
    atomic_write_text(os.path.join(directory, CONFIG_FILE), json.dumps(config, indent=2, sort_keys=True) + "\n")


def read_prompt_checkpoint(directory: str):
    """Return ``(config dict, tensors dict)``; errors say which file is missing or unreadable, each
    in one line: ``FileNotFoundError`` (no such folder, a file of the two missing), else ``ValueError``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if os.path.isfile(directory):
        inside = os.path.basename(directory) in (PROMPT_FILE, CONFIG_FILE)
        raise ValueError(f"{directory!r} is a file, not a fastprompt checkpoint folder: pass the folder "
                         f"{'that holds it' if inside else 'that save_pretrained wrote'} ({PROMPT_FILE} and "
                         f"{CONFIG_FILE})")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no prompt checkpoint directory at {directory!r}")
    config_path = os.path.join(directory, CONFIG_FILE)
    prompt_path = os.path.join(directory, PROMPT_FILE)
    for path in (config_path, prompt_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{directory!r} is not a fastprompt checkpoint: {os.path.basename(path)} "
                                    "is missing (save one with learner.save_pretrained(directory))")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {config_path}: {err}") from err
    except RecursionError:
        raise ValueError(f"cannot read {config_path}: nested too deeply to be a fastprompt config") from None
    if not isinstance(config, dict) or "method" not in config:
        raise ValueError(f"{config_path} is not a fastprompt config (no 'method' entry)")
    for key, kind in (("method", str), ("model_name", (str, type(None))), ("pretrained", (str, type(None))),
                      ("config", dict), ("classnames", list)):
        if key in config and not isinstance(config[key], kind):
            raise ValueError(f"{config_path}: {key!r} must be a {_kind_name(kind)}, got {config[key]!r:.80}")
    try:
        tensors = load_file(prompt_path)
    except (OSError, SafetensorError, ValueError) as err:
        raise ValueError(f"cannot read {prompt_path} (corrupt or truncated?): {err}") from err
    return config, tensors


def _kind_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("null" if k is type(None) else {"str": "string", "dict": "JSON object",
                                                      "list": "list"}.get(k.__name__, k.__name__) for k in kinds)


def check_config_types(config_class, values: Dict[str, Any], source: str) -> None:
    """Each of ``values`` has the type its field of the ``config_class`` dataclass declares
    (``int``, ``float``, ``str``, ``bool``, ``Optional``/``Union`` of them, lists and tuples), else a
    ``ValueError`` naming ``source`` and the key: a checkpoint's config reaches the learner as
    keyword arguments, where a string ``n_ctx`` or an int ``ctx_init`` failed deep inside."""
    hints = typing.get_type_hints(config_class)
    fields = {f.name for f in dataclasses.fields(config_class)}
    for key, value in values.items():
        if key not in fields:
            raise ValueError(f"{source}: {key!r} is not a {config_class.__name__} setting (known: {sorted(fields)})")
        if not _matches(value, hints.get(key, typing.Any)):
            raise ValueError(f"{source}: {key!r} must be {hints[key]}, got {value!r:.80}")


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any or isinstance(hint, typing.TypeVar):
        return True
    if origin is typing.Union:
        return any(_matches(value, a) for a in args)
    if origin in (list, collections.abc.Sequence):
        return isinstance(value, (list, tuple)) and (not args or all(_matches(v, args[0]) for v in value))
    if origin is tuple:  # JSON has no tuples: a list stands for one
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(args) == len(value) and all(_matches(v, a) for v, a in zip(value, args))
    if origin is not None:  # Dict, Literal, ...: not checked here
        return True
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True


def original_prompt_state(state: Any) -> Dict[str, torch.Tensor]:
    """Normalise an original repository's prompt-learner state to plain parameter names.

    Accepts a state dict, a Dassl checkpoint dict (``{"state_dict": ..., "epoch": ...}``) or a
    path to one. Strips a ``prompt_learner.`` / ``module.`` prefix and drops the frozen
    ``token_prefix`` / ``token_suffix`` buffers (they are rebuilt from the current class names).
    """
    if isinstance(state, (str, os.PathLike)):
        try:
            state = torch.load(state, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several types for bad pickles
            raise ValueError(f"cannot read checkpoint {os.fspath(state)!r}: {err}") from err
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"expected a state dict (mapping of names to tensors), got {type(state).__name__}")
    out = {}
    for key, value in state.items():
        name = key
        for prefix in ("module.", "prompt_learner."):
            if name.startswith(prefix):
                name = name[len(prefix):]
        if name in ("token_prefix", "token_suffix"):
            continue
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"state dict entry {key!r} is not a tensor ({type(value).__name__})")
        out[name] = value
    return out
