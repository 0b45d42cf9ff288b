"""Small generated dataset trees in CoOp's layouts, for tests and benchmarks.

Every image is the same tiny JPEG (a few hundred bytes) unless ``image_bytes`` says otherwise;
class sizes are whatever the caller passes (uneven sizes and classes smaller than K included).
The trees follow the layouts CoOp's dataset classes read (KaiyangZhou/CoOp ``DATASETS.md``).
"""
from __future__ import annotations

import io
import json
import os
import random
from typing import Dict, List, Optional, Sequence

from ..data.registry import resolve

__all__ = ["tiny_jpeg", "make_split_dataset", "make_aircraft", "make_imagenet", "make_variant"]


def tiny_jpeg(size: int = 8, colour=(200, 30, 30)) -> bytes:
    """A ``size`` x ``size`` JPEG of one colour."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, "JPEG")
    return buf.getvalue()


def _write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def make_split_dataset(root: str, name: str, sizes: Sequence[Sequence[int]], seed: int = 0,
                       image_bytes: Optional[bytes] = None, classnames: Optional[List[str]] = None) -> Dict[str, list]:
    """A split-JSON dataset (``dtd``, ``oxford_pets``, ...) under ``root``.

    ``sizes[c] = (n_train, n_val, n_test)`` for class ``c``. Rows are shuffled with ``seed`` so
    labels first appear out of order. Returns the split dict written to ``split_zhou_*.json``.
    """
    spec = resolve(name)
    data = image_bytes or tiny_jpeg()
    rng = random.Random(seed)
    ds_dir = os.path.join(root, spec.folder)
    image_dir = os.path.join(ds_dir, spec.image_dir) if spec.image_dir else ds_dir
    classnames = classnames or [f"class {c}" for c in range(len(sizes))]
    split: Dict[str, list] = {"train": [], "val": [], "test": []}
    for c, counts in enumerate(sizes):
        folder = f"c{c:03d}"
        for part, n in zip(("train", "val", "test"), counts):
            for i in range(n):
                rel = f"{folder}/{part}_{i:04d}.jpg"
                _write(os.path.join(image_dir, rel), data)
                split[part].append([rel, c, classnames[c]])
    for rows in split.values():
        rng.shuffle(rows)
    for rel in spec.needs:
        path = os.path.join(ds_dir, rel)
        os.makedirs(path, exist_ok=True) if rel.endswith("/") else _write(path, b"")
    with open(os.path.join(ds_dir, spec.split_file), "w", encoding="utf-8") as f:
        json.dump(split, f)
    return split


def make_aircraft(root: str, sizes: Sequence[Sequence[int]], seed: int = 0) -> List[str]:
    """FGVC-Aircraft text files + images; variant names contain spaces. Returns the variants."""
    data = tiny_jpeg()
    rng = random.Random(seed)
    ds_dir = os.path.join(root, "fgvc_aircraft")
    variants = [f"Model {c}-{c * 7}" for c in range(len(sizes))]
    lines = {"train": [], "val": [], "test": []}
    n = 1000000
    for c, counts in enumerate(sizes):
        for part, k in zip(("train", "val", "test"), counts):
            for _ in range(k):
                n += 1
                _write(os.path.join(ds_dir, "images", f"{n}.jpg"), data)
                lines[part].append(f"{n} {variants[c]}\n")
    os.makedirs(ds_dir, exist_ok=True)
    with open(os.path.join(ds_dir, "variants.txt"), "w") as f:
        f.writelines(v + "\n" for v in variants)
    for part, ls in lines.items():
        rng.shuffle(ls)
        with open(os.path.join(ds_dir, f"images_variant_{part}.txt"), "w") as f:
            f.writelines(ls)
    return variants


def _classnames_txt(path: str, wnids: Sequence[str]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(f"{w} name of {w}\n" for w in wnids)


def make_imagenet(root: str, n_classes: int, per_class, val_per_class: int = 2, seed: int = 0,
                  image_bytes: Optional[bytes] = None, empty_files: bool = False) -> List[str]:
    """``imagenet/images/{train,val}/<wnid>/`` + ``classnames.txt``; ``per_class`` is an int or a
    list. Files are created in a shuffled order. Returns the wnids."""
    data = b"" if empty_files else (image_bytes or tiny_jpeg())
    rng = random.Random(seed)
    ds_dir = os.path.join(root, "imagenet")
    wnids = [f"n{10000000 + 7919 * c:08d}" for c in range(n_classes)]
    sizes = [per_class] * n_classes if isinstance(per_class, int) else list(per_class)
    for c, w in enumerate(wnids):
        for split, k in (("train", sizes[c]), ("val", val_per_class)):
            d = os.path.join(ds_dir, "images", split, w)
            os.makedirs(d, exist_ok=True)
            names = [f"{w}_{i}.JPEG" for i in range(k)]
            rng.shuffle(names)
            for name in names:
                with open(os.path.join(d, name), "wb") as f:
                    f.write(data)
    shuffled = list(wnids)
    rng.shuffle(shuffled)  # classnames.txt order need not be folder order
    _classnames_txt(os.path.join(ds_dir, "classnames.txt"), shuffled)
    return wnids


def make_variant(root: str, name: str, wnids: Sequence[str], folders: Sequence[str], per_class: int = 2) -> None:
    """An ImageNet variant: ``classnames.txt`` over ``wnids`` and images in ``folders``."""
    spec = resolve(name)
    data = tiny_jpeg()
    ds_dir = os.path.join(root, spec.folder)
    _classnames_txt(os.path.join(ds_dir, "classnames.txt"), wnids)
    for folder in folders:
        for i in range(per_class):
            _write(os.path.join(ds_dir, spec.image_dir, folder, f"img{i}.jpg"), data)
    for ignored in spec.ignored:
        _write(os.path.join(ds_dir, spec.image_dir, ignored), b"readme")
