"""Which timm image towers take deep prompts: decided from the built module, and from the name alone.

Deep prompts (MaPLe, PromptSRC, VPT-deep, RPP's vision branch) are extra rows of a token
sequence that every layer attends to globally. That insertion point is well defined in timm's
plain ViTs: ``timm.models.eva.Eva`` (EVA01/EVA02, PE-Core: rotary embeddings on the patch rows,
SwiGLU, sub-LN, LayerScale, post-norm blocks) and ``timm.models.vision_transformer.VisionTransformer``
(SigLIP, SigLIP 2, ``vit_medium_patch16_gap_256``, MobileCLIP2-L-14, and the hybrids MobileCLIP-B and
ViTamin, whose convolutional stem / stages are only their patch embedding, ``HybridEmbed``: they
make the token sequence, then plain ViT blocks run it). It is not in the others open_clip builds:

* ConvNeXt: convolutional stages, no token sequence to add rows to;
* Swin: windowed attention (a prompt row belongs to no window, and the windows shift);
* FastViT (MobileCLIP-S*): convolutional stages, attention only in the last, downsampled stages;
* relative-position ViTs (``vision_transformer_relpos``): every attention adds a learnt bias per
  pair of positions, and a prompt row has no position to look one up with.

:func:`timm_trunk_problem` reads the built trunk (its class and every block's class and options);
:func:`timm_name_problem` answers for a timm model name before anything is built (the timm module
its model function lives in), for the configuration check of a training run. The two agree on every
architecture of ``open_clip.list_models()`` (``tests/test_timm_support.py``).
"""
from __future__ import annotations

from typing import Optional

from torch import nn

__all__ = ["timm_trunk_problem", "timm_name_problem", "PROMPTED_TIMM_MODULES", "REFUSED_TIMM_MODULES"]

# timm modules whose model classes take deep prompts (each class checked in detail once built).
PROMPTED_TIMM_MODULES = ("timm.models.eva", "timm.models.vision_transformer", "timm.models.vision_transformer_hybrid",
                         "timm.models.vitamin")

# Every other timm family open_clip builds, with why deep prompts cannot enter it.
REFUSED_TIMM_MODULES = {
    "timm.models.convnext": "a ConvNeXt (convolutional stages: there is no token sequence to add prompt rows to)",
    "timm.models.swin_transformer": "a Swin transformer (windowed attention: a prompt row belongs to no window)",
    "timm.models.fastvit": "a FastViT (MobileCLIP-S*: convolutional stages, attention only in the downsampled "
                           "last stages)",
    "timm.models.vision_transformer_relpos": "a relative-position ViT (its attention adds a learnt bias per pair "
                                             "of positions, and a prompt row has no position)",
}


def timm_name_problem(timm_model_name: str) -> Optional[str]:
    """``None`` when the timm model ``timm_model_name`` is a family that takes deep prompts, else why
    not, as a phrase ("a ConvNeXt (...)"). Nothing is built: the family is the timm module that
    defines the model's function."""
    from timm.models import is_model
    from timm.models._registry import model_entrypoint

    if not is_model(timm_model_name):
        return f"timm model {timm_model_name!r}, which this timm version does not have"
    module = model_entrypoint(timm_model_name).__module__
    if module in PROMPTED_TIMM_MODULES:
        return None
    return REFUSED_TIMM_MODULES.get(module, f"a timm model from {module}, a family deep prompts are not written for")


def _supported_classes():
    from timm.layers import Attention, AttentionRope, HybridEmbed, PatchEmbed
    from timm.models.eva import Eva, EvaAttention, EvaBlock, EvaBlockPostNorm
    from timm.models.vision_transformer import Block, VisionTransformer

    return {
        "trunks": (Eva, VisionTransformer),
        "blocks": {Eva: (EvaBlock, EvaBlockPostNorm), VisionTransformer: (Block,)},
        "attention": (EvaAttention, AttentionRope, Attention),
        "patch_embed": (PatchEmbed, HybridEmbed),
    }


def timm_trunk_problem(trunk: nn.Module) -> Optional[str]:
    """``None`` when :class:`~fastprompt.towers.timm_vision.TimmVisionTower` runs the timm trunk
    ``trunk`` with deep prompts, else why not, as a phrase.

    Accepted: exactly timm's ``Eva`` (blocks ``EvaBlock`` / ``EvaBlockPostNorm``, attention
    ``EvaAttention`` or ``AttentionRope``) and ``VisionTransformer`` (blocks ``Block``, attention
    ``Attention``), with a fixed input size, full multi-head attention (no grouped-query heads, no
    output gate) and one rotary embedding for all layers. Subclasses are refused: their forward
    may differ from the one the towers reproduce.
    """
    classes = _supported_classes()
    module = type(trunk).__module__
    if type(trunk) not in classes["trunks"]:
        return REFUSED_TIMM_MODULES.get(module, f"a timm {type(trunk).__name__}, which deep prompts are not written for")
    name = type(trunk).__name__
    if getattr(trunk, "dynamic_img_size", False):
        return f"a timm {name} built with dynamic_img_size (deep prompts need the fixed input size)"
    if type(trunk.patch_embed) not in classes["patch_embed"]:
        return f"a timm {name} with a {type(trunk.patch_embed).__name__} patch embedding"
    if getattr(trunk, "rope_mixed", False):
        return f"a timm {name} with per-layer ('mixed') rotary embeddings"
    blocks = classes["blocks"][type(trunk)]
    for i, block in enumerate(trunk.blocks):
        if type(block) not in blocks:
            return f"a timm {name} with {type(block).__name__} blocks (block {i})"
        attn = block.attn
        if type(attn) not in classes["attention"]:
            return f"a timm {name} with {type(attn).__name__} attention (block {i})"
        if getattr(attn, "gate", None) is not None:
            return f"a timm {name} with gated attention outputs (block {i})"
        if int(getattr(attn, "num_kv_heads", attn.num_heads)) != int(attn.num_heads):
            return f"a timm {name} with grouped-query attention (block {i})"
    return None
