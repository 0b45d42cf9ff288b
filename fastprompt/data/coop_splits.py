"""The CoOp split files: ``split_zhou_<Class>.json``.

Nine of CoOp's datasets (Caltech101, OxfordPets, StanfordCars, OxfordFlowers, Food101, SUN397,
DTD, EuroSAT, UCF101) read a fixed split released with CoOp (Zhou et al., IJCV 2022): a JSON
object ``{"train": rows, "val": rows, "test": rows}`` whose rows are
``[relative_path, label, classname]``, paths relative to the dataset's image folder
(``OxfordPets.read_split`` in KaiyangZhou/CoOp ``datasets/oxford_pets.py``: ``os.path.join``
of the image folder and the row's path, ``int(label)``). Item order is the file's order.
"""
from __future__ import annotations

import json
import os
from typing import List, Tuple

from ..errors import DataError
from .items import Item, parse_label

__all__ = ["read_split_json", "parse_split_rows", "SPLIT_KEYS"]

SPLIT_KEYS = ("train", "val", "test")


def parse_split_rows(rows, image_dir: str, where: str) -> List[Item]:
    """Items from ``[[relative_path, label, classname], ...]``; ``where`` names the source in errors."""
    if not isinstance(rows, list):
        raise DataError(f"{where}: expected a list of [path, label, classname] rows, found {type(rows).__name__}")
    join = os.path.join
    out = []
    for i, row in enumerate(rows):
        if not (isinstance(row, list) and len(row) == 3 and isinstance(row[0], str) and isinstance(row[2], str)):
            raise DataError(f"{where}[{i}]: expected [path, label, classname], found {row!r}")
        rel, label, classname = row
        label = parse_label(label, f"{where}[{i}]")
        if label is None:
            raise DataError(f"{where}[{i}]: empty label")
        out.append(Item(join(image_dir, rel), label, classname))
    return out


def read_split_json(path: str, image_dir: str, download: str = "") -> Tuple[List[Item], List[Item], List[Item]]:
    """``(train, val, test)`` from a CoOp split file at ``path``, paths joined to ``image_dir``."""
    if not os.path.isfile(path):
        hint = f" Download it: {download}." if download else ""
        raise DataError(f"split file not found: {path}.{hint} (`fastprompt data check ROOT` lists what is missing)")
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read split file {path}: {exc}") from None
    if not isinstance(data, dict) or any(k not in data for k in SPLIT_KEYS):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{path}: expected an object with keys train, val, test; found {found}")
    name = os.path.basename(path)
    return tuple(parse_split_rows(data[k], image_dir, f"{name}:{k}") for k in SPLIT_KEYS)
