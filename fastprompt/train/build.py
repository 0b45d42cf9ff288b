"""Build what a resolved configuration describes: the backbone, the data, the learner.

Backbone names are open_clip's (``ViT-B-16``) or the originals' OpenAI spellings
(``MODEL.BACKBONE.NAME: "ViT-B/16"``, ``"RN50"``, as in the originals' Dassl configs), with ``MODEL.BACKBONE.TAG``
the open_clip pretrained tag (``openai``), a weights file, or ``none``: random weights drawn from
``SEED`` (:func:`fastprompt.models.random_clip`), so such runs are reproducible and resumable.
``tiny`` (with ``none``) is the few-layer random CLIP of the tests and the demo.
"""
from __future__ import annotations

import random
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..errors import ConfigError
from .methods import DEEP_VISION, METHODS, MULTITASK_METHODS, learner_kwargs
from ..replay.construction import DEPT_BASES, ORIGINAL_METHODS, original_init
from .model_keys import TINY_CLIP_KWARGS, check_depths, check_preprocess, open_clip_name, shape_from_model
from .views import MultiView, with_randaugment2

__all__ = ["open_clip_name", "is_resnet", "set_random_seed", "build_model", "build_learner", "load_data", "load_split",
           "build_transforms", "SUPPORTED_TRANSFORMS", "TINY_CLIP_KWARGS"]

SUPPORTED_TRANSFORMS = ("random_resized_crop", "random_flip", "randaugment2", "normalize")


def image_tower_kind(name: str) -> str:
    """What open_clip builds as the image tower of architecture ``name``, from its config (nothing
    built): ``"resnet"`` (ModifiedResNet), ``"timm-vit"`` (a timm ViT trunk that takes deep prompts:
    EVA01/EVA02, PE-Core, SigLIP/SigLIP 2, MobileCLIP-B, ViTamin, ...), ``"timm"`` (any other timm
    trunk: ConvNeXt, Swin, FastViT, a relative-position ViT), else ``"vit"`` (open_clip's own
    VisionTransformer, or unknown before a build). The timm split is
    :func:`fastprompt.towers.timm_support.timm_name_problem`, which agrees with the built tower's
    check on every open_clip architecture."""
    if name == "tiny":
        return "vit"
    import open_clip

    vision = (open_clip.get_model_config(name) or {}).get("vision_cfg") or {}
    if vision.get("timm_model_name"):
        from ..towers.timm_support import timm_name_problem

        return "timm" if timm_name_problem(vision["timm_model_name"]) else "timm-vit"
    return "resnet" if isinstance(vision.get("layers"), (list, tuple)) else "vit"


def is_resnet(name: str) -> bool:
    """Whether the open_clip architecture ``name`` has a ResNet image tower."""
    return image_tower_kind(name) == "resnet"


def set_random_seed(seed: int) -> None:
    """Dassl's ``set_random_seed``: python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def check_backbone(cfg: Dict[str, Any]) -> Tuple[str, str]:
    """``(open_clip name, tag)``; a ``ConfigError`` for a deep-vision learner on a ResNet."""
    name = open_clip_name(cfg["MODEL"]["BACKBONE"]["NAME"])
    tag = str(cfg["MODEL"]["BACKBONE"]["TAG"] or "none")
    if not name:
        raise ConfigError("no backbone: set MODEL.BACKBONE.NAME (or --model), e.g. ViT-B-16")
    if name == "tiny" and tag.lower() != "none":
        raise ConfigError("--model tiny is a random-weight test model: use it with --pretrained none")
    if name != "tiny":
        import open_clip

        if not name.startswith(("hf-hub:", "local-dir:")) and name not in open_clip.list_models():
            raise ConfigError(f"unknown open_clip model {name!r} (MODEL.BACKBONE.NAME; see open_clip.list_models())")
        rpp_text = cfg["METHOD"] == "rpp" and str(cfg["TRAINER"]["RPP"].get("BRANCHES", "")).lower() == "text"
        kind = image_tower_kind(name) if cfg["METHOD"] in DEEP_VISION and not rpp_text else "vit"
        if kind in ("resnet", "timm"):  # refused before a build that may take seconds or a download
            hint = " or prompt only the text (TRAINER.RPP.BRANCHES text), which any tower serves" \
                if cfg["METHOD"] == "rpp" else ""
            if kind == "resnet":
                tower = "a ResNet image tower"
            else:
                from ..towers.timm_support import timm_name_problem

                timm_name = open_clip.get_model_config(name)["vision_cfg"]["timm_model_name"]
                tower = f"a timm image tower ({timm_name}: {timm_name_problem(timm_name)})"
            raise ConfigError(f"{cfg['METHOD']} prompts the layers of open_clip's vision transformer: it needs such a "
                              f"ViT backbone, and {name} has {tower}. Use e.g. ViT-B-16 or a timm ViT backbone "
                              f"(EVA02-B-16, ViT-B-16-SigLIP, PE-Core-B-16){hint}; the text-prompt methods (coop, "
                              "cocoop, kgcoop, pre, softcpt, pomp, prograd) run on any tower")
    return name, tag


def build_model(cfg: Dict[str, Any], device: torch.device):
    """``(model, tokenizer, model_name, pretrained)`` for the configured backbone."""
    from .. import models

    name, tag = check_backbone(cfg)
    seed = max(int(cfg["SEED"]), 0)
    if name == "tiny":
        return models.tiny_clip(seed, **TINY_CLIP_KWARGS).to(device), None, "tiny", None
    import open_clip

    if tag.lower() == "none":
        model = models.random_clip(name, seed=seed).to(device)
        return model, open_clip.get_tokenizer(name), name, None
    from ..learners.pretrained import load_open_clip, recorded_pretrained

    model = load_open_clip(name, tag, device=device)
    return model, open_clip.get_tokenizer(name), name, recorded_pretrained(tag)


def build_learner(cfg: Dict[str, Any], model, tokenizer, classnames, dataset_name: str,
                  dataset_class: Optional[str], model_name: str, pretrained: Optional[str], tasks=None):
    """The configured learner around ``model`` (prompts initialised from the current RNG state).

    ``tasks``: a multi-task dataset's ``[(task name, class names), ...]``
    (:meth:`~fastprompt.data.softcpt.items.JointDataset.task_pairs`; ``classnames`` is then their
    joint list); None for one dataset, which a SoftCPT learner takes as one task named
    ``dataset_name``."""
    from ..learners import LEARNERS

    method = cfg["METHOD"]
    spec = METHODS[method]
    check_depths(cfg, shape_from_model(model, model_name))  # the built model's towers, whatever its name
    from .defaults import flatten

    kwargs = learner_kwargs(method, cfg["TRAINER"][spec.section], dataset_class, flatten(cfg))
    kwargs["frozen_image_precision"] = str(cfg["TRAIN"].get("FROZEN_IMAGE_PRECISION") or "fp32").lower()
    cls = LEARNERS[method]
    if method == "promptkd":
        kwargs["teacher"] = build_teacher_model(kwargs, int(cfg["SEED"]), next(model.parameters()).device)
    if tasks is not None:
        target = [(name, list(names)) for name, names in tasks]
    else:
        target = {dataset_name: list(classnames)} if method in MULTITASK_METHODS else list(classnames)
    try:
        learner = cls.from_model(model, target, tokenizer=tokenizer, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"TRAINER.{spec.section}: {exc}") from None
    learner.model_name, learner.pretrained = model_name, pretrained
    learner.initial_prompts = start_as_original(learner, cfg, model, tokenizer, kwargs)
    return learner


def build_teacher_model(kwargs: Dict[str, Any], seed: int, device: torch.device):
    """PromptKD's teacher CLIP (``TRAINER.PROMPTKD.TEACHER_NAME`` / ``TEACHER_PRETRAINED``): ``tiny`` is the
    test model drawn from ``SEED + 1``, ``none`` random weights of the named architecture."""
    from .. import models

    name, tag = kwargs.get("teacher_model"), str(kwargs.get("teacher_pretrained") or "none")
    if name == "tiny":
        return models.tiny_clip(max(seed, 0) + 1, **TINY_CLIP_KWARGS).to(device)
    if tag.lower() == "none":
        return models.random_clip(name, seed=max(seed, 0) + 1).to(device)
    from ..learners.pretrained import load_open_clip

    return load_open_clip(name, tag, device=device)


def start_as_original(learner, cfg: Dict[str, Any], model, tokenizer, kwargs: Dict[str, Any]) -> str:
    """Give ``learner`` the original's initial prompts for ``SEED`` and leave torch's global generator
    where the original's stands after its ``build_model`` (CLIP's construction, then the prompt
    learner's draws: :func:`fastprompt.replay.construction.original_init`), so that the draws after
    it — the data loader's — come from the same stream position. Returns what the prompts are, for
    the run's log: ``"original"``, or ``"fastprompt's own: <why>"`` for a method or setting the
    original code cannot start from (RPP has no original; an ``init_std`` other than 0.02, ...)."""
    method = cfg["METHOD"]
    if method not in ORIGINAL_METHODS and method not in DEPT_BASES:
        return f"fastprompt's own ({method} has no original code to replay)"
    section = cfg["TRAINER"][METHODS[method].section]
    # what shapes the start; POMP's own ``seed`` (its negative-class draws) and the frozen tower's
    # precision do not
    settings = {k: v for k, v in kwargs.items() if k not in ("frozen_image_precision", "seed")}
    try:
        state, rng = original_init(method, model, seed=int(cfg["SEED"]), precision=str(section.get("PREC", "fp32")),
                                   n_classes=learner.n_classes, n_tasks=getattr(learner, "n_tasks", 1),
                                   tokenizer=tokenizer, task_classes=_task_classes(learner), **settings)
    except ConfigError as exc:
        return f"fastprompt's own ({exc})"
    learner.load_original_state_dict(state)
    torch.set_rng_state(rng)
    return "original"


def _task_classes(learner) -> Optional[List[int]]:
    """Each task's class count, in task order, of a learner that holds several tasks' classes in one
    list (MTCoOpHard with one context per class of each task draws them task by task); else ``None``."""
    ranges = getattr(learner, "class_ranges", None)
    return None if ranges is None else [end - start for start, end in ranges]


def load_data(cfg: Dict[str, Any], model, subsample: Optional[str] = None):
    """``(dataset, train_transform, test_transform)`` of ``DATASET.*`` for ``model``'s input.

    The training transform follows ``INPUT.TRANSFORMS`` (crop + flip + normalize, optionally
    ``randaugment2``: :mod:`fastprompt.train.views`) and gives ``DATALOADER.K_TRANSFORMS`` stacked
    views per image when that is above 1.
    """
    train_tf, test_tf = build_transforms(cfg, model)
    return load_split(cfg, subsample), train_tf, test_tf


def load_split(cfg: Dict[str, Any], subsample: Optional[str] = None):
    """The :class:`~fastprompt.data.Dataset` of ``DATASET.*`` (no model needed: a run loads it
    before building the model, so a wrong name, root or class list is reported first).

    A multi-task set (SoftCPT's ``general10``, ``plant6``, ``fashion20``) comes as its
    :class:`~fastprompt.data.softcpt.items.JointDataset` (joint labels, ``multitask`` the tasks),
    for a method that trains tasks (:data:`~fastprompt.train.methods.MULTITASK_METHODS`) only."""
    from ..data import load_dataset
    from ..data.softcpt.items import MultiTaskDataset
    from ..data.softcpt.sources import is_multitask

    ds = cfg["DATASET"]
    if not ds["NAME"]:
        raise ConfigError("no dataset: pass --dataset NAME (or set DATASET.NAME)")
    if not ds["ROOT"]:
        raise ConfigError("no data root: pass --data ROOT (or set DATASET.ROOT)")
    tasks = ds["SUBSAMPLE_TASKS"]
    extra = {"subsample_tasks": tasks} if is_multitask(ds["NAME"]) else {}
    if not extra and tasks != "all":
        raise ConfigError(f"DATASET.SUBSAMPLE_TASKS {tasks!r} picks tasks of a multi-task set (general10, plant6, "
                          f"fashion20), and {ds['NAME']} is one dataset: leave it at 'all'")
    data = load_dataset(ds["NAME"], ds["ROOT"], shots=max(int(ds["NUM_SHOTS"]), 0), seed=max(int(cfg["SEED"]), 0),
                        subsample=subsample or ds["SUBSAMPLE_CLASSES"], **extra)
    if not isinstance(data, MultiTaskDataset):
        return data
    if cfg["METHOD"] not in MULTITASK_METHODS:
        raise ConfigError(f"{ds['NAME']} is a multi-task dataset ({data.num_tasks} tasks, each image scored against "
                          f"its own task's classes) and {cfg['METHOD']} trains one class list: train it with "
                          f"{' or '.join(MULTITASK_METHODS)} (e.g. --recipe softcpt/vit_b16_ep50)")
    return data.joint()


def build_transforms(cfg: Dict[str, Any], model):
    """``(train_transform, test_transform)`` of ``INPUT.*`` / ``DATALOADER.K_TRANSFORMS`` for ``model``'s input
    (the training one gives ``K_TRANSFORMS`` stacked views per image when that is above 1)."""
    from ..data.transforms import transforms_for_model

    transforms = tuple(cfg["INPUT"]["TRANSFORMS"])
    unknown = [t for t in transforms if t not in SUPPORTED_TRANSFORMS]
    if unknown:
        raise ConfigError(f"INPUT.TRANSFORMS {unknown} are not implemented (supported: {list(SUPPORTED_TRANSFORMS)}); "
                          "override with INPUT.TRANSFORMS \"['random_resized_crop', 'random_flip', 'normalize']\"")
    views = cfg["DATALOADER"]["K_TRANSFORMS"]
    if isinstance(views, bool) or not isinstance(views, int) or views < 1:
        raise ConfigError(f"DATALOADER.K_TRANSFORMS must be an int >= 1 (augmented views per training image), "
                          f"got {views!r}")
    check_preprocess(cfg, model, open_clip_name(cfg["MODEL"]["BACKBONE"]["NAME"]))
    train_tf, test_tf = transforms_for_model(model, scale=tuple(cfg["INPUT"]["RRCROP_SCALE"]))
    crop_flip = {"random_resized_crop", "random_flip", "normalize"}
    if set(transforms) - {"randaugment2"} <= {"normalize"}:  # no crop/flip: train on the test transform
        train_tf = test_tf
    elif not crop_flip <= set(transforms):
        raise ConfigError(f"INPUT.TRANSFORMS {list(transforms)}: use all of {sorted(crop_flip)} (the CoOp family's "
                          "augmentation, optionally with randaugment2) or only 'normalize'")
    if "randaugment2" in transforms:
        train_tf = with_randaugment2(train_tf, cfg["INPUT"]["RANDAUGMENT_N"])
    return MultiView(train_tf, views), test_tf
