"""The keys whose value the backbone decides: input size, normalisation, interpolation, prompt depths.

fastprompt builds the image transform from the model's own preprocessing (size, mean, std,
interpolation: :func:`fastprompt.data.transforms.transforms_for_model`), as the originals assert
for the size (``cfg.INPUT.SIZE[0] == clip_model.visual.input_resolution`` in their prompt
learners). So ``INPUT.SIZE``, ``INPUT.INTERPOLATION``, ``INPUT.PIXEL_MEAN`` and ``INPUT.PIXEL_STD``
(:data:`~fastprompt.train.defaults.MODEL_KEYS`) are empty (= the model's) or must equal the
model's value, and a deep prompt may not be deeper than the towers it enters.

Which values are checked: a value set together with the backbone (the same file, or the command
line) or after it describes that backbone and is checked; a value set before the backbone was
replaced (a recipe's ``INPUT.SIZE [224, 224]`` under ``--model tiny``) described the recipe's
backbone and gives way to the new model's (:func:`follow_model`). The input size is checked
twice: cheaply at config load, from open_clip's architecture config (:func:`shape_from_name`, no
model built), and exactly after the model is built (:func:`check_preprocess`); the normalisation
and the depths (:func:`check_depths`) on the built model (:func:`shape_from_model`), before the
learner is built and before anything is written.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

from ..errors import ConfigError
from .defaults import MODEL_KEYS
from .methods import METHODS

__all__ = ["TINY_CLIP_KWARGS", "ModelShape", "open_clip_name", "shape_from_name", "shape_from_model", "follow_model",
           "check_input_size", "check_depths", "check_preprocess"]

# The demo's tiny CLIP (fastprompt/cli.py), 64 px: seconds per epoch on a CPU.
TINY_CLIP_KWARGS = dict(image_size=64, patch_size=16, width=128, layers=4, heads=4, vision_width=96, vision_layers=2,
                        vision_heads=3, embed_dim=48)


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """What the configuration must agree with: the square input side in pixels, and the layer
    counts of the text and vision transformers (``None``: unknown, or a ResNet image tower)."""

    name: str
    image_size: Optional[int]
    text_layers: Optional[int]
    vision_layers: Optional[int]


def open_clip_name(name: str) -> str:
    """``ViT-B/16`` -> ``ViT-B-16``, ``ViT-L/14@336px`` -> ``ViT-L-14-336``; open_clip names unchanged."""
    name = str(name).strip()
    if name.endswith("@336px"):
        name = name[:-len("@336px")] + "-336"
    return name.replace("/", "-")


def _square(size: Any) -> Optional[int]:
    if isinstance(size, (list, tuple)):
        return int(size[0]) if len(set(size)) == 1 else None
    return int(size) if isinstance(size, int) else None


def _layers(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None  # a list: ResNet stages


def shape_from_name(backbone: str) -> Optional[ModelShape]:
    """The shape of ``MODEL.BACKBONE.NAME`` from open_clip's architecture config (nothing built or
    downloaded); ``None`` when only the built model can tell (``hf-hub:``, ``local-dir:``, unknown)."""
    name = open_clip_name(backbone)
    if name == "tiny":
        k = TINY_CLIP_KWARGS
        return ModelShape(name, k["image_size"], k["layers"], k["vision_layers"])
    if not name or name.startswith(("hf-hub:", "local-dir:")):
        return None
    import open_clip

    cfg = open_clip.get_model_config(name)
    if not cfg:
        return None
    vision, text = cfg.get("vision_cfg") or {}, cfg.get("text_cfg") or {}
    return ModelShape(name, _square(vision.get("image_size")), _layers(text.get("layers")),
                      _layers(vision.get("layers")))


def shape_from_model(model, name: str) -> ModelShape:
    """The shape of a built open_clip model (its preprocessing's size, its transformers' blocks)."""
    from ..data.transforms import model_preprocess

    text = getattr(model, "text", model)  # CustomTextCLIP keeps its text tower in .text
    text_blocks = getattr(getattr(text, "transformer", None), "resblocks", None)
    vision_blocks = getattr(getattr(getattr(model, "visual", None), "transformer", None), "resblocks", None)
    try:
        size = model_preprocess(model)["size"]
    except ValueError:  # a non-square input: build_transforms reports it
        size = None
    return ModelShape(name, size, len(text_blocks) if text_blocks is not None else None,
                      len(vision_blocks) if vision_blocks is not None else None)


def follow_model(cfg: Dict[str, Any], set_at: Dict[str, int], shape: Optional[ModelShape]) -> None:
    """Reset the model keys set before the backbone (at a lower layer of ``set_at``: key -> the
    merge layer that set it last; unset keys are absent) to the model's: its size when ``shape``
    knows it, else empty (the built model's, :func:`check_preprocess`)."""
    backbone = set_at.get("MODEL.BACKBONE.NAME", -1)
    for key in MODEL_KEYS:
        if set_at.get(key, -1) >= backbone:
            continue
        section, leaf = key.split(".")
        if key == "INPUT.SIZE":
            cfg[section][leaf] = (shape.image_size,) * 2 if shape and shape.image_size else ()
        else:
            cfg[section][leaf] = type(cfg[section][leaf])()


def check_input_size(cfg: Dict[str, Any], shape: Optional[ModelShape]) -> None:
    """A ``ConfigError`` when ``INPUT.SIZE`` is set and is not ``shape``'s input size."""
    size = tuple(cfg["INPUT"]["SIZE"])
    if size and shape is not None and shape.image_size and size != (shape.image_size,) * 2:
        s = shape.image_size
        raise ConfigError(f"INPUT.SIZE {list(size)} is not the input size of {shape.name}, which takes {s}x{s} "
                          f"images (fastprompt resizes to the model's input): set INPUT.SIZE \"({s}, {s})\" or "
                          "leave it out")


def check_depths(cfg: Dict[str, Any], shape: Optional[ModelShape]) -> None:
    """A ``ConfigError`` naming the key and the largest value ``shape`` allows when a deep prompt of
    ``cfg``'s method is deeper than a tower it enters (never clamped)."""
    if shape is None:
        return
    spec = METHODS[cfg["METHOD"]]
    section = cfg["TRAINER"][spec.section]
    layers = {"text": shape.text_layers, "vision": shape.vision_layers}
    for key, towers in spec.depths(section).items():
        known = {t: layers[t] for t in towers if layers[t] is not None}
        depth = section[key]
        if not known or not isinstance(depth, int) or depth <= min(known.values()):
            continue
        limit = min(known.values())
        towers_text = " and ".join(f"the {t} tower has {n}" for t, n in known.items())
        raise ConfigError(f"TRAINER.{spec.section}.{key} {depth} exceeds the depth of {shape.name} ({towers_text} "
                          f"layers): set TRAINER.{spec.section}.{key} {limit} or less")


def check_preprocess(cfg: Dict[str, Any], model, name: str) -> None:
    """After the model is built: each model key that is set equals the model's preprocessing."""
    from ..data.transforms import model_preprocess

    check_input_size(cfg, shape_from_model(model, name))
    p = model_preprocess(model)
    theirs = {"INPUT.PIXEL_MEAN": [float(x) for x in p["mean"]], "INPUT.PIXEL_STD": [float(x) for x in p["std"]],
              "INPUT.INTERPOLATION": str(p["interpolation"])}
    for key, model_value in theirs.items():
        section, leaf = key.split(".")
        value = cfg[section][leaf]
        if not value:
            continue
        # the same statistics, written out: the originals' YAML files spell OpenAI CLIP's mean/std with the
        # 8 decimals open_clip defines them with, so they compare equal as floats
        mine = str(value).lower() if isinstance(value, str) else [float(x) for x in value]
        if mine != (model_value.lower() if isinstance(model_value, str) else model_value):
            raise ConfigError(f"{key} {value!r} is not the preprocessing of {name}, which uses {model_value!r} "
                              f"(fastprompt uses the model's own): set {key} \"{model_value!r}\" or leave it out")
