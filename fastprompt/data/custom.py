"""Custom data with the same few-shot and base/new machinery as CoOp's datasets.

* ``imagefolder``: ``root/<class>/<image>`` (one tree, split per class into train/val/test as
  CoOp's ``DescribableTextures.read_and_split_data`` splits a folder tree: shuffled with a
  seeded generator, ``round(n * p_train)`` train, ``round(n * p_val)`` val, the rest test), or
  ``root/train/<class>/...`` with optional ``root/val/`` and ``root/test/`` (used as they are).
  Class folders are sorted by name (label = index) and images sorted by name, so the result does
  not depend on the file system. A ``classnames.txt`` beside the class folders (CoOp's
  ImageNet format, ``<folder> <class name>``) renames classes.
* ``csv``: a file with a header naming ``path`` and ``label`` and/or ``classname`` (optional
  ``split`` = train/val/test), or a folder holding ``train.csv`` (and ``val.csv``,
  ``test.csv``). Relative paths are relative to the file's folder.
* ``json``: the same as a list of objects (``{"path":..., "label":..., "classname":...,
  "split":...}``) or of ``[path, label, classname]`` rows, or an object with ``train``/``val``/
  ``test`` lists (CoOp's ``split_zhou_*.json`` format).

With labels only, the class name is the label as text; with class names only, labels follow the
sorted training class names.
"""
from __future__ import annotations

import csv
import json
import os
import random
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import DataError
from .coop_splits import SPLIT_KEYS
from .fewshot import sample_fewshot
from .imagenet import read_classnames
from .items import Dataset, Item, classnames_of, parse_label
from .listing import list_dirs, listdir_nohidden, missing_paths
from .subsample import subsample_classes

__all__ = ["load_custom", "IMAGE_EXTENSIONS", "split_per_class"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
Rows = Dict[str, List[Tuple[str, Optional[int], Optional[str]]]]


def split_per_class(items: Sequence[Item], split: Tuple[float, float], seed: int):
    """``(train, val, test)``: per label (in label order), shuffle with ``random.Random(seed)``
    and cut ``round(n * p_train)`` / ``round(n * p_val)`` / rest."""
    p_trn, p_val = split
    if not (0 < p_trn <= 1 and 0 <= p_val and p_trn + p_val <= 1):
        raise DataError(f"split must be (p_train, p_val) with 0 < p_train, 0 <= p_val, sum <= 1; got {split!r}")
    rng = random.Random(seed)
    groups: Dict[int, List[Item]] = {}
    for it in items:
        groups.setdefault(it.label, []).append(it)
    train, val, test = [], [], []
    for label in sorted(groups):
        group = list(groups[label])
        rng.shuffle(group)
        n_trn, n_val = round(len(group) * p_trn), round(len(group) * p_val)
        n_trn = max(n_trn, 1)
        train += group[:n_trn]
        val += group[n_trn:n_trn + n_val]
        test += group[n_trn + n_val:]
    return train, val, test


# ------------------------------------------------------------------------------------------------
# ImageFolder


def _class_dirs(base: str) -> List[str]:
    with os.scandir(base) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def _folder_split(base: str, classes: List[str], names: Dict[str, str], cache, cache_root,
                  must_fill: bool) -> List[Item]:
    listings = list_dirs([os.path.join(base, c) for c in classes], cache, cache_root)
    items = []
    for label, (folder, listing) in enumerate(zip(classes, listings)):
        files = sorted(n for n in listdir_nohidden(listing) if n.lower().endswith(IMAGE_EXTENSIONS))
        if not files and must_fill:
            raise DataError(f"empty class: {os.path.join(base, folder)} holds no image "
                            f"({', '.join(IMAGE_EXTENSIONS)})")
        items.extend(Item(os.path.join(base, folder, f), label, names.get(folder, folder)) for f in files)
    return items


def _read_imagefolder(root: str, split, split_seed: int, cache, cache_root):
    if not os.path.isdir(root):
        raise DataError(f"imagefolder root not found: {root} (expected root/<class>/<image> or root/train/<class>/...)")
    has_splits = os.path.isdir(os.path.join(root, "train"))
    base = os.path.join(root, "train") if has_splits else root
    classes = _class_dirs(base)
    if not classes:
        raise DataError(f"{base} has no class folders (expected {base}/<class>/<image>)")
    names_file = os.path.join(root, "classnames.txt")
    names = dict(read_classnames(names_file)) if os.path.isfile(names_file) else {}
    train = _folder_split(base, classes, names, cache, cache_root, must_fill=True)
    if not has_splits:
        if split is None:
            return train, [], []
        return split_per_class(train, tuple(split), split_seed)
    out = [train]
    for part in ("val", "test"):
        sub = os.path.join(root, part)
        if not os.path.isdir(sub):
            out.append([])
            continue
        extra = sorted(set(_class_dirs(sub)) - set(classes))
        if extra:
            raise DataError(f"{sub} has class folder(s) not in {base}: {', '.join(extra[:5])}")
        present = [c for c in classes if os.path.isdir(os.path.join(sub, c))]
        items = _folder_split(sub, present, names, cache, cache_root, must_fill=False)
        index = {c: i for i, c in enumerate(classes)}
        out.append([Item(it.path, index[os.path.basename(os.path.dirname(it.path))], it.classname)
                    for it in items])
    return tuple(out)


# ------------------------------------------------------------------------------------------------
# CSV / JSON lists


def _add_row(rows: Rows, where: str, path, label, classname, split) -> None:
    if not isinstance(path, str) or not path:
        raise DataError(f"{where}: missing path")
    split = split or "train"
    if split not in SPLIT_KEYS:
        raise DataError(f"{where}: split must be train, val or test, got {split!r}")
    label = parse_label(label, where)
    classname = None if classname in (None, "") else str(classname)
    if label is None and classname is None:
        raise DataError(f"{where}: a row needs a label or a classname")
    rows[split].append((path, label, classname))


def _read_csv(path: str, rows: Rows, split_default: Optional[str]) -> None:
    with open(path, "r", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        if "path" not in cols or not ({"label", "classname"} & set(cols)):
            raise DataError(f"{path}: the header must name 'path' and 'label' and/or 'classname' "
                            f"(optional 'split'); found {cols}")
        reader.fieldnames = cols
        for n, rec in enumerate(reader, 2):
            _add_row(rows, f"{path}:{n}", (rec.get("path") or "").strip(), (rec.get("label") or "").strip(),
                     (rec.get("classname") or "").strip(), (rec.get("split") or "").strip() or split_default)


def _read_json(path: str, rows: Rows, split_default: Optional[str]) -> None:
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(data, dict):
        unknown = sorted(set(data) - set(SPLIT_KEYS))
        if unknown:
            raise DataError(f"{path}: an object must have only train/val/test lists; found {unknown}")
        parts = [(k, data[k]) for k in SPLIT_KEYS if k in data]
    else:
        parts = [(split_default, data)]
    for split, records in parts:
        if not isinstance(records, list):
            raise DataError(f"{path}: expected a list of records, found {type(records).__name__}")
        for i, rec in enumerate(records):
            where = f"{path}[{i}]" if split is None else f"{path}:{split}[{i}]"
            if isinstance(rec, dict):
                _add_row(rows, where, rec.get("path"), rec.get("label"), rec.get("classname"),
                         rec.get("split", split))
            elif isinstance(rec, list) and len(rec) in (2, 3):
                _add_row(rows, where, rec[0], rec[1], rec[2] if len(rec) == 3 else None, split)
            else:
                raise DataError(f"{where}: expected {{path, label|classname}} or [path, label, classname], "
                                f"found {rec!r}")


def _read_list(kind: str, root: str):
    """``(rows, had_split)`` from a list file or a folder of ``train/val/test.<ext>``."""
    ext = ".csv" if kind == "csv" else ".json"
    reader = _read_csv if kind == "csv" else _read_json
    rows: Rows = {k: [] for k in SPLIT_KEYS}
    if os.path.isdir(root):
        files = {k: os.path.join(root, k + ext) for k in SPLIT_KEYS}
        if not os.path.isfile(files["train"]):
            raise DataError(f"{root} has no train{ext} (a {kind} dataset is a file, or a folder with "
                            f"train{ext} and optional val{ext}, test{ext})")
        for k, f in files.items():
            if os.path.isfile(f):
                base = len(rows[k])
                reader(f, rows, k)
                rows[k][base:] = [(os.path.join(root, p), lab, c) for p, lab, c in rows[k][base:]]
        return rows, True
    if not os.path.isfile(root):
        raise DataError(f"{kind} list not found: {root}")
    reader(root, rows, None)
    folder = os.path.dirname(os.path.abspath(root))
    for k in SPLIT_KEYS:
        rows[k] = [(os.path.join(folder, p), lab, c) for p, lab, c in rows[k]]
    return rows, bool(rows["val"] or rows["test"])


def _rows_to_items(rows: Rows, where: str) -> Tuple[List[Item], List[Item], List[Item]]:
    all_rows = [r for k in SPLIT_KEYS for r in rows[k]]
    if not rows["train"]:
        raise DataError(f"{where}: no training rows")
    by_label: Dict[int, str] = {}
    for path, label, cname in all_rows:
        if label is not None and cname is not None and by_label.setdefault(label, cname) != cname:
            raise DataError(f"{where}: label {label} is named both {by_label[label]!r} and {cname!r} ({path})")
    if all(label is not None for _, label, _ in all_rows):
        return tuple([Item(os.path.abspath(p), lab, c if c is not None else by_label.get(lab, str(lab)))
                      for p, lab, c in rows[k]] for k in SPLIT_KEYS)
    if any(label is not None for _, label, _ in all_rows):
        raise DataError(f"{where}: either every row has a label or none does (then labels follow the sorted "
                        "class names)")
    names = sorted({c for _, _, c in rows["train"]})
    index = {c: i for i, c in enumerate(names)}
    out = []
    for k in SPLIT_KEYS:
        unknown = sorted({c for _, _, c in rows[k] if c not in index})
        if unknown:
            raise DataError(f"{where}: {k} class(es) {unknown[:5]} have no training row")
        out.append([Item(os.path.abspath(p), index[c], c) for p, _, c in rows[k]])
    return tuple(out)


# ------------------------------------------------------------------------------------------------


def load_custom(kind: str, root: str, shots: int, seed: int, subsample: str, *, check_files: bool = True,
                cache: bool = True, cache_root: Optional[str] = None, split=(0.5, 0.2),
                split_seed: int = 1) -> Dataset:
    """Load ``imagefolder`` / ``csv`` / ``json`` data (see the module docstring).

    ``split`` = ``(p_train, p_val)`` divides data that has no split of its own (a single class
    tree, or a list without a ``split`` column) per class with ``random.Random(split_seed)``;
    ``None`` puts everything into train.
    """
    kind = kind.lower()
    root = os.path.abspath(os.path.expanduser(root))
    if kind == "imagefolder":
        train, val, test = _read_imagefolder(root, split, split_seed, cache, cache_root)
    else:
        rows, had_split = _read_list(kind, root)
        train, val, test = _rows_to_items(rows, root)
        if check_files:
            missing = missing_paths((it.path for it in train + val + test), cache, cache_root)
            if missing:
                raise DataError(f"{root} names {len(missing)} image(s) that are not on disk, e.g. {missing[0]}")
        if not had_split and split is not None:
            train, val, test = split_per_class(train, tuple(split), split_seed)
    n = len(classnames_of(train, f"{root} (train)"))
    bad = [it for it in val + test if it.label >= n]
    if bad:
        raise DataError(f"{root}: {bad[0].path} has label {bad[0].label}, beyond the {n} training classes")
    image_dir = root if os.path.isdir(root) else os.path.dirname(root)
    train, val = sample_fewshot(train, val, shots, seed)
    train, val, test = subsample_classes(train, val, test, subsample=subsample)
    classnames = classnames_of(train, f"{root} (train)")
    return Dataset(kind, root, image_dir, classnames, train, val, test, shots, seed, subsample,
                   "sampled" if shots else "all")
