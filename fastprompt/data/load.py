"""``load_dataset``: one entry point for CoOp's datasets and for custom data.

For a CoOp dataset the steps are those of its original dataset class (KaiyangZhou/CoOp
``datasets/*.py`` on Dassl's ``DatasetBase``, KaiyangZhou/Dassl.pytorch): read the full
train/val/test lists; if ``shots >= 1``, take the few-shot subset from the run's
``split_fewshot/shot_{K}-seed_{S}.pkl`` when the folder has one (as the original does), else
draw it (:mod:`fastprompt.data.fewshot`); then apply the base/new subsample
(:mod:`fastprompt.data.subsample`). Class names come from the training items in label order.
Unlike the original, nothing is written into the dataset folder, and every bad input is an
error here (naming the file or value), not an exception in the middle of training.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional, Sequence

from ..errors import DataError
from ..templates import class_list_problem
from . import custom
from .aircraft import read_aircraft
from .coop_splits import read_split_json
from .dassl_pickle import inside, load_datum_pickle, rebase_path
from .fewshot import check_int, sample_fewshot
from .imagenet import read_imagenet, read_variant
from .items import Dataset, Item, classnames_of
from .listing import require_files
from .registry import Spec, resolve
from .softcpt.sources import is_multitask
from .subsample import check_subsample, subsample_classes

__all__ = ["load_dataset", "fewshot_cache_path", "dataset_dir_of"]

logger = logging.getLogger("fastprompt.data")


def dataset_dir_of(spec: Spec, root: str) -> str:
    return os.path.join(os.path.abspath(os.path.expanduser(root)), spec.folder)


def fewshot_cache_path(spec: Spec, root: str, shots: int, seed: int) -> str:
    """Where a CoOp run keeps its few-shot subset: ``<folder>/split_fewshot/shot_K-seed_S.pkl``."""
    return os.path.join(dataset_dir_of(spec, root), "split_fewshot", f"shot_{shots}-seed_{seed}.pkl")


_check_int = check_int


def _rebase(items: List[Item], dataset_dir: str, folder: str) -> List[Item]:
    """Pickled paths of a dataset folder that has since moved, re-rooted at ``dataset_dir``
    (:func:`~fastprompt.data.dassl_pickle.rebase_path`)."""
    out = []
    for it in items:
        path = rebase_path(it.path, dataset_dir, folder)
        out.append(Item(path, it.label, it.classname) if path != it.path else it)
    return out


def _check_pickled(items: List[Item], classnames: Sequence[str], dataset_dir: str, pkl: str, split: str,
                   every_class: bool = True) -> None:
    """``items`` of a few-shot pickle, each checked against the dataset it claims to subsample:
    a label of its classes with the split's name for it, an image inside the dataset folder, and
    (``every_class``) every class present. The unpickler only admits Datum records; their contents
    were trusted (a val label 99 of 4 classes, ``/etc/passwd``, a subset of 3 of 4 classes
    loaded). A ``DataError`` names the file and the first bad record."""
    seen = set()
    for i, it in enumerate(items):
        where = f"{pkl}: {split}[{i}] ({it.path})"
        if not 0 <= it.label < len(classnames):
            raise DataError(f"{where} has label {it.label}, but the dataset has {len(classnames)} classes (0.."
                            f"{len(classnames) - 1}); the pickle belongs to another dataset or split: move it away")
        if it.classname.replace("_", " ") != classnames[it.label].replace("_", " "):
            raise DataError(f"{where} names its class {it.classname!r} under label {it.label}, which the dataset's "
                            f"split calls {classnames[it.label]!r}; the pickle belongs to another split: move it away")
        if not inside(it.path, dataset_dir):
            raise DataError(f"{where} is not inside the dataset folder {dataset_dir}; move the pickle away")
        seen.add(it.label)
    if every_class and len(seen) < len(classnames):
        missing = [classnames[c] for c in range(len(classnames)) if c not in seen]
        raise DataError(f"{pkl}: its {split} subset covers {len(seen)} of the {len(classnames)} classes (none of "
                        f"{', '.join(map(repr, missing[:5]))}{', ...' if len(missing) > 5 else ''}); move it away to "
                        "draw the subset afresh")


def _require_files(items: Sequence[Item], source: str, cache: bool, cache_root: Optional[str], hint: str) -> None:
    require_files((it.path for it in items), source, cache, cache_root, hint)


def _read_full(spec: Spec, dataset_dir: str, cache: bool, cache_root, original_caches: bool):
    """``(train, val, test, image_dir, listed_source)``; ``listed_source`` is None when the items
    came from a split file (and must be checked on disk)."""
    image_dir = os.path.join(dataset_dir, spec.image_dir) if spec.image_dir else dataset_dir
    if spec.family == "split":
        train, val, test = read_split_json(os.path.join(dataset_dir, spec.split_file), image_dir, spec.download)
        return train, val, test, image_dir, None
    if spec.family == "aircraft":
        train, val, test = read_aircraft(dataset_dir, image_dir)
        return train, val, test, image_dir, None
    if spec.family == "imagenet":
        train, test, source = read_imagenet(dataset_dir, image_dir, cache, cache_root, original_caches)
        listed = None if source.endswith(".pkl") else source
        return train, test, test, image_dir, listed
    data = read_variant(spec, dataset_dir, image_dir, cache, cache_root)
    return data, [], data, image_dir, image_dir


def load_dataset(name: str, root: str, shots: int = 0, seed: int = 1, subsample: str = "all", *,
                 original_caches: bool = True, check_files: bool = True, cache: bool = True,
                 cache_root: Optional[str] = None, **custom_kwargs) -> Dataset:
    """Load a dataset with the items, order, labels and class names of the original CoOp code.

    Args:
        name: a CoOp folder name (``oxford_pets``, ``dtd``, ``eurosat``, ``caltech-101``,
            ``oxford_flowers``, ``food-101``, ``fgvc_aircraft``, ``stanford_cars``, ``sun397``,
            ``ucf101``, ``imagenet``, ``imagenetv2``, ``imagenet-sketch``,
            ``imagenet-adversarial``, ``imagenet-rendition``) or the original class name
            (``OxfordPets``, ``DescribableTextures``, ..., ``ImageNetR``); or ``imagefolder``,
            ``csv``, ``json`` for custom data (see :mod:`fastprompt.data.custom`).
        root: the folder holding the dataset folders (Dassl's ``DATASET.ROOT``); for custom data
            the tree or list file itself.
        shots: images per class for training (val gets ``min(shots, 4)``); 0 = all.
        seed: the run seed (``--seed`` of CoOp's ``train.py``) that the subset is drawn with.
        subsample: ``"all"``, ``"base"`` or ``"new"`` (base-to-novel protocol).
        original_caches: read CoOp's ``split_fewshot/shot_K-seed_S.pkl`` (and ImageNet's
            ``preprocessed.pkl``) when present, as the original does; ``False`` always draws
            (lists) afresh.
        check_files: verify that every image a split file names exists (one listing per folder).
        cache: use fastprompt's listing cache (user cache folder; see
            :mod:`fastprompt.data.listing`); ``cache_root`` overrides its location.
        **custom_kwargs: options of the custom loaders (``split``, ``split_seed``).

    Returns:
        :class:`~fastprompt.data.items.Dataset` with ``classnames``, ``train``, ``val``,
        ``test`` (ImageNet: ``val`` is ``test``; the test-only ImageNet variants: ``val`` is
        empty and ``train`` is ``test``, as in the original).

    SoftCPT's multi-task sets (``general10``, ``plant6``, ``fashion20``) return a
    :class:`~fastprompt.data.softcpt.items.MultiTaskDataset` instead (tasks, per-task class
    lists and metrics, items with task ids); ``subsample_tasks`` (``all``, ``task<i>``,
    ``base``, ``new``) is their one extra option (:func:`fastprompt.data.softcpt.load.load_multitask`).

    Raises:
        DataError: a missing folder or file, an image a split names that is not on disk, an
            unknown name, ``shots < 0``, a bad ``subsample``, an empty class, an unreadable pickle.
    """
    if is_multitask(name):
        from .softcpt.load import load_multitask

        extra = set(custom_kwargs) - {"subsample_tasks"}
        if extra:
            raise DataError(f"unexpected option(s) {sorted(extra)} for {name} (it takes subsample_tasks)")
        return load_multitask(name, root, shots, seed, subsample, original_caches=original_caches,
                              check_files=check_files, cache=cache, cache_root=cache_root, **custom_kwargs)
    dataset = _load(name, root, shots, seed, subsample, original_caches, check_files, cache, cache_root, custom_kwargs)
    check_classes(dataset.classnames, dataset.name if subsample == "all" else f"{dataset.name} ({subsample} classes)")
    _note_short_classes(dataset)
    return dataset


def _note_short_classes(dataset: Dataset) -> None:
    """Classes with fewer training images than the shots asked for train on what there is, as in
    the original (Dassl's ``generate_fewshot_dataset`` takes every image of a short class): said in
    a warning and in ``dataset.notes``, which a run writes into its log."""
    if not dataset.shots or not dataset.train:
        return
    counts = [0] * len(dataset.classnames)
    for item in dataset.train:
        counts[item.label] += 1
    short = [(dataset.classnames[c], n) for c, n in enumerate(counts) if n < dataset.shots]
    if short:
        shown = ", ".join(f"{name}: {n}" for name, n in short[:10]) + (", ..." if len(short) > 10 else "")
        note = (f"{len(short)} of {len(counts)} classes have fewer training images than the {dataset.shots} shots "
                f"asked and train on what there is ({shown}); {len(dataset.train)} training images in all")
        logger.warning("%s: %s", dataset.name, note)
        dataset.notes.append(note)


def check_classes(classnames: Sequence[str], where: str) -> None:
    """A dataset trains a classifier only with two classes or more, each its own name as CLIP's
    tokenizer reads it (lowercased, whitespace collapsed, ``_`` a space): otherwise a
    :class:`DataError` naming them, before any model is built."""
    problem = class_list_problem(classnames)
    if problem:
        raise DataError(f"{where} {problem}")


def _load(name: str, root: str, shots: int, seed: int, subsample: str, original_caches: bool, check_files: bool,
          cache: bool, cache_root: Optional[str], custom_kwargs: Dict[str, Any]) -> Dataset:
    spec = resolve(name)
    shots = _check_int(shots, "shots")
    seed = _check_int(seed, "seed")
    check_subsample(subsample)
    if spec is None:
        return custom.load_custom(name, root, shots, seed, subsample, check_files=check_files, cache=cache,
                                  cache_root=cache_root, **custom_kwargs)
    if custom_kwargs:
        raise DataError(f"unexpected option(s) {sorted(custom_kwargs)} for {spec.folder} "
                        "(they apply to imagefolder/csv/json data)")
    dataset_dir = dataset_dir_of(spec, root)
    if not os.path.isdir(dataset_dir):
        raise DataError(f"{spec.cls} not found: no folder {dataset_dir}. Get {spec.download}; "
                        f"`fastprompt data check {root}` lists what is missing")
    train, val, test, image_dir, listed = _read_full(spec, dataset_dir, cache, cache_root, original_caches)
    notes: List[str] = []
    if listed is None and check_files:
        source = spec.split_file or "the split files"
        if spec.family == "imagenet":
            source = os.path.join(dataset_dir, "preprocessed.pkl")
        _require_files(train + val + (test if test is not val else []), source, cache, cache_root,
                       f"Check the download of {spec.cls} ({spec.download}).")
    full_names = classnames_of(train, f"{spec.cls} train split")
    num_classes = len(full_names)
    bad = [it for it in val + test if it.label >= num_classes]
    if bad:
        raise DataError(f"{spec.cls}: {bad[0].path} has label {bad[0].label}, but the train split has only "
                        f"{num_classes} classes")

    if spec.test_only:
        if shots or subsample != "all":
            logger.warning("%s is a test-only dataset: shots=%s and subsample=%r are ignored, as in the "
                           "original", spec.cls, shots, subsample)
            notes.append("test-only dataset: shots and subsample ignored")
        classnames = classnames_of(test, f"{spec.cls} images")
        return Dataset(spec.folder, dataset_dir, image_dir, classnames, list(test), [], list(test), 0, seed,
                       "all", "all", notes)

    imagenet = spec.family == "imagenet"
    source = "all"
    if shots >= 1:
        pkl = fewshot_cache_path(spec, root, shots, seed)
        if original_caches and os.path.isfile(pkl):
            data = load_datum_pickle(pkl, required=("train",) if imagenet else ("train", "val"))
            train = _rebase(data["train"], dataset_dir, spec.folder)
            if not imagenet:
                val = _rebase(data["val"], dataset_dir, spec.folder)
            if check_files:
                _require_files(train + ([] if imagenet else val), pkl, cache, cache_root,
                               "Move the .pkl away (or pass original_caches=False) to draw the subset afresh.")
            _check_pickled(train, full_names, dataset_dir, pkl, "train")
            if not imagenet:
                _check_pickled(val, full_names, dataset_dir, pkl, "val", every_class=False)
            source = pkl
            logger.info("%s: few-shot subset read from %s", spec.cls, pkl)
        else:
            train, val = sample_fewshot(train, val, shots, seed, with_val=not imagenet)
            source = "sampled"
    if imagenet:
        train, test = subsample_classes(train, test, subsample=subsample)
        val = test
    else:
        train, val, test = subsample_classes(train, val, test, subsample=subsample)
    classnames = classnames_of(train, f"{spec.cls} train split")
    return Dataset(spec.folder, dataset_dir, image_dir, classnames, train, val, test, shots, seed, subsample,
                   source, notes)
