"""Model construction without weights: seeded random-weight open_clip CLIPs, frozen as learners hold them.

* :func:`tiny_clip` — a small CLIP (2-layer towers, 64-wide text) with the real tokenizer's
  vocabulary: ``fastprompt demo``'s default model, ``--model tiny`` of ``fastprompt train``, and
  the test suite's;
* :func:`random_clip` — any named open_clip architecture with seeded random weights
  (``--pretrained none``), so such runs are reproducible and resumable.

Both restore the global torch RNG state after drawing the weights. Real weights come through
:func:`fastprompt.learners.load_open_clip`.

* :func:`resolve_tokenizer` — the tokenizer of a named architecture, resolved *before* its model
  is built (milliseconds, where a build takes seconds): a tokenizer that needs a missing package
  (``transformers`` for Hugging Face and SigLIP tokenizers) or files that cannot be fetched is one
  :class:`TokenizerNotAvailableError` saying what to install, not a traceback after the build.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Optional

import torch

from .errors import PretrainedNotAvailableError

__all__ = ["tiny_clip", "random_clip", "frozen", "resolve_tokenizer", "TokenizerNotAvailableError",
           "load_hf_kernels_first"]

# The root of a fastprompt source checkout (the folder holding fastprompt/ and kernels/).
_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_hf_kernels_first() -> None:
    """Import Hugging Face's ``kernels`` package before anything builds a ``transformers`` model.

    transformers 5 depends on the ``kernels`` distribution and, when building a model, runs
    ``from kernels import CUDAProperties, ...``. Python started from the root of a fastprompt
    checkout (``python -m pytest``, a script in that folder) has the checkout on ``sys.path``, where
    the top-level ``kernels/`` folder (fastprompt's Triton sources, installed as
    ``fastprompt.kernels``) hides the distribution: every Hugging Face text tower build then fails
    with an ImportError. Importing the distribution once with the checkout off ``sys.path`` puts the
    right module in ``sys.modules``. Nothing happens when ``import kernels`` already resolves
    elsewhere or when the distribution is not installed (transformers then goes without it).
    """
    if "kernels" in sys.modules:
        return
    spec = importlib.util.find_spec("kernels")
    if spec is None or not (spec.origin or "").startswith(_CHECKOUT + os.sep):
        return
    saved = list(sys.path)
    try:
        sys.path[:] = [p for p in saved if os.path.abspath(p or os.curdir) != _CHECKOUT]
        try:
            importlib.import_module("kernels")
        except ImportError:
            pass  # not installed: transformers finds no usable version and builds without it
    finally:
        sys.path[:] = saved


class TokenizerNotAvailableError(PretrainedNotAvailableError):
    """The tokenizer of an open_clip architecture cannot be made here: a Python package it needs is
    not installed, or its files are neither cached nor downloadable. The message says what to do."""


def _tokenizer_source(name: str) -> str:
    """The tokenizer open_clip picks for ``name``, as a phrase for messages (from its config)."""
    import open_clip

    text_cfg = (open_clip.get_model_config(name) or {}).get("text_cfg") or {}
    hf_name = text_cfg.get("hf_tokenizer_name")
    return f"the Hugging Face tokenizer {hf_name!r}" if hf_name else "its own tokenizer"


def _one_line(err: Exception) -> str:
    """``err``'s message on one line (the CLI reports a failure in one)."""
    return " ".join(str(err).split()) or type(err).__name__


def resolve_tokenizer(name: str, cache_dir: Optional[str] = None):
    """``open_clip.get_tokenizer(name)``, with the failures a user fixes as one line.

    Raises:
        TokenizerNotAvailableError: (a :class:`~fastprompt.errors.PretrainedNotAvailableError`) a
            package the tokenizer imports is missing (the message names it and the ``pip install``),
            or the tokenizer's files cannot be read or fetched.
    """
    import open_clip

    load_hf_kernels_first()  # resolved before every build of a named architecture
    try:
        return open_clip.get_tokenizer(name, cache_dir=cache_dir)
    except ImportError as err:
        # ModuleNotFoundError names the module; other ImportErrors (a package's own check) say it in words.
        package = err.name.split(".")[0] if err.name else None
        missing = (f"the Python package {package!r}, not installed here: pip install {package}" if package
                   else f"a package that fails to import ({_one_line(err)}): install it")
        raise TokenizerNotAvailableError(
            f"open_clip model {name!r} tokenizes its text with {_tokenizer_source(name)}, which needs {missing} "
            "(in Python you may instead pass a tokenizer: from_open_clip(..., tokenizer=...) or "
            "from_model(model, classnames, tokenizer=...))") from err
    except OSError as err:  # Hugging Face tokenizer files neither cached nor downloadable (no network, no cache)
        fill = f"python -c \"import open_clip; open_clip.get_tokenizer('{name}')\""
        raise TokenizerNotAvailableError(
            f"the tokenizer of open_clip model {name!r} ({_tokenizer_source(name)}) cannot be loaded: "
            f"{_one_line(err)}. Run `{fill}` once with a network to fill the Hugging Face cache, or load it from a "
            "local copy of its files (open_clip.tokenizer.HFTokenizer('/path/to/tokenizer_dir')) and pass that "
            "tokenizer (from_open_clip(..., tokenizer=...), from_model(model, classnames, tokenizer=...))") from err


def tiny_clip(seed: int = 0, *, width: int = 64, layers: int = 2, heads: int = 2,
              vision_width: int = 96, vision_layers: int = 2, vision_heads: int = 3,
              image_size: int = 32, patch_size: int = 8, embed_dim: int = 48,
              custom_blocks: bool = False, quick_gelu: bool = False, **block_features):
    """A small random-weight open_clip ``CLIP`` with the real tokenizer's vocabulary.

    ``custom_blocks=True`` builds open_clip's own ``Attention`` module (``block_type="custom"``)
    instead of ``nn.MultiheadAttention``, so both attention implementations are covered;
    ``block_features`` (``qk_norm``, ``scale_heads``, ``scale_attn_inner``, ``scale_attn``,
    ``scale_fc``) switch on open_clip's optional custom-block extras in both towers.
    Returned in eval mode, float32, all parameters frozen.
    """
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        block_type = "custom" if custom_blocks else None
        vision_cfg = CLIPVisionCfg(layers=vision_layers, width=vision_width,
                                   head_width=vision_width // vision_heads, patch_size=patch_size,
                                   image_size=image_size, block_type=block_type, **block_features)
        text_cfg = CLIPTextCfg(context_length=77, vocab_size=49408, width=width, heads=heads,
                               layers=layers, block_type=block_type, **block_features)
        model = CLIP(embed_dim, vision_cfg, text_cfg, quick_gelu=quick_gelu)
        # open_clip zero-initialises biases; give them values so a wrong bias path fails tests.
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias") and p.abs().sum() == 0:
                    p.normal_(0.0, 0.02)
                elif name.endswith("head_scale"):
                    p.uniform_(0.5, 1.5)
    finally:
        torch.random.set_rng_state(gen_state)
    return frozen(model)


def frozen(model):
    """``model`` in eval mode with every parameter frozen, as the learners hold CLIP."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def random_clip(name: str = "ViT-B-16", seed: int = 0, *, check_tokenizer: bool = True):
    """A named open_clip architecture with seeded random weights (``pretrained=None``).

    With ``check_tokenizer`` (the default) the architecture's tokenizer is resolved first
    (:func:`resolve_tokenizer`), so a missing package is reported before the build, not after it.
    """
    import open_clip

    if check_tokenizer:
        resolve_tokenizer(name)
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = open_clip.create_model(name, pretrained=None)
    finally:
        torch.random.set_rng_state(gen_state)
    return frozen(model)
