"""Model construction without weights: seeded random-weight open_clip CLIPs, frozen as learners hold them.

* :func:`tiny_clip` — a small CLIP (2-layer towers, 64-wide text) with the real tokenizer's
  vocabulary: ``fastprompt demo``'s default model, ``--model tiny`` of ``fastprompt train``, and
  the test suite's;
* :func:`random_clip` — any named open_clip architecture with seeded random weights
  (``--pretrained none``), so such runs are reproducible and resumable.

Both restore the global torch RNG state after drawing the weights. Real weights come through
:func:`fastprompt.learners.load_open_clip`.
"""
from __future__ import annotations

import torch

__all__ = ["tiny_clip", "random_clip", "frozen"]


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


def random_clip(name: str = "ViT-B-16", seed: int = 0):
    """A named open_clip architecture with seeded random weights (``pretrained=None``)."""
    import open_clip

    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = open_clip.create_model(name, pretrained=None)
    finally:
        torch.random.set_rng_state(gen_state)
    return frozen(model)
