"""Functional CLIP towers over open_clip's own weights (the only callers of ``fastprompt.ops``)."""
from .blocks import BlockView, block_views
from .frozen_image import FrozenImageTower
from .image_tower import image_tower, is_resnet_tower
from .prompt_rows import QKVPrompt
from .text import TextTower, UnpromptableTextTowerError
from .text_plan import AttentionBucket, BucketRule, TextPlan, build_text_plan, ctx_source
from .vision import VisionTower

__all__ = ["BlockView", "block_views", "QKVPrompt", "TextTower", "UnpromptableTextTowerError", "TextPlan", "BucketRule", "AttentionBucket",
           "build_text_plan", "ctx_source",
           "VisionTower", "FrozenImageTower", "image_tower", "is_resnet_tower"]
