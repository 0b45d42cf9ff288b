"""Deep prompts inside timm ViT image towers (EVA01/EVA02, PE-Core, SigLIP, ...): exact.

open_clip's ``TimmModel`` architectures are built scaled down (``scaled_clip``: the same timm
class, blocks and options) with three blocks, so that prompts replace rows in some layers and
propagate through others. :class:`~fastprompt.towers.timm_vision.TimmVisionTower` must give

* with no prompts: the model's own ``encode_image``;
* with deep prompts (VPT / MaPLe / IVLP) and with RPP's unshared q/k/v rows (width and head space):
  the literal reference :mod:`fastprompt.reference.timm_vision` (prompts concatenated into the
  sequence after the prefix rows, the trunk's own blocks called);
* through every deep-vision learner (MaPLe, PromptSRC, VPT, RPP's vision branch): the same logits,
  loss and prompt gradients as the same learner whose image tower is that literal reference.

The learners' own references (``fastprompt/reference/{maple,promptsrc,vpt,rpp}.py``) reproduce the
originals on open_clip's ViT (``conv1``, ``transformer.resblocks``) and cannot take a timm trunk:
the learner-level parity here swaps in the tower-level reference; the learners' other code is
checked against their references in their own test files.
"""
from __future__ import annotations

from unittest import mock

import pytest
import torch

from fastprompt.learners import LEARNERS
from fastprompt.reference.timm_vision import reference_encode_timm_image_deep, reference_encode_timm_image_qkv
from fastprompt.testing import (FP32, assert_changed, assert_close_rel, assert_gradient_flows, perturb_trainable,
                                random_images)
from fastprompt.testing import scaled_models
from fastprompt.testing.scaled_models import IMAGE_SIZE, scaled_clip
from fastprompt.towers.image_tower import image_tower
from fastprompt.towers.prompt_rows import QKVPrompt
from fastprompt.towers.text import UnpromptableTextTowerError
from fastprompt.towers.timm_vision import TimmVisionTower
from fastprompt.towers.vision import VisionTower

NAMES = ["cat", "dog", "sea lion", "jack-o'-lantern"]
DEPTH = 3  # blocks of the scaled trunks: prompted layers that replace, and layers the prompts propagate through
DEEP_FAMILIES = ("timm.models.eva", "timm.models.vision_transformer", "timm.models.vision_transformer_hybrid",
                 "timm.models.vitamin")

# Each architecture stands for a combination of the towers' features.
ARCHITECTURES = {
    "EVA02-B-16": "rotary embeddings, SwiGLU, sub-LN, separate q/k/v with biases, token pool",
    "ViT-B-16-SigLIP": "no class token, attention-pool (map) head, no projection",
    "PE-Core-B-16": "Eva with AttentionRope, norm_pre, class token and map pool",
    "EVA02-E-14": "residual post-norm blocks",
    "EVA01-g-14": "fused qkv with q/v biases, GELU MLP",
    "vit_medium_patch16_gap_256": "no class token, avg pool, LayerScale, open_clip's linear head",
    "MobileCLIP2-L-14": "CLIP-style ViT with norm_pre (ln_pre), token pool",
    "MobileCLIP-B": "hybrid: a convolutional stem as patch embedding",
    "ViTamin-S": "hybrid: convolutional stages as patch embedding, avg pool",
}


def deeper_clip(name: str, depth: int = DEPTH):
    """``scaled_clip(name)`` with ``depth`` blocks in its timm trunk (the scaled default is one)."""
    deeper = {module: (lambda shrink: (lambda kw: dict(shrink(kw), depth=depth)))(shrink)
              for module, shrink in scaled_models.TIMM_SHRINK.items() if module in DEEP_FAMILIES}
    with mock.patch.dict(scaled_models.TIMM_SHRINK, deeper):
        model, tokenizer = scaled_clip(name)
    assert len(model.visual.trunk.blocks) == depth
    return model, tokenizer


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def timm_vit(request):
    return deeper_clip(request.param)[0]


def _images(n: int = 3):
    return random_images(n, IMAGE_SIZE)


def _rows(shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---- the tower against the model and the literal reference -------------------------------------------

def test_the_features_without_prompts_are_the_models_encode_image(timm_vit):
    tower = image_tower(timm_vit.visual)
    assert isinstance(tower, TimmVisionTower) and tower.prompted and tower.layers == DEPTH
    images = _images()
    with torch.no_grad():
        expected = timm_vit.encode_image(images)
        # without prompts the tower is the model's own forward: one code path
        assert_close_rel(tower(images), expected, FP32.rounding, "features")
        # the functional path the prompted forward runs (embedding, block views, fast last layer,
        # pooling), here with no prompt: FP32.parity, prompt_attention against timm's attention
        # (the same function, sums in another order)
        assert_close_rel(VisionTower.forward(tower, images), expected, FP32.parity, "functional features")


@pytest.mark.parametrize("n_prompted", [1, 2, DEPTH])
def test_deep_prompts_match_the_literal_reference(timm_vit, n_prompted):
    tower = image_tower(timm_vit.visual)
    prompts = [_rows((3, tower.width), seed) for seed in range(n_prompted)]
    images = _images()
    with torch.no_grad():
        features = tower(images, prompts)
        assert_close_rel(features, reference_encode_timm_image_deep(timm_vit.visual, images, prompts), FP32.parity,
                         "features")
        # 1e-4, not the default 1e-3: vit_medium_patch16_gap_256's LayerScale (1e-6, moved by the scaled
        # build's 0.02 noise) damps what any row adds to ~2%, so one layer of prompts moves its features
        # by ~3e-4; still a hundred times float32 rounding (~1e-6)
        assert_changed(features, tower(images), "features with prompts", min_rel=1e-4)


@pytest.mark.parametrize("space", ["width", "head"])
@pytest.mark.parametrize("n_prompted", [1, 2, DEPTH])
def test_qkv_prompts_match_the_literal_reference(timm_vit, n_prompted, space):
    tower = image_tower(timm_vit.visual)
    shape = (3, tower.width) if space == "width" else (3, tower.heads, tower.width // tower.heads)
    prompts = [QKVPrompt(k=_rows(shape, 10 * j), v=_rows(shape, 10 * j + 1), q=_rows(shape, 10 * j + 2),
                         residual=_rows((3, tower.width), 10 * j + 3)) for j in range(n_prompted)]
    images = _images()
    with torch.no_grad():
        features = tower(images, qkv_prompts=prompts)
        expected = reference_encode_timm_image_qkv(timm_vit.visual, images, prompts)
    assert_close_rel(features, expected, FP32.parity, "features")


def test_eva02_features_the_parity_tests_cover():
    """The scaled EVA02 has what makes EVA02 EVA02, so the parity above exercises each of them."""
    from timm.layers import RotaryEmbeddingCat, SwiGLU

    trunk = deeper_clip("EVA02-B-16")[0].visual.trunk
    block = trunk.blocks[0]
    assert isinstance(trunk.rope, RotaryEmbeddingCat) and trunk.num_prefix_tokens == 1
    assert isinstance(block.mlp, SwiGLU) and not isinstance(block.attn.norm, torch.nn.Identity)
    assert block.attn.q_proj is not None and block.attn.q_proj.bias is not None


def test_the_parity_sees_the_rotary_embedding():
    """EVA02's rotary embedding moves the features far beyond the parity tolerance: a tower that
    skipped it (or rotated other rows than the patches) would fail the parity tests above. The
    prompts themselves cannot be rotated by timm's code: its table has a row per patch only."""
    from fastprompt.towers.timm_blocks import TimmBlockView

    model = deeper_clip("EVA02-B-16")[0]
    tower = image_tower(model.visual)
    prompts = [_rows((3, tower.width), seed) for seed in range(2)]
    images = _images(2)
    real_at = TimmBlockView.at
    with torch.no_grad():
        expected = reference_encode_timm_image_deep(model.visual, images, prompts)
        assert_close_rel(tower(images, prompts), expected, FP32.parity, "features")
        with mock.patch.object(TimmBlockView, "at", lambda view, rope: real_at(view, None)):
            unrotated = tower(images, prompts)
    assert_changed(unrotated, expected, "features without the rotary embedding")


def test_shapes_are_checked_with_the_towers_sizes():
    tower = image_tower(deeper_clip("EVA02-B-16")[0].visual)
    with pytest.raises(ValueError, match=rf"deep_prompts\[1\] must have shape \[M, {tower.width}\]"):
        tower(_images(1), [torch.zeros(2, tower.width), torch.zeros(2, tower.width + 1)])
    with pytest.raises(ValueError, match=f"has {DEPTH + 1} layers but the vision tower has {DEPTH}"):
        tower(_images(1), [torch.zeros(2, tower.width)] * (DEPTH + 1))
    with pytest.raises(ValueError, match=f"built for {IMAGE_SIZE}x{IMAGE_SIZE}"):
        tower(random_images(1, IMAGE_SIZE * 2))


# ---- every deep-vision learner, end to end ---------------------------------------------------------------

class LiteralTimmTower:
    """A learner's image tower whose forward is the literal reference (for learner-level parity)."""

    def __init__(self, tower: TimmVisionTower):
        self.tower = tower

    def __getattr__(self, name):
        return getattr(self.tower, name)

    def __call__(self, images, deep_prompts=None, qkv_prompts=None):
        visual = self.tower.visual
        if qkv_prompts:
            return reference_encode_timm_image_qkv(visual, images, qkv_prompts)
        return reference_encode_timm_image_deep(visual, images, deep_prompts)


LEARNER_SETTINGS = {
    "maple": dict(prompt_depth=2),  # the scaled text towers have two layers
    "promptsrc": dict(prompt_depth_text=2, prompt_depth_vision=DEPTH),
    "vpt": dict(prompt_depth=2),
    "rpp-vision": dict(branches="vision", depth=DEPTH),
    "rpp-vision-post": dict(branches="vision", depth=2, variant="post"),
    "rpp-both": dict(branches="both", depth=2),
}
LEARNER_ARCHITECTURES = ["EVA02-B-16", "ViT-B-16-SigLIP"]


@pytest.fixture(scope="module", params=LEARNER_ARCHITECTURES)
def learner_clip(request):
    return deeper_clip(request.param)


@pytest.mark.parametrize("key", list(LEARNER_SETTINGS))
def test_deep_vision_learners_match_the_literal_timm_tower(learner_clip, key):
    model, tokenizer = learner_clip
    method = key.split("-")[0]
    try:
        learner = LEARNERS[method].from_model(model, NAMES, tokenizer=tokenizer, **LEARNER_SETTINGS[key])
    except UnpromptableTextTowerError as refused:  # deep *text* prompts on SigLIP's text tower: not this test's
        pytest.skip(f"the text tower refuses deep text prompts: {refused}")
    assert isinstance(learner.vision_tower, TimmVisionTower)
    perturb_trainable(learner)  # away from a symmetric start (MaPLe's identical couplings)
    images, labels = _images(), torch.tensor([0, 3, 2])
    names, params = zip(*[(n, p) for n, p in learner.named_parameters() if p.requires_grad])

    def step():
        logits, loss = learner(images), learner.loss(images, labels)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        # a row nothing reads (the query of a last layer's prompts) has no gradient: zero
        return logits, loss, [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]

    try:
        logits, loss, grads = step()
    except UnpromptableTextTowerError as refused:  # PromptSRC's text side refuses at its first text pass
        pytest.skip(f"the text tower refuses deep text prompts: {refused}")
    fast_tower = learner.vision_tower
    learner.vision_tower = LiteralTimmTower(fast_tower)
    try:
        ref_logits, ref_loss, ref_grads = step()
    finally:
        learner.vision_tower = fast_tower
    assert_close_rel(logits, ref_logits, FP32.parity, "logits")
    assert_close_rel(loss, ref_loss, FP32.parity, "loss")
    for name, g, r in zip(names, grads, ref_grads):
        assert_close_rel(g, r, FP32.gradient_parity, f"grad {name}")
    # the image prompts are on the loss's path (MaPLe's reach it through the couplings)
    vision = [g for name, g in zip(names, grads) if name.startswith(("vision", "proj", "compound_prompt_proj"))]
    assert vision, names
    assert_gradient_flows(torch.stack([g.abs().max() for g in vision]), f"{key}: vision prompts")
