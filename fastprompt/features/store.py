"""The on-disk side of the frozen-feature cache: what a table of features is keyed by, and its file.

A feature table (``[N, V, E]``: V views of N images) is a pure function of

* the image tower's weights: SHA-256 of every tensor of ``model.visual``
  (:func:`fastprompt.learners.zero_shot_cache.tensors_fingerprint`; about a second for ViT-B/16), so a
  table is never reused for other weights, whatever the model is called;
* how the tower runs: the learner's ``frozen_image_precision`` and the run's autocast dtype;
* the images: for each, its file's absolute path, size and modification time, and its label
  (stored with the features, so it must match too);
* the transform that turned the file into a tensor (its ``repr``: torchvision spells out sizes,
  interpolation, mean and std) and, for seeded views (:class:`~fastprompt.features.fixed_views.FixedViews`),
  the number of views and the seed that draws them.

Tables live in ``<folder>/<key>.safetensors`` (``<folder>``: ``TRAIN.FEATURE_CACHE_DIR``, or
``<cache>/image_features`` for ``default``, ``<cache>`` as in
:func:`fastprompt.keyed_file.cache_dir`), written through :func:`fastprompt.atomic_io.atomic_write`
(temporary file, fsync, rename); the key fields are the file's metadata and are checked on load.
An unreadable or mismatching file is recomputed, never trusted. Data without files to name the
images by (tensors in memory) or a transform without a stable description (a ``repr`` holding an
object address) cannot be keyed, and :func:`disk_key` says so.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Dict, NamedTuple, Optional

import torch
from torch import nn

from ..keyed_file import read_keyed, write_keyed
from ..learners.zero_shot_cache import tensors_fingerprint
from .fixed_views import FixedViews

__all__ = ["FeatureTable", "image_tower_fingerprint", "disk_key", "default_folder", "table_path", "load_table", "save_table"]

logger = logging.getLogger("fastprompt")
_FORMAT = "1"


class FeatureTable(NamedTuple):
    """Frozen image features of a dataset.

    features: ``[N, V, E]`` L2-normalised (``encode_image``'s output, its dtype), view ``v`` of image ``n``.
    valid: ``[N]`` bool, False for an image that could not be read (its rows are zero).
    labels: ``[N]`` int64 labels (``-1`` where not valid).
    """

    features: torch.Tensor
    valid: torch.Tensor
    labels: torch.Tensor

    def to(self, device) -> "FeatureTable":
        return FeatureTable(*(t.to(device) for t in self))


def _base_dataset(data):
    return data.dataset if isinstance(data, FixedViews) else data


def image_tower_fingerprint(visual: nn.Module) -> str:
    """SHA-256 over the names, shapes, dtypes and bytes of every tensor of the image tower."""
    return tensors_fingerprint([("visual", visual)])


def disk_key(data, tower_sha256: str, precision: str, autocast_dtype: Optional[torch.dtype]) -> Dict[str, str]:
    """The key fields of ``data``'s table (all strings; ``key["key"]`` is their SHA-256), for the
    image tower of fingerprint ``tower_sha256`` (:func:`image_tower_fingerprint`).

    Raises a ``ValueError`` naming what is missing when ``data`` cannot be keyed on disk.
    """
    base = _base_dataset(data)
    items, transform = getattr(base, "items", None), getattr(base, "transform", None)
    if items is None or not all(hasattr(item, "path") for item in items):
        raise ValueError(f"a {type(base).__name__} has no image files to key its features by; keep its features "
                         "in memory (no TRAIN.FEATURE_CACHE_DIR)")
    described = repr(transform)
    if " at 0x" in described:
        raise ValueError(f"the transform {described} has no stable description (its repr holds an object address), "
                         "so features on disk could not be matched to it; keep them in memory (no "
                         "TRAIN.FEATURE_CACHE_DIR) or give the transform a __repr__ that states its settings")
    images = hashlib.sha256()
    for item in items:
        try:
            st = os.stat(item.path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"  # an unreadable image is part of the table (valid = False)
        images.update(f"{os.path.abspath(item.path)}\0{stamp}\0{int(item.label)}\n".encode("utf-8"))
    views = (f"{data.views} seeded views, seed {data.seed}" if isinstance(data, FixedViews) else "1 view")
    fields = {
        "format": _FORMAT,
        "image_tower_sha256": tower_sha256,
        "frozen_image_precision": precision,
        "autocast": str(autocast_dtype).replace("torch.", "") if autocast_dtype is not None else "none",
        "transform": described,
        "views": views,
        "num_images": str(len(items)),
        "images_sha256": images.hexdigest(),
    }
    fields["key"] = hashlib.sha256(json.dumps(fields, sort_keys=True).encode("utf-8")).hexdigest()
    return fields


def default_folder() -> str:
    from ..keyed_file import cache_dir

    return os.path.join(cache_dir(), "image_features")


def table_path(folder: str, key: Dict[str, str]) -> str:
    return os.path.join(folder, f"{key['key']}.safetensors")


def load_table(path: str, key: Dict[str, str]) -> Optional[FeatureTable]:
    """The table at ``path`` if it exists, carries ``key`` and has consistent shapes; else ``None``."""
    tensors = read_keyed(path, key, "feature cache")
    if tensors is None:
        return None
    n = int(key["num_images"])
    try:
        table = FeatureTable(tensors["features"], tensors["valid"].bool(), tensors["labels"])
    except KeyError as exc:
        logger.warning("fastprompt: feature cache %s has no %s; recomputing", path, exc)
        return None
    if table.features.dim() != 3 or table.features.shape[0] != n or table.valid.shape != (n,) \
            or table.labels.shape != (n,):
        logger.warning("fastprompt: feature cache %s has inconsistent shapes; recomputing", path)
        return None
    return table


def save_table(path: str, table: FeatureTable, key: Dict[str, str]) -> None:
    """Write ``table`` with ``key`` as metadata (temporary file, fsync, rename). A folder that cannot
    be written is skipped with a warning: the run goes on with the table in memory."""
    write_keyed(path, {"features": table.features, "valid": table.valid.to(torch.uint8),
                       "labels": table.labels.to(torch.int64)}, key, "feature cache",
                "the features stay in memory only")
