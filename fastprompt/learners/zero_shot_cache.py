"""On-disk cache of zero-shot classifier weights (safetensors), keyed by everything they depend on.

A classifier ``[E, C]`` is a pure function of the text tower's weights, the tokenizer, the class
names (in order) and the templates. The key is the SHA-256 of:

* ``model_name`` and ``pretrained`` (the open_clip architecture name and weights tag, or a weights
  file, which enters as its absolute path, size and modification time),
* a fingerprint of the text tower itself: SHA-256 of the bytes of every text-tower tensor
  (token and positional embeddings, transformer, ``ln_final``, projection) — so a cache entry is
  never reused for other weights, whatever names were passed (hashing ViT-B/16's 38M text
  parameters takes a fraction of a second, against minutes for a 21K-class classifier),
* the tokenizer's class and context length,
* the class names and each template rendered with the literal ``"{}"`` as class name (a
  ``"{}"`` string stays itself; ``lambda c: f"a photo of a {c}."`` becomes ``"a photo of a {}."``).

Files live in ``<cache>/zero_shot/<key>.safetensors`` (``<cache>`` as in
:func:`fastprompt.keyed_file.cache_dir`: ``$FASTPROMPT_CACHE``, ``$XDG_CACHE_HOME/fastprompt`` or
``~/.cache/fastprompt``), written through a temporary file, fsync and rename; the key fields are
stored in the file's metadata and checked on load. An unreadable entry is recomputed.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..keyed_file import read_keyed, write_keyed

__all__ = ["classifier_key", "text_tower_fingerprint", "tensors_fingerprint", "cache_path", "load_classifier",
           "save_classifier"]

_FORMAT = "1"


def text_tower_fingerprint(model: nn.Module) -> str:
    """SHA-256 over the names, shapes, dtypes and bytes of the text tower's tensors."""
    from ..towers.hf_text import hf_text_encoder
    from ..towers.text import _text_modules

    if hf_text_encoder(model) is not None:  # a Hugging Face text tower: the transformers model, pooler, projection
        return tensors_fingerprint([("text", model.text)])
    text = _text_modules(model)
    return tensors_fingerprint([("token_embedding", text.token_embedding),
                                ("positional_embedding", text.positional_embedding),
                                ("transformer", text.transformer), ("ln_final", text.ln_final),
                                ("text_projection", text.text_projection)])


def tensors_fingerprint(parts: Sequence[Tuple[str, Union[nn.Module, torch.Tensor, None]]]) -> str:
    """SHA-256 over the names, shapes, dtypes and bytes of ``parts``: ``(prefix, module or tensor)``
    pairs (a module contributes its whole ``state_dict``; ``None`` parts are skipped)."""
    h = hashlib.sha256()
    for prefix, part in parts:
        if part is None:
            continue
        tensors = part.state_dict().items() if isinstance(part, nn.Module) else [("", part)]
        for name, t in tensors:
            t = t.detach().to("cpu").contiguous()
            h.update(f"{prefix}.{name}:{tuple(t.shape)}:{t.dtype};".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _weights_id(pretrained: Optional[str]) -> str:
    if pretrained and os.path.isfile(pretrained):
        st = os.stat(pretrained)
        return f"file:{os.path.abspath(pretrained)}:{st.st_size}:{st.st_mtime_ns}"
    return f"tag:{pretrained or ''}"


def classifier_key(model: nn.Module, tokenizer, classnames: Sequence[str], templates: Sequence[Callable[[str], str]],
                   model_name: Optional[str] = None, pretrained: Optional[str] = None) -> Dict[str, str]:
    """The key fields (all strings); ``key["key"]`` is their SHA-256."""
    names_sha = hashlib.sha256("\0".join(classnames).encode("utf-8")).hexdigest()
    fields = {
        "format": _FORMAT,
        "model_name": model_name or "",
        "weights": _weights_id(pretrained),
        "text_tower_sha256": text_tower_fingerprint(model),
        "tokenizer": f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}:"
                     f"{getattr(tokenizer, 'context_length', '')}",
        "num_classes": str(len(classnames)),
        "classnames_sha256": names_sha,
        "templates": json.dumps([t("{}") for t in templates], ensure_ascii=False),
    }
    fields["key"] = hashlib.sha256(json.dumps(fields, sort_keys=True).encode("utf-8")).hexdigest()
    return fields


def cache_path(key: Dict[str, str], cache_root: Optional[str] = None) -> str:
    from ..keyed_file import cache_dir

    return os.path.join(cache_root or cache_dir(), "zero_shot", f"{key['key']}.safetensors")


def load_classifier(path: str, key: Dict[str, str]) -> Optional[torch.Tensor]:
    """The cached ``[E, C]`` weights at ``path`` if they exist and carry ``key``; else ``None``."""
    tensors = read_keyed(path, key, "zero-shot cache")
    weights = None if tensors is None else tensors.get("classifier")
    if weights is None or weights.dim() != 2 or weights.shape[1] != int(key["num_classes"]):
        return None
    return weights


def save_classifier(path: str, weights: torch.Tensor, key: Dict[str, str]) -> None:
    """Write ``weights`` with ``key`` as metadata: temporary file, fsync, rename. A cache that
    cannot be written is skipped with a warning."""
    write_keyed(path, {"classifier": weights.to(torch.float32)}, key, "zero-shot cache",
                "set FASTPROMPT_CACHE to a writable folder")
