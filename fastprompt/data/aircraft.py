"""FGVC-Aircraft (Maji et al., 2013) as CoOp reads it: its own text files, no split JSON.

KaiyangZhou/CoOp ``datasets/fgvc_aircraft.py``: class names are the lines of ``variants.txt``
(label = line index); ``images_variant_{train,val,test}.txt`` hold ``<image id> <variant>``
lines, the variant possibly containing spaces; the image is ``images/<image id>.jpg``.
"""
from __future__ import annotations

import os
from typing import Dict, List, Tuple

from ..errors import DataError
from .items import Item

__all__ = ["read_aircraft"]


def _read_lines(path: str) -> List[str]:
    if not os.path.isfile(path):
        raise DataError(f"file not found: {path} (FGVC-Aircraft needs variants.txt and "
                        "images_variant_{train,val,test}.txt from fgvc-aircraft-2013b/data)")
    with open(path, "r", encoding="utf-8") as f:
        return f.readlines()


def _read_split(path: str, image_dir: str, cname2lab: Dict[str, int]) -> List[Item]:
    items = []
    for n, line in enumerate(_read_lines(path), 1):
        parts = line.strip().split(" ")
        classname = " ".join(parts[1:])
        if classname not in cname2lab:
            raise DataError(f"{path}:{n}: variant {classname!r} is not in variants.txt")
        items.append(Item(os.path.join(image_dir, parts[0] + ".jpg"), cname2lab[classname], classname))
    return items


def read_aircraft(dataset_dir: str, image_dir: str) -> Tuple[List[Item], List[Item], List[Item]]:
    """``(train, val, test)`` of FGVC-Aircraft's variant task."""
    classnames = [line.strip() for line in _read_lines(os.path.join(dataset_dir, "variants.txt"))]
    cname2lab = {c: i for i, c in enumerate(classnames)}
    return tuple(_read_split(os.path.join(dataset_dir, f"images_variant_{s}.txt"), image_dir, cname2lab)
                 for s in ("train", "val", "test"))
