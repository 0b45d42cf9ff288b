"""Which timm image towers take deep prompts: the built tower and the pre-build check agree.

A training run refuses a deep-vision method on a backbone before building it
(``train.build.check_backbone``, from open_clip's config: ``image_tower_kind``); the learners refuse
it from the built tower (``image_tower`` -> ``TimmVisionTower`` or ``FrozenImageTower``). Over every
architecture of ``open_clip.list_models()`` with a timm image tower the two answers are the same,
and what the tower refuses it refuses by name.
"""
from __future__ import annotations

from contextlib import ExitStack

import open_clip
import pytest
import timm
import torch

from fastprompt.errors import ConfigError
from fastprompt.testing.scaled_models import IMAGE_SIZE, _shrunk_timm
from fastprompt.towers.timm_support import timm_name_problem, timm_trunk_problem
from fastprompt.towers.timm_vision import timm_tower_problem
from fastprompt.train.build import check_backbone, image_tower_kind
from fastprompt.train.config import load_recipe, resolve_config

TIMM_ARCHITECTURES = [name for name in open_clip.list_models()
                      if ((open_clip.get_model_config(name) or {}).get("vision_cfg") or {}).get("timm_model_name")]


def _scaled_timm_tower(vision_cfg: dict):
    """open_clip's ``TimmModel`` as ``create_model`` builds it from ``vision_cfg`` (pool, projection,
    dropouts), its trunk shrunk within its own timm class (``scaled_models.TIMM_SHRINK``)."""
    from open_clip.timm_model import TimmModel

    name = vision_cfg["timm_model_name"]
    with ExitStack() as stack:
        _shrunk_timm(stack, name)
        return TimmModel(name, 64, image_size=IMAGE_SIZE, pool=vision_cfg.get("timm_pool", "avg"),
                         proj=vision_cfg.get("timm_proj", "linear"), proj_bias=vision_cfg.get("timm_proj_bias", False),
                         drop=vision_cfg.get("timm_drop", 0.0), drop_path=vision_cfg.get("timm_drop_path"),
                         patch_drop=vision_cfg.get("patch_dropout") or None)


def test_the_pre_build_check_agrees_with_the_built_tower_on_every_architecture():
    assert len(TIMM_ARCHITECTURES) > 50  # open_clip 3.x: EVA, SigLIP, PE-Core, ConvNeXt, ViTamin, MobileCLIP, ...
    built = {}
    disagree, accepted = [], set()
    for name in TIMM_ARCHITECTURES:
        vision = open_clip.get_model_config(name)["vision_cfg"]
        key = tuple(str(vision.get(k)) for k in ("timm_model_name", "timm_pool", "timm_proj", "patch_dropout"))
        if key not in built:
            built[key] = timm_tower_problem(_scaled_timm_tower(vision))
        kind = image_tower_kind(name)
        if (kind == "timm-vit") != (built[key] is None):
            disagree.append((name, kind, built[key]))
        if kind == "timm-vit":
            accepted.add(name)
    assert disagree == []
    # the families of the issue: EVA02 first, SigLIP / SigLIP 2, PE-Core; never ConvNeXt, Swin, FastViT
    assert {"EVA02-B-16", "EVA02-E-14", "EVA01-g-14", "ViT-B-16-SigLIP", "ViT-B-16-SigLIP2", "PE-Core-B-16",
            "ViT-SO400M-14-SigLIP", "vit_medium_patch16_gap_256", "MobileCLIP-B", "ViTamin-S"} <= accepted
    assert not accepted & {"convnext_base", "swin_base_patch4_window7_224", "MobileCLIP-S1",
                           "vit_relpos_medium_patch16_cls_224"}


def _recipe(method: str, model: str):
    recipes = {"maple": "maple/vit_b16_c2_ep5_batch4_2ctx", "vpt": "vpt/vit_b16_c2_ep5_batch4_4",
               "promptsrc": "promptsrc/vit_b16_c2_ep20_batch4_4+4ctx", "rpp": "rpp/vit_b16_ep5"}
    return resolve_config([(recipes[method], load_recipe(recipes[method]))], arguments={"MODEL.BACKBONE.NAME": model})


@pytest.mark.parametrize("method", ["maple", "promptsrc", "vpt", "rpp"])
def test_a_training_run_accepts_timm_vits_and_refuses_the_rest_by_name(method):
    for name in ("EVA02-B-16", "ViT-B-16-SigLIP", "PE-Core-B-16"):
        assert check_backbone(_recipe(method, name))[0] == name
    for name, why in (("convnext_base", "a ConvNeXt"), ("swin_base_patch4_window7_224", "a Swin transformer"),
                      ("MobileCLIP-S1", "a FastViT"), ("vit_relpos_medium_patch16_cls_224", "a relative-position ViT")):
        with pytest.raises(ConfigError) as refused:
            check_backbone(_recipe(method, name))
        message = str(refused.value)
        assert f"{name} has a timm image tower" in message and why in message and "\n" not in message
        assert "EVA02-B-16" in message and "run on any tower" in message


def _tiny_vit(**kwargs):
    return timm.create_model("vit_small_patch16_224", pretrained=False, depth=1, embed_dim=32, num_heads=2,
                             img_size=32, num_classes=0, **kwargs)


def test_timm_features_the_tower_does_not_reproduce_are_refused_by_name():
    from timm.models.vision_transformer import ResPostBlock, VisionTransformer

    assert timm_trunk_problem(_tiny_vit()) is None
    assert "dynamic_img_size" in timm_trunk_problem(_tiny_vit(dynamic_img_size=True))
    assert "ResPostBlock blocks (block 0)" in timm_trunk_problem(_tiny_vit(block_fn=ResPostBlock))

    class Custom(VisionTransformer):  # a subclass may change forward: refused, not guessed at
        pass

    assert "Custom" in timm_trunk_problem(Custom(img_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2))
    gated = timm.create_model("eva02_tiny_patch14_224", pretrained=False, depth=1, img_size=28)
    assert timm_trunk_problem(gated) is None
    gated.blocks[0].attn.gate = torch.nn.Linear(gated.embed_dim, gated.embed_dim)  # timm's gated=True (GenLIP)
    assert "gated attention outputs (block 0)" in timm_trunk_problem(gated)
    gqa = timm.create_model("vit_pe_core_tiny_patch16_384", pretrained=False, depth=1, img_size=32, num_kv_heads=1,
                            qkv_fused=False)
    assert "grouped-query attention" in timm_trunk_problem(gqa)
    assert "does not have" in timm_name_problem("no_such_timm_model")
