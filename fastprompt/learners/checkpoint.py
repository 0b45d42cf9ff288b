"""Prompt checkpoints: ``prompt.safetensors`` + ``fastprompt_config.json``, written atomically,
and readers for the original repositories' checkpoints."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Mapping

import torch

from ..atomic_io import atomic_write

PROMPT_FILE = "prompt.safetensors"
CONFIG_FILE = "fastprompt_config.json"


def write_prompt_checkpoint(directory: str, tensors: Dict[str, torch.Tensor], config: Dict[str, Any],
                            metadata: Dict[str, str]) -> None:
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(os.path.join(directory, PROMPT_FILE), lambda p: save_file(tensors, p, metadata=metadata))

    def write_json(p):
        with open(p, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write("\n")

    atomic_write(os.path.join(directory, CONFIG_FILE), write_json)


def read_prompt_checkpoint(directory: str):
    """Return ``(config dict, tensors dict)``; errors say which file is missing or unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

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
    if not isinstance(config, dict) or "method" not in config:
        raise ValueError(f"{config_path} is not a fastprompt config (no 'method' entry)")
    try:
        tensors = load_file(prompt_path)
    except (OSError, SafetensorError, ValueError) as err:
        raise ValueError(f"cannot read {prompt_path} (corrupt or truncated?): {err}") from err
    return config, tensors


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
