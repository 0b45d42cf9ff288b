"""ImageNet-21K-P folder trees, read as POMP reads them, with a selectable class universe.

Layout (Ridnik et al. 2021, ImageNet-21K-P; the download POMP uses)::

    <root>/imagenet21k_resized/imagenet21k_train/<wnid>/*.JPEG    winter-21: 10,450 folders
    <root>/imagenet21k_resized/imagenet21k_val/<wnid>/*.JPEG      (fall-11 variant: 11,221)
    <root>/imagenet21k_resized/imagenet21k_small_classes/...      never read (as in POMP)

``root`` may be the data root, the ``imagenet21k_resized`` folder itself, or one split folder.

What is matched from amazon-science/prompt-pretraining ``datasets/imagenet_21k.py`` (class
``ImageNet21K``) and the Dassl code it runs on:

* train items: the class folders of ``imagenet21k_train`` sorted by name, the images of each in
  ``os.listdir`` order (``listdir_nohidden``, unsorted; cached, see :mod:`fastprompt.data.listing`),
  label = index of the folder's wnid; val = test = every image of ``imagenet21k_val``;
* the 16-shot subset: Dassl's ``generate_fewshot_dataset(train, num_shots=16)`` (per label in
  order, ``random.sample(items, 16)``; a class with fewer images keeps all), started from
  ``random.seed(seed)`` — :func:`fastprompt.data.fewshot.sample_fewshot` with the run seed (POMP's
  scripts use 42). The original seeds ``random`` on rank 0 only (``train.py``: ``set_random_seed``
  under ``is_main_process()``), so under its 8-GPU launch only rank 0's subset is reproducible;
  this is that one;
* an original run's ``split_fewshot/shot_K-seed_S.pkl`` and ``preprocessed.pkl`` in the dataset
  folder are read (restricted unpickler) and used as the original uses them, paths re-rooted and
  labels re-derived from each image's wnid folder.

Not matched: class names come from timm's WordNet tables (or a ``classnames.txt``), not from the
MIIL tree file (:mod:`fastprompt.data.imagenet21k_classes`); with a named ``universe`` the labels
index that universe (equal to POMP's when the tree's folders are the universe, as for winter-21).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

from ..errors import DataError
from .dassl_pickle import load_datum_pickle
from .fewshot import sample_fewshot
from .imagenet import _class_folders, _folder_items
from .imagenet21k_classes import ClassTable, build_class_table
from .items import Dataset, Item

__all__ = ["ImageNet21KDataset", "load_imagenet21k", "find_imagenet21k", "read_split", "DATASET_FOLDER",
           "SPLIT_FOLDERS"]

logger = logging.getLogger("fastprompt.data")
DATASET_FOLDER = "imagenet21k_resized"
SPLIT_FOLDERS = {"train": "imagenet21k_train", "val": "imagenet21k_val"}


@dataclass(repr=False)
class ImageNet21KDataset(Dataset):
    """A :class:`Dataset` plus the :class:`ClassTable` its labels index (``classnames`` = its names)."""

    class_table: Optional[ClassTable] = None


def find_imagenet21k(root: str) -> Tuple[str, bool]:
    """``(folder, is_split)``: the ``imagenet21k_resized`` folder under/at ``root``, or ``root``
    itself when it is one split folder of ``<wnid>/`` class folders."""
    root = os.path.abspath(os.path.expanduser(root))
    for cand in (os.path.join(root, DATASET_FOLDER), root):
        if os.path.isdir(os.path.join(cand, SPLIT_FOLDERS["train"])):
            return cand, False
    if os.path.isdir(root) and any(n.startswith("n") and os.path.isdir(os.path.join(root, n))
                                   for n in os.listdir(root)):
        return root, True
    raise DataError(f"no ImageNet-21K-P tree at {root}: expected {DATASET_FOLDER}/{SPLIT_FOLDERS['train']}/<wnid>/ "
                    f"(or {SPLIT_FOLDERS['train']}/ directly, or a folder of <wnid>/ class folders). ImageNet-21K-P: "
                    "https://image-net.org (winter-21 release), processed per Alibaba-MIIL/ImageNet21K")


def read_split(split_dir: str, table: Optional[ClassTable] = None, universe: str = "folders", names: str = "lemmas",
               classnames_file: Optional[str] = None, cache: bool = True,
               cache_root: Optional[str] = None) -> Tuple[List[Item], ClassTable]:
    """Items of one split folder (sorted class folders, images in listing order) and the class
    table their labels index (built from the folders unless ``table`` is given)."""
    folders = _class_folders(split_dir)
    if not folders:
        raise DataError(f"{split_dir} has no class folders (expected one folder per wnid, e.g. n00005787/)")
    if table is None:
        table = build_class_table(folders, universe, names, classnames_file, where=split_dir)
    strays = [f for f in folders if f not in table.label_of]
    if strays:
        raise DataError(f"{split_dir} has class folder(s) not in the class table ({len(table)} classes, "
                        f"{table.universe}): {', '.join(strays[:5])}{' ...' if len(strays) > 5 else ''}")
    labels = [table.label_of[f] for f in folders]
    items = _folder_items(split_dir, folders, labels, dict(zip(table.wnids, table.names)), "the class table",
                          cache, cache_root)
    return items, table


def _relabel(items: List[Item], table: ClassTable, dataset_dir: str, source: str) -> List[Item]:
    """Items of an original pickle re-rooted under ``dataset_dir`` and labelled by their wnid folder."""
    from .load import _rebase

    out = []
    for it in _rebase(items, dataset_dir, DATASET_FOLDER):
        wnid = os.path.basename(os.path.dirname(it.path))
        label = table.label_of.get(wnid)
        if label is None:
            raise DataError(f"{source} names {it.path}, whose folder {wnid!r} is not in the class table "
                            f"({table.universe}, {len(table)} classes)")
        out.append(Item(it.path, label, table.names[label]))
    return out


def load_imagenet21k(root: str, shots: int = 16, seed: int = 1, *, universe: str = "folders", names: str = "lemmas",
                     classnames_file: Optional[str] = None, with_val: bool = True, original_caches: bool = True,
                     cache: bool = True, cache_root: Optional[str] = None) -> ImageNet21KDataset:
    """ImageNet-21K-P as POMP trains on it (see the module docstring).

    Args:
        root: data root, ``imagenet21k_resized/``, or a single split folder of ``<wnid>/`` folders.
        shots: images per class of the training subset (POMP: 16); 0 = all.
        seed: the run seed the subset is drawn with (POMP's scripts: 42).
        universe: ``folders`` (the sorted train folders, POMP), ``winter21``, ``fall11`` or ``full``.
        names: ``lemmas`` (all WordNet lemmas, ``"organism, being"``) or ``first`` (the first one).
        classnames_file: ``<wnid> <name>`` lines that override timm's names.
        with_val: read ``imagenet21k_val`` (all images) as val and test when present.
        original_caches: use an original run's ``split_fewshot/shot_K-seed_S.pkl`` /
            ``preprocessed.pkl`` found in the dataset folder.

    Returns:
        :class:`ImageNet21KDataset`: ``classnames [C]`` = the class table's names (C = universe size,
        classes without images included), ``train`` (the few-shot subset), ``val`` = ``test``.
    """
    from .load import _check_int

    shots, seed = _check_int(shots, "shots"), _check_int(seed, "seed")
    dataset_dir, is_split = find_imagenet21k(root)
    train_dir = dataset_dir if is_split else os.path.join(dataset_dir, SPLIT_FOLDERS["train"])
    val_dir = None if is_split else os.path.join(dataset_dir, SPLIT_FOLDERS["val"])
    pre = os.path.join(dataset_dir, "preprocessed.pkl")
    notes: List[str] = []
    table = build_class_table(_class_folders(train_dir), universe, names, classnames_file, where=train_dir)
    if original_caches and not is_split and os.path.isfile(pre):
        data = load_datum_pickle(pre, required=("train", "test"))
        train, test = (_relabel(data[k], table, dataset_dir, pre) for k in ("train", "test"))
        notes.append(f"listing read from {pre}")
    else:
        train, _ = read_split(train_dir, table, cache=cache, cache_root=cache_root)
        test = []
        if with_val and val_dir and os.path.isdir(val_dir):
            test, _ = read_split(val_dir, table, cache=cache, cache_root=cache_root)
    source = "all"
    if shots:
        pkl = os.path.join(dataset_dir, "split_fewshot", f"shot_{shots}-seed_{seed}.pkl")
        if original_caches and os.path.isfile(pkl):
            train = _relabel(load_datum_pickle(pkl, required=("train",))["train"], table, dataset_dir, pkl)
            source = pkl
            logger.info("ImageNet-21K: few-shot subset read from %s", pkl)
        else:
            train, _ = sample_fewshot(train, [], shots, seed, with_val=False)
            source = "sampled"
    return ImageNet21KDataset("imagenet21k", dataset_dir, train_dir, list(table.names), train, list(test), list(test),
                              shots, seed, "all", source, notes, class_table=table)
