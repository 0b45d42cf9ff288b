"""The image-side settings of a run: the feature cache and the frozen tower's precision, from config keys.

* ``TRAIN.FEATURE_CACHE``: ``""`` (off, the default), ``"all"`` (training and evaluation read
  cached frozen features), ``"eval"`` (only the val/test splits; training images go through the
  tower every step, so any augmentation is fine).
* ``TRAIN.FEATURE_CACHE_DIR``: empty = the features live in memory for the run; a folder (or
  ``default``: ``<fastprompt cache>/image_features``) = also on disk, reused by later runs on the
  same images, model, transform and precision (:mod:`fastprompt.features.store`).
* ``TRAIN.FEATURE_CACHE_VIEWS``: 0 = the training transform as it is (with ``FEATURE_CACHE all``
  it must be deterministic: ``INPUT.TRANSFORMS ['normalize']``); V >= 1 = V seeded augmented
  views per training image drawn once, each epoch training on one (K with ``K_TRANSFORMS``) of
  them, with or without the cache (:mod:`fastprompt.features.fixed_views`).
* ``TRAIN.FROZEN_IMAGE_PRECISION``: ``fp32`` or ``bf16`` (the learners' ``frozen_image_precision``;
  refused on a device without bf16 matrix units).

Everything is checked before the run directory is written, with the alternatives in the message.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

import torch

from ..errors import ConfigError
from ..features.fixed_views import FixedViews
from .methods import DEEP_VISION

__all__ = ["FEATURE_CACHE_MODES", "FeatureSettings", "feature_settings", "training_data", "build_feature_cache"]

FEATURE_CACHE_MODES = ("", "all", "eval")
_TEXT_ONLY = "coop, cocoop, kgcoop, pre, softcpt, pomp, prograd, tcp, and rpp with TRAINER.RPP.BRANCHES text"


@dataclasses.dataclass(frozen=True)
class FeatureSettings:
    mode: str                 # "", "all" or "eval"
    folder: Optional[str]     # on-disk tables, or None (memory)
    views: int                # TRAIN.FEATURE_CACHE_VIEWS
    k: int                    # DATALOADER.K_TRANSFORMS
    precision: str            # TRAIN.FROZEN_IMAGE_PRECISION


def feature_settings(cfg: Dict[str, Any], device: torch.device) -> FeatureSettings:
    """The checked settings of ``cfg``; a ``ConfigError`` that names the key and the way out."""
    from ..features.store import default_folder
    from ..learners.frozen_precision import FROZEN_IMAGE_PRECISIONS, bf16_unsupported_reason

    train = cfg["TRAIN"]
    mode, folder = str(train["FEATURE_CACHE"]).strip().lower(), str(train["FEATURE_CACHE_DIR"]).strip()
    views, precision = train["FEATURE_CACHE_VIEWS"], str(train["FROZEN_IMAGE_PRECISION"]).strip().lower()
    if mode not in FEATURE_CACHE_MODES:
        raise ConfigError(f"TRAIN.FEATURE_CACHE must be '' (off), 'all' (training and evaluation) or 'eval' "
                          f"(evaluation only), got {train['FEATURE_CACHE']!r}")
    if isinstance(views, bool) or not isinstance(views, int) or views < 0:
        raise ConfigError(f"TRAIN.FEATURE_CACHE_VIEWS must be an int >= 0 (0: the training transform as it is), "
                          f"got {views!r}")
    if precision not in FROZEN_IMAGE_PRECISIONS:
        raise ConfigError(f"TRAIN.FROZEN_IMAGE_PRECISION must be one of {FROZEN_IMAGE_PRECISIONS}, got "
                          f"{train['FROZEN_IMAGE_PRECISION']!r}")
    if precision == "bf16":
        reason = bf16_unsupported_reason(device)
        if reason is not None:
            raise ConfigError(f"TRAIN.FROZEN_IMAGE_PRECISION bf16 on {device.type}: {reason}; use fp32")
    method = cfg["METHOD"]
    rpp_text = method == "rpp" and str(cfg["TRAINER"]["RPP"].get("BRANCHES", "")).lower() == "text"
    if mode and method in DEEP_VISION and not rpp_text:
        raise ConfigError(f"TRAIN.FEATURE_CACHE {mode}: {method} prompts the image tower, so its image features "
                          f"change with every step and cannot be cached (the cache serves {_TEXT_ONLY})")
    transforms = set(cfg["INPUT"]["TRANSFORMS"])
    if mode == "all" and views == 0 and not transforms <= {"normalize"}:
        raise ConfigError(
            f"TRAIN.FEATURE_CACHE all computes one feature per training image, which is exact only for a "
            f"deterministic training view, and INPUT.TRANSFORMS {sorted(transforms)} is random augmentation. Turn it "
            "off (INPUT.TRANSFORMS \"['normalize']\"), train on a fixed number of precomputed augmented views "
            "(TRAIN.FEATURE_CACHE_VIEWS 8), or cache the evaluation splits only (TRAIN.FEATURE_CACHE eval)")
    if folder and not mode:
        raise ConfigError("TRAIN.FEATURE_CACHE_DIR is set but TRAIN.FEATURE_CACHE is off; set TRAIN.FEATURE_CACHE "
                          "all or eval, or clear TRAIN.FEATURE_CACHE_DIR")
    if folder.lower() == "default":
        folder = default_folder()
    return FeatureSettings(mode, folder or None, views, int(cfg["DATALOADER"]["K_TRANSFORMS"]), precision)


def training_data(items, train_tf, settings: FeatureSettings, seed: int):
    """The training dataset: ``ImageDataset(items, train_tf)``, or with fixed views (or a feature
    cache of training), :class:`FixedViews` of the single-view dataset (``train_tf`` is
    :class:`~fastprompt.train.views.MultiView`: its ``transform`` and ``k``)."""
    from ..data.images import ImageDataset

    if settings.views == 0 and settings.mode != "all":
        return ImageDataset(items, train_tf)
    single = ImageDataset(items, train_tf.transform)
    return FixedViews(single, seed, max(settings.views, 1), train_tf.k)


def build_feature_cache(settings: FeatureSettings, learner, device: torch.device, autocast, batch_size: int,
                        num_workers: int, log=None):
    """The run's :class:`~fastprompt.features.cache.FeatureCache`, or ``None`` when it is off; ``log``
    takes its one line per table computed or loaded (the run's ``log.txt``)."""
    if not settings.mode:
        return None
    from ..features.cache import FeatureCache

    try:
        return FeatureCache(learner, device, folder=settings.folder, autocast=autocast, batch_size=batch_size,
                            num_workers=num_workers, log=log)
    except ValueError as exc:
        raise ConfigError(f"TRAIN.FEATURE_CACHE {settings.mode}: {exc}") from None
