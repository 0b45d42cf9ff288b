"""ImageNet (Deng et al., 2009) and its test-only variants as CoOp reads them.

KaiyangZhou/CoOp ``datasets/imagenet.py``: ``classnames.txt`` maps each folder (wnid) to
CLIP's cleaned class name (``<wnid> <name words>`` per line). Train is ``images/train``, test
(and val) is ``images/val``; each split's labels are the indices of its class folders sorted by
name, and within a folder the images come in ``os.listdir`` order (Dassl's
``listdir_nohidden``, not sorted). That order depends on the file system, so the same items in
the same order come out only on the same file system as the original run; fastprompt lists in
the same way (and caches the result, see :mod:`fastprompt.data.listing`). When the dataset
folder holds CoOp's ``preprocessed.pkl`` (the listing a CoOp run saved), it is read instead,
as the original does, through the restricted unpickler.

Variants (``imagenetv2.py``, ``imagenet_sketch.py``, ``imagenet_a.py``, ``imagenet_r.py``):
the class folders are the sorted non-hidden names of the image folder (ImageNet-A/-R skip
``README.txt``; their 200 folders get labels 0..199), or for ImageNetV2 the folders ``0`` to
``C-1`` in the order of ``classnames.txt``; images in ``os.listdir`` order.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from itertools import repeat
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import DataError
from .dassl_pickle import load_datum_pickle
from .items import Item
from .listing import list_dirs, listdir_nohidden

__all__ = ["read_classnames", "read_imagenet", "read_variant"]


def read_classnames(path: str) -> "OrderedDict[str, str]":
    """``{folder: classname}`` from a CoOp ``classnames.txt`` (as ``ImageNet.read_classnames``)."""
    if not os.path.isfile(path):
        raise DataError(f"class-name file not found: {path} (CoOp's classnames.txt: "
                        "https://drive.google.com/file/d/1-61f_ol79pViBFDG_IDlUQSwoLcn2XXF/view)")
    out: "OrderedDict[str, str]" = OrderedDict()
    with open(path, "r", encoding="utf-8") as f:
        for line in f.readlines():
            parts = line.strip().split(" ")
            out[parts[0]] = " ".join(parts[1:])
    return out


def _folder_items(base: str, folders: Sequence[str], labels: Sequence[int], classnames: Dict[str, str],
                  names_file: str, cache: bool, cache_root: Optional[str],
                  folder_keys: Optional[Sequence[str]] = None) -> List[Item]:
    """Items of ``base/<folder>/<image>`` in listing order; ``folder_keys`` index ``classnames``."""
    keys = folders if folder_keys is None else folder_keys
    for folder, key in zip(folders, keys):
        if key not in classnames:
            raise DataError(f"folder {os.path.join(base, folder)} has no line in {names_file}")
    listings = list_dirs([os.path.join(base, f) for f in folders], cache, cache_root)
    items: List[Item] = []
    new = tuple.__new__  # Item(path, label, name) without a Python-level call per item
    for folder, key, label, names in zip(folders, keys, labels, listings):
        # prefix + name is os.path.join(base, folder, name) for a plain file name, only faster
        prefix = os.path.join(base, folder, "")
        paths = [prefix + n for n in listdir_nohidden(names)]
        items.extend(map(new, repeat(Item), zip(paths, repeat(label), repeat(classnames[key]))))
    return items


def _class_folders(split_dir: str) -> List[str]:
    if not os.path.isdir(split_dir):
        raise DataError(f"image folder not found: {split_dir}")
    with os.scandir(split_dir) as it:
        return sorted(e.name for e in it if e.is_dir())


def read_imagenet(dataset_dir: str, image_dir: str, cache: bool = True, cache_root: Optional[str] = None,
                  use_preprocessed: bool = True) -> Tuple[List[Item], List[Item], str]:
    """``(train, test, source)``: the ImageNet lists and where they came from."""
    pre = os.path.join(dataset_dir, "preprocessed.pkl")
    if use_preprocessed and os.path.isfile(pre):
        data = load_datum_pickle(pre, required=("train", "test"))
        return data["train"], data["test"], pre
    names_file = os.path.join(dataset_dir, "classnames.txt")
    classnames = read_classnames(names_file)
    out = []
    folder_sets = []
    for split in ("train", "val"):
        split_dir = os.path.join(image_dir, split)
        folders = _class_folders(split_dir)
        if not folders:
            raise DataError(f"{split_dir} has no class folders (expected one folder per wnid, e.g. n01440764/; "
                            "ILSVRC's flat val/ must first be sorted into such folders)")
        folder_sets.append(folders)
        out.append(_folder_items(split_dir, folders, range(len(folders)), classnames, names_file, cache, cache_root))
    if folder_sets[0] != folder_sets[1]:
        only = sorted(set(folder_sets[0]) ^ set(folder_sets[1]))[:5]
        raise DataError(f"{image_dir}/train and {image_dir}/val have different class folders (e.g. {only}); "
                        "their labels would not match. Is val/ sorted into <wnid>/ folders?")
    return out[0], out[1], image_dir


def read_variant(spec, dataset_dir: str, image_dir: str, cache: bool = True,
                 cache_root: Optional[str] = None) -> List[Item]:
    """The test items of ImageNetV2 / -Sketch / -A / -R."""
    names_file = os.path.join(dataset_dir, "classnames.txt")
    classnames = read_classnames(names_file)
    if not os.path.isdir(image_dir):
        raise DataError(f"image folder not found: {image_dir} ({spec.download})")
    if spec.folder_order == "index":
        keys = list(classnames)
        folders = [str(label) for label in range(len(keys))]
        missing = [f for f in folders if not os.path.isdir(os.path.join(image_dir, f))]
        if missing:
            raise DataError(f"{image_dir} lacks class folder(s) {', '.join(missing[:5])}"
                            f"{' ...' if len(missing) > 5 else ''} (expected 0..{len(keys) - 1}, one per "
                            f"line of {names_file})")
        return _folder_items(image_dir, folders, range(len(folders)), classnames, names_file, cache,
                             cache_root, folder_keys=keys)
    folders = [f for f in listdir_nohidden(os.listdir(image_dir), sort=True) if f not in spec.ignored]
    if not folders:
        raise DataError(f"{image_dir} has no class folders")
    return _folder_items(image_dir, folders, range(len(folders)), classnames, names_file, cache, cache_root)
