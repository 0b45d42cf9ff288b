"""The text tower of a model: open_clip's own text transformer or a Hugging Face one.

The learners, the zero-shot head and the frozen teacher hold one object with the interface of
:class:`~fastprompt.towers.TextTower`; :func:`text_tower` picks the class from the model's text
tower: :class:`~fastprompt.towers.hf_text.HFTextTower` for open_clip's ``HFTextEncoder`` (RoBERTa,
XLM-R, mT5, NLLB), :class:`~fastprompt.towers.TextTower` for every other.
"""
from __future__ import annotations

from torch import nn

from .hf_text import HFTextTower, is_hf_text_tower
from .text import TextTower

__all__ = ["text_tower"]


def text_tower(model: nn.Module, backend: str = "auto", tokenizer=None):
    """The functional text tower of ``model`` (see the module docstring).

    Args:
        model: an open_clip ``CLIP`` / ``CustomTextCLIP`` / ``CoCa``.
        backend: ``prompt_attention`` backend of the tower.
        tokenizer: the model's tokenizer; needed for a Hugging Face text tower, whose prompt length is
            the tokenizer's (the ``transformers`` model has no fixed one).

    Raises:
        ValueError: a Hugging Face text tower without a tokenizer, or a tower neither class encodes.
    """
    if not is_hf_text_tower(model):
        return TextTower(model, backend=backend)
    if tokenizer is None:
        raise ValueError("a Hugging Face text tower takes its prompt length from the tokenizer: pass the model's "
                         "own tokenizer (open_clip.get_tokenizer(model_name))")
    return HFTextTower(model, backend=backend, context_length=int(tokenizer([""]).shape[1]))
