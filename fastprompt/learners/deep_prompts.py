"""Deep prompts shared by the methods that prompt every layer: MaPLe, VPT-deep, PromptSRC/IVLP, RPP.

Their parameters are lists of per-layer prompt rows ``[M, width]`` drawn from ``N(0, std)``, and
their original checkpoints (muzairkhattak/multimodal-prompt-learning and muzairkhattak/PromptSRC
save the whole ``CustomCLIP``) hold the frozen CLIP weights next to the prompts, under IVLP's
block names. This module creates the lists and maps those checkpoints to fastprompt's names.
"""
from __future__ import annotations

import re
from typing import Dict

import torch
from torch import nn

#: Keys of the original checkpoints that hold frozen CLIP weights (the whole ``CustomCLIP`` is saved).
FROZEN_ORIGINAL_PREFIXES = ("image_encoder.", "text_encoder.", "logit_scale", "ZS_image_encoder.")


def drop_frozen_original_keys(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The original checkpoint entries minus the frozen CLIP weights saved next to the prompts."""
    return {k: v for k, v in state.items() if not k.startswith(FROZEN_ORIGINAL_PREFIXES)}


_ORIGINAL_VISION_BLOCK = re.compile(r"^image_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow$")
_ORIGINAL_TEXT_BLOCK = re.compile(r"^text_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow$")


def map_ivlp_original_names(state: Dict[str, torch.Tensor], text_name: str = "deep_text_prompts",
                            vision_name: str = "vision_prompts") -> Dict[str, torch.Tensor]:
    """IVLP checkpoint names (VPT, PromptSRC, IVLP trainers) -> fastprompt names.

    ``image_encoder.VPT`` -> ``<vision_name>.0``; ``image_encoder.transformer.resblocks.<j>.VPT_shallow``
    -> ``<vision_name>.<j>``; ``text_encoder.transformer.resblocks.<j>.VPT_shallow`` ->
    ``<text_name>.<j-1>``; frozen CLIP weights are dropped; anything else is kept as is.
    """
    out = {}
    for key, value in state.items():
        text, vision = _ORIGINAL_TEXT_BLOCK.match(key), _ORIGINAL_VISION_BLOCK.match(key)
        if key == "image_encoder.VPT":
            out[f"{vision_name}.0"] = value
        elif vision:
            out[f"{vision_name}.{int(vision.group(1))}"] = value
        elif text:
            out[f"{text_name}.{int(text.group(1)) - 1}"] = value
        else:
            out.update(drop_frozen_original_keys({key: value}))
    return out


def deep_prompt_list(depth: int, n_ctx: int, width: int, std: float, device) -> nn.ParameterList:
    """``depth`` parameters ``[n_ctx, width]`` drawn from N(0, std) (on the CPU, in order), on ``device``."""
    return nn.ParameterList([nn.Parameter(torch.empty(n_ctx, width).normal_(0.0, std).to(device))
                             for _ in range(depth)])
