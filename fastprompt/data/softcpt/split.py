"""One SoftCPT source's full train/val/test split and task table, in whichever of three
situations the dataset folder is (:mod:`fastprompt.data.softcpt.sources` says what each original
class reads):

1. ``split_dk_<Name>.json`` present: read it (rows ``[path, [label], [task]]`` relative to the
   image folder, task names/descriptions/class lists from its ``meta``), item for item.
2. No ``split_dk`` file, but the raw files the original's first run splits (and, for the task
   names, ``task_name.txt`` / ``task_desc.txt``): draw the split exactly as that run does and
   keep it in fastprompt's cache (``<cache_dir>/softcpt_splits/``, the original's JSON format),
   never in the dataset folder. The original draws with Python's global ``random`` right after
   ``set_random_seed(cfg.SEED)`` of the first run; its scripts (``scripts/main_mtcoop.sh``)
   run seeds 1, 2, 3 in that order, so the split is drawn from ``random.Random(1)``
   (:data:`SPLIT_SEED`) and shared by every seed, as the written file is. Files are listed in
   ``os.listdir`` order, as Dassl's ``listdir_nohidden`` (``sort=False``) lists them. (When
   the first run is a General-10/Plant-6 run, the original draws inside a ``Pool`` worker whose
   ``random`` the OS reseeded: that split is not reproducible by anyone; this is the split a
   single-dataset first run with seed 1 writes.) Like the original's written file, the drawn
   split stays as it is: images added later are not in it (delete the cached file to draw again).
   Without the task files (which the original's first run needs), the names come from the table
   of situation 3. StanfordCars and OxfordFlowers read ``.mat`` files, with scipy as the original
   does; without scipy they take situation 3 with a note saying so, or, without CoOp's file
   either, fail with an error that names scipy.
3. CoOp's tree alone (no ``split_dk``, no task files, or not the raw files the generator needs):
   CoOp's ``split_zhou_<Name>.json`` and the task name/description of
   :data:`fastprompt.data.softcpt.tasks.TASK_TABLE`.

FGVC-Aircraft has no split file in either code: its text files are read every run.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from ...atomic_io import atomic_write_text
from ...errors import DataError
from ...keyed_file import cache_dir
from ..coop_splits import read_split_json
from ..items import classnames_of
from ..registry import resolve
from .items import TaskItem
from .sources import Source
from .tasks import TABLE_SOURCE, TASK_TABLE

__all__ = ["SPLIT_SEED", "SourceSplit", "read_source_split", "generated_split_path"]

SPLIT_SEED = 1  # the seed of the original's first run (scripts/*.sh: for SEED in 1 2 3)

_P_TRN, _P_VAL = 0.5, 0.2      # DTD.read_and_split_data, OxfordFlowers.read_data, Fashion20
_P_VAL_TRAINVAL = 0.2          # OxfordPets.split_trainval


@dataclass
class SourceSplit:
    """A source's full split: items with the source's own task ids (0, or 0..19 for Fashion-20)."""

    train: List[TaskItem]
    val: List[TaskItem]
    test: List[TaskItem]
    names: List[str]
    descriptions: list
    classnames: List[List[str]]
    image_dir: str
    split_source: str
    split_path: str
    names_source: str
    notes: List[str] = field(default_factory=list)


def _listdir_nohidden(path: str) -> List[str]:
    """Dassl's ``listdir_nohidden(path)``: ``os.listdir`` order, names starting with ``.`` dropped."""
    try:
        return [f for f in os.listdir(path) if not f.startswith(".")]
    except OSError as exc:
        raise DataError(f"cannot list {path}: {exc.strerror or exc}") from None


def _read_text(path: str) -> str:
    try:
        with open(path, "r", encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None


def _task_files(dataset_dir: str) -> Optional[Tuple[str, str]]:
    """``(task name, description)`` from ``task_name.txt`` / ``task_desc.txt`` (stripped, as the
    original reads them), or ``None`` when either is missing."""
    name_file, desc_file = os.path.join(dataset_dir, "task_name.txt"), os.path.join(dataset_dir, "task_desc.txt")
    if not (os.path.isfile(name_file) and os.path.isfile(desc_file)):
        return None
    name = _read_text(name_file).strip()
    if not name:
        raise DataError(f"{name_file} is empty; write the task's name into it (SoftCPT's meta-network reads it)")
    return name, _read_text(desc_file).strip()


def _rename(source: Source, classnames: List[str], strict: bool) -> List[str]:
    """The source's class renames (``update_cnames``: unknown names kept; PlantVillage's
    ``process_class_names``: every name must be known)."""
    renames = source.renames
    if not renames:
        return list(classnames)
    unknown = [c for c in classnames if c not in renames]
    if strict and unknown:
        raise DataError(f"{source.cls}: class folder(s) {unknown[:5]} are not PlantVillage classes the original "
                        "knows (datasets/plant_village.py NEW_CNAMES); check the download")
    return [renames.get(c, c) for c in classnames]


# ---------------------------------------------------------------- situation 1: split_dk files

def _parse_rows(rows, image_dir: str, where: str) -> List[Tuple[str, int, int]]:
    if not isinstance(rows, list):
        raise DataError(f"{where}: expected a list of [path, [label], [task]] rows, found {type(rows).__name__}")
    out = []
    for i, row in enumerate(rows):
        ok = isinstance(row, list) and len(row) == 3 and isinstance(row[0], str)
        ok = ok and all(isinstance(x, list) and len(x) == 1 and isinstance(x[0], int) and not isinstance(x[0], bool)
                        and x[0] >= 0 for x in row[1:]) if ok else False
        if not ok:
            raise DataError(f"{where}[{i}]: expected [path, [label], [task]] (one label, one task), found {row!r}")
        out.append((os.path.join(image_dir, row[0]), row[1][0], row[2][0]))
    return out


def _read_split_dk(path: str, image_dir: str) -> Tuple[Dict[str, list], dict]:
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read split file {path}: {exc}") from None
    if not isinstance(data, dict) or any(k not in data for k in ("train", "val", "test")):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{path}: expected an object with keys train, val, test, meta; found {found}")
    name = os.path.basename(path)
    rows = {k: _parse_rows(data[k], image_dir, f"{name}:{k}") for k in ("train", "val", "test")}
    meta = data.get("meta")
    return rows, meta if isinstance(meta, dict) else {}


def _meta_tables(meta: dict, path: str) -> Tuple[List[str], list, List[List[str]]]:
    tn, td, tc = meta.get("taskid2tname"), meta.get("taskid2desc"), meta.get("taskid2cname")
    ok = (isinstance(tn, list) and all(isinstance(x, str) for x in tn) and isinstance(td, list)
          and isinstance(tc, list) and all(isinstance(c, list) and all(isinstance(x, str) for x in c) for c in tc)
          and len(tn) == len(td) == len(tc) and tn)
    if not ok:
        raise DataError(f"{path}: 'meta' must hold taskid2tname, taskid2desc and taskid2cname lists of one length "
                        "(the original's save_split writes them); the file is not a SoftCPT split")
    return tn, td, tc


def _to_items(rows, classnames: List[List[str]], where: str) -> List[TaskItem]:
    out = []
    for i, (path, label, task) in enumerate(rows):
        if task >= len(classnames) or label >= len(classnames[task]):
            n = len(classnames[task]) if task < len(classnames) else 0
            raise DataError(f"{where}[{i}] ({path}) has task {task}, label {label}, but the split names "
                            f"{len(classnames)} task(s) and {n} class(es) for that task")
        out.append(TaskItem(path, task, label, classnames[task][label]))
    return out


# ---------------------------------------------------------------- situation 2: the first run's draw

def _split_folder(image_dir: str, rng: random.Random, ignored=()) -> Tuple[list, list, list, List[str]]:
    """``DTD.read_and_split_data``: sorted class folders; each folder's images shuffled, then
    ``round(n * 0.5)`` train, ``round(n * 0.2)`` val, the rest test (Python's ``round``)."""
    if not os.path.isdir(image_dir):
        raise DataError(f"missing folder {image_dir}")
    categories = sorted(c for c in _listdir_nohidden(image_dir) if c not in ignored)
    train, val, test = [], [], []
    for label, category in enumerate(categories):
        category_dir = os.path.join(image_dir, category)
        images = [os.path.join(category_dir, im) for im in _listdir_nohidden(category_dir)]
        rng.shuffle(images)
        n_total = len(images)
        n_train, n_val = round(n_total * _P_TRN), round(n_total * _P_VAL)
        if not (n_train > 0 and n_val > 0 and n_total - n_train - n_val > 0):
            raise DataError(f"{category_dir} has {n_total} image(s): too few for the original's 50/20/30 split "
                            "(it asserts a train, val and test image per class)")
        train += [(im, label, 0) for im in images[:n_train]]
        val += [(im, label, 0) for im in images[n_train:n_train + n_val]]
        test += [(im, label, 0) for im in images[n_train + n_val:]]
    return train, val, test, categories


def _split_trainval(trainval: Sequence[Tuple[str, int, int]], rng: random.Random) -> Tuple[list, list]:
    """``OxfordPets.split_trainval``: per (task, label) in order of first appearance, ``n_val =
    round(n * 0.2)``, the group's indices shuffled, the first ``n_val`` to val."""
    groups: Dict[Tuple[int, int], List[int]] = {}
    for idx, (_, label, task) in enumerate(trainval):
        groups.setdefault((task, label), []).append(idx)
    train, val = [], []
    for key, idxs in groups.items():
        n_val = round(len(idxs) * _P_VAL_TRAINVAL)
        if n_val <= 0:
            raise DataError(f"class {key[1]} has {len(idxs)} train+val image(s): too few for the original's 80/20 "
                            "train/val split (it asserts a val image per class)")
        rng.shuffle(idxs)
        for n, idx in enumerate(idxs):
            (val if n < n_val else train).append(trainval[idx])
    return train, val


def _labelled_lines(path: str) -> List[str]:
    return _read_text(path).splitlines()


def _class_list(names: Dict[int, str], where: str) -> List[str]:
    """The original's class list ``[M[k] for k in sorted(M)]`` of the labels it saw. Position is
    the label only when every label ``0..K-1`` has an image: otherwise the original pairs names
    with the wrong labels, so that is refused."""
    gaps = sorted(set(range(max(names, default=-1) + 1)) - set(names))
    if gaps:
        raise DataError(f"{where}: no image has class id(s) {[g + 1 for g in gaps[:5]]} (1-based) though higher ids "
                        "have; the original's class list would then name the wrong classes. Use the full download")
    return [names[k] for k in sorted(names)]


def _trainval_test(read, trainval_file, test_file, rng):
    """The readers that list train+val and test (OxfordPets, SUN397, UCF101, StanfordCars): the
    class names of the train+val listing, its 80/20 split, the test listing whole. ``read``
    returns ``(items, {label: name})``."""
    trainval, names = read(*trainval_file)
    test, _ = read(*test_file)
    train, val = _split_trainval(trainval, rng)
    return train, val, test, _class_list(names, f"the train+val listing {trainval_file[-1]}")


def _gen_pets(d: str, image_dir: str, rng):
    def read(name):
        items, names = [], {}
        for line in _labelled_lines(os.path.join(d, "annotations", name)):
            line = line.strip()
            parts = line.split(" ")
            if len(parts) != 4:
                raise DataError(f"{os.path.join(d, 'annotations', name)}: expected 'image label species breed_id', "
                                f"found {line!r}")
            imname, label = parts[0], int(parts[1]) - 1
            names[label] = "_".join(imname.split("_")[:-1]).lower()
            items.append((os.path.join(image_dir, imname + ".jpg"), label, 0))
        return items, names
    return _trainval_test(read, ("trainval.txt",), ("test.txt",), rng)


def _gen_sun397(d: str, image_dir: str, rng):
    classnames = [line.strip()[1:] for line in _labelled_lines(os.path.join(d, "ClassName.txt"))]
    cname2lab = {c: i for i, c in enumerate(classnames)}

    def read(name):
        items, names = [], {}
        for line in _labelled_lines(os.path.join(d, name)):
            imname = line.strip()[1:]
            classname = os.path.dirname(imname)
            if classname not in cname2lab:
                raise DataError(f"{os.path.join(d, name)}: {imname!r} is in no class of ClassName.txt")
            label = cname2lab[classname]
            names[label] = " ".join(classname.split("/")[1:][::-1])
            items.append((os.path.join(image_dir, imname), label, 0))
        return items, names
    return _trainval_test(read, ("Training_01.txt",), ("Testing_01.txt",), rng)


def _gen_ucf101(d: str, image_dir: str, rng):
    lists = os.path.join(d, "ucfTrainTestlist")
    cname2lab = {}
    for line in _labelled_lines(os.path.join(lists, "classInd.txt")):
        label, classname = line.strip().split(" ")
        cname2lab[classname] = int(label) - 1

    def read(name):
        items, names = [], {}
        for line in _labelled_lines(os.path.join(lists, name)):
            action, filename = line.strip().split(" ")[0].split("/")
            label = cname2lab[action]
            renamed = "_".join(re.findall("[A-Z][^A-Z]*", action))
            names[label] = renamed
            items.append((os.path.join(image_dir, renamed, filename.replace(".avi", ".jpg")), label, 0))
        return items, names
    return _trainval_test(read, ("trainlist01.txt",), ("testlist01.txt",), rng)


def _loadmat(path: str, key: str):
    """Variable ``key`` of the MATLAB file ``path``, read with ``scipy.io.loadmat`` as the original
    reads it (scipy is needed only here: the sources without .mat files never import it)."""
    try:
        from scipy.io import loadmat
        from scipy.io.matlab import MatReadError
    except ImportError:
        raise DataError(f"reading {path} needs scipy (pip install scipy), as the original's reader does") from None
    if not os.path.isfile(path):
        raise DataError(f"missing file {path} (part of the dataset's download; the original's first run reads it)")
    try:
        data = loadmat(path)
    except (OSError, ValueError, MatReadError, NotImplementedError) as exc:
        raise DataError(f"cannot read {path} as a MATLAB file ({exc}); download it again") from None
    if key not in data:
        found = sorted(k for k in data if not k.startswith("__"))
        raise DataError(f"{path} holds no variable {key!r} (found {found}); it is not the file the original reads")
    return data[key]


def _row0(array, path: str, key: str, what: str):
    """``array[0]``, the first row of a 1 x N MATLAB array, as the original indexes it."""
    if getattr(array, "ndim", 0) != 2 or array.shape[0] < 1:
        raise DataError(f"{path}: {key!r} should be a 1 x N array of {what}, found shape "
                        f"{getattr(array, 'shape', type(array).__name__)}")
    return array[0]


def _gen_flowers(d: str, image_dir: str, rng):
    """``OxfordFlowers.read_data``: ``imagelabels.mat``'s i-th 1-based label is
    ``image_<i+1:05d>.jpg``'s; per label in order of first appearance, its images shuffled and
    split 50/20/30; names from ``cat_to_name.json``."""
    label_file, name_file = os.path.join(d, "imagelabels.mat"), os.path.join(d, "cat_to_name.json")
    labels = _row0(_loadmat(label_file, "labels"), label_file, "labels", "1-based class ids")
    try:
        lab2cname = json.loads(_read_text(name_file))
    except ValueError as exc:
        raise DataError(f"cannot read {name_file}: {exc}") from None
    if not isinstance(lab2cname, dict):
        raise DataError(f"{name_file}: expected an object mapping class ids (\"1\", \"2\", ...) to names")
    tracker: Dict[int, List[str]] = {}
    for i, label in enumerate(labels):
        try:
            label = int(label)
        except (TypeError, ValueError):
            raise DataError(f"{label_file}: entry {i + 1} ({label!r}) is not a class id") from None
        if label < 1 or str(label) not in lab2cname:
            raise DataError(f"{label_file}: image {i + 1} has class id {label}, which {name_file} does not name "
                            "(ids are 1-based)")
        tracker.setdefault(label, []).append(os.path.join(image_dir, f"image_{str(i + 1).zfill(5)}.jpg"))
    train, val, test, names = [], [], [], {}
    for label, paths in tracker.items():
        rng.shuffle(paths)
        n_total = len(paths)
        n_train, n_val = round(n_total * _P_TRN), round(n_total * _P_VAL)
        if not (n_train > 0 and n_val > 0 and n_total - n_train - n_val > 0):
            raise DataError(f"imagelabels.mat label {label} has {n_total} image(s): too few for a 50/20/30 split")
        train += [(p, label - 1, 0) for p in paths[:n_train]]
        val += [(p, label - 1, 0) for p in paths[n_train:n_train + n_val]]
        test += [(p, label - 1, 0) for p in paths[n_train + n_val:]]
        names[label - 1] = lab2cname[str(label)]
    return train, val, test, _class_list(names, label_file)


def _gen_cars(d: str, image_dir: str, rng):
    """``StanfordCars.read_data`` on the train and test annotation files (``fname``, 1-based
    ``class``), names ``"<year> <make model>"`` from ``cars_meta.mat``; then the 80/20 split."""
    meta_file = os.path.join(d, "devkit", "cars_meta.mat")
    meta = _row0(_loadmat(meta_file, "class_names"), meta_file, "class_names", "class names")

    def read(folder, anno_file):
        annos = _row0(_loadmat(anno_file, "annotations"), anno_file, "annotations", "image annotations")
        fields = annos.dtype.names or ()
        if "fname" not in fields or "class" not in fields:
            raise DataError(f"{anno_file}: the annotations have fields {list(fields)}, without 'fname' and 'class' "
                            "that the original reads (the test annotations with labels are "
                            "cars_test_annos_withlabels.mat)")
        items, names = [], {}
        for i in range(len(annos)):
            try:
                label = int(annos[i]["class"][0, 0]) - 1
                fname = str(annos[i]["fname"][0])
                words = str(meta[label][0]).split(" ") if 0 <= label < len(meta) else None
            except (IndexError, TypeError, ValueError):
                raise DataError(f"{anno_file}: annotation {i + 1} has no readable 'class' / 'fname', or "
                                f"{meta_file} no name for its class") from None
            if words is None:
                raise DataError(f"{anno_file}: annotation {i + 1} ({fname}) has class {label + 1}, but {meta_file} "
                                f"names classes 1..{len(meta)}")
            words.insert(0, words.pop(-1))
            names[label] = " ".join(words)
            items.append((os.path.join(d, folder, fname), label, 0))
        return items, names
    return _trainval_test(read, ("cars_train", os.path.join(d, "devkit", "cars_train_annos.mat")),
                          ("cars_test", os.path.join(d, "cars_test_annos_withlabels.mat")), rng)


def _gen_split_folders(d: str, image_dir: str, rng):
    train, val, test, seen = [], [], [], []
    for split in ("train", "test", "validation"):
        tr, va, te, categories = _split_folder(os.path.join(image_dir, split), rng)
        train, val, test = train + tr, val + va, test + te
        seen.append(categories)
    if not seen[0] == seen[1] == seen[2]:
        raise DataError(f"{image_dir}: train/, test/ and validation/ hold different class folders; the original "
                        "numbers each folder's classes on its own and would mislabel them")
    return train, val, test, seen[-1]


def read_task_info(path: str) -> List[Tuple[str, List[str], List[str]]]:
    """Fashion-20's ``task_info.csv`` (tab-separated, a header line, then ``_ name _ classes``):
    ``[(task name with spaces as '_', per-class descriptions as the original builds them, class
    names), ...]``. The original's description is ``f"cassify {name} into {len(label)} categories"``
    for each class name ``label`` (its typo and its per-class list kept: they are recorded, not read)."""
    out = []
    for idx, line in enumerate(_read_text(path).splitlines()):
        if idx == 0 or not line.strip():
            continue
        parts = line.strip().split("\t")
        if len(parts) != 4:
            raise DataError(f"{path}:{idx + 1}: expected 4 tab-separated fields (_, task name, _, class names), "
                            f"found {len(parts)}")
        name = parts[1].strip().replace(" ", "_")
        labels = [x.strip() for x in parts[3].strip().split(",")]
        out.append((name, [f"cassify {name} into {len(label)} categories" for label in labels], labels))
    if not out:
        raise DataError(f"{path} lists no task")
    return out


def _gen_fashion20(d: str, image_dir: str, rng, n_tasks: int):
    """``Fashion20.read_and_split_data``: ``images/<task>/<class>/`` (folder names sorted as
    strings, ids ``int(name)``), then per task id ``0..T-1`` its images in listing order,
    shuffled, 50/20/30."""
    images, task_cls = [], []
    for taskid in sorted(_listdir_nohidden(image_dir)):
        path1 = os.path.join(image_dir, taskid)
        for clsid in sorted(_listdir_nohidden(path1)):
            path2 = os.path.join(path1, clsid)
            if not (taskid.isdigit() and clsid.isdigit()):
                raise DataError(f"{path2}: Fashion-20's images/<task>/<class>/ folders are numbered (0, 1, ...)")
            for file in _listdir_nohidden(path2):
                images.append(os.path.join(path2, file))
                task_cls.append((int(taskid), int(clsid)))
    train, val, test = [], [], []
    for tid in range(n_tasks):
        indices = [j for j, (t, _) in enumerate(task_cls) if t == tid]
        rng.shuffle(indices)
        n_total = len(indices)
        n_train, n_val = round(n_total * _P_TRN), round(n_total * _P_VAL)
        if not (n_train > 0 and n_val > 0 and n_total - n_train - n_val > 0):
            raise DataError(f"{os.path.join(image_dir, str(tid))} has {n_total} image(s): too few for a 50/20/30 split")
        rows = [(images[j], task_cls[j][1], tid) for j in indices]
        train += rows[:n_train]
        val += rows[n_train:n_train + n_val]
        test += rows[n_train + n_val:]
    return train, val, test


def can_generate(source: Source, dataset_dir: str) -> Optional[str]:
    """``None`` when the raw files the first run splits are present, else what is missing."""
    image_dir = os.path.join(dataset_dir, source.image_dir)
    wanted = ([os.path.join(image_dir, "")] if source.image_dir else []) + \
        [os.path.join(dataset_dir, n) for n in source.needs]
    missing = [p for p in wanted if not (os.path.isdir(p) if p.endswith(("/", os.sep)) else os.path.isfile(p))]
    if source.generator in ("flowers", "cars"):  # their .mat files are read with scipy, as the original reads them
        import importlib.util

        if importlib.util.find_spec("scipy") is None:
            missing.append("scipy (pip install scipy) to read the .mat files")
    return ", ".join(missing) if missing else None


def generated_split_path(source: Source, dataset_dir: str, cache_root: Optional[str] = None) -> str:
    """Where fastprompt keeps the split it drew for ``dataset_dir`` (never inside it)."""
    h = hashlib.sha256(os.path.abspath(dataset_dir).encode()).hexdigest()[:16]
    return os.path.join(cache_root or cache_dir(), "softcpt_splits", f"{source.folder}-{h}",
                        f"seed{SPLIT_SEED}", source.split_file)


def _generate(source: Source, dataset_dir: str, image_dir: str):
    """The first run's split of a one-task source: ``(train, val, test, [classnames])``."""
    rng = random.Random(SPLIT_SEED)
    g = source.generator
    if g == "folders":
        rows = _split_folder(image_dir, rng, source.ignored)
    elif g == "split_folders":
        rows = _gen_split_folders(dataset_dir, image_dir, rng)
    else:
        rows = {"pets": _gen_pets, "sun397": _gen_sun397, "ucf101": _gen_ucf101, "flowers": _gen_flowers,
                "cars": _gen_cars}[g](dataset_dir, image_dir, rng)
    train, val, test, classnames = rows
    if source.rename_when == "save":
        classnames = _rename(source, classnames, strict=True)
    return train, val, test, [classnames]


def _save_generated(path: str, rows, meta: dict, image_dir: str, dataset_dir: str) -> None:
    """The original's ``save_split`` format (paths relative to ``image_dir``), plus where it came from."""
    prefix = os.path.join(image_dir, "")

    def rel(items):
        return [[p[len(prefix):] if p.startswith(prefix) else p, [label], [task]] for p, label, task in items]
    data = {"train": rel(rows[0]), "val": rel(rows[1]), "test": rel(rows[2]), "meta": meta,
            "fastprompt": {"dataset_dir": os.path.abspath(dataset_dir), "split_seed": SPLIT_SEED}}
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_text(path, json.dumps(data))
    except OSError as exc:
        raise DataError(f"cannot write the drawn split to {path}: {exc.strerror or exc} "
                        "(set FASTPROMPT_CACHE to a writable folder)") from None


# ---------------------------------------------------------------- the three situations

def read_source_split(source: Source, root: str, cache_root: Optional[str] = None) -> SourceSplit:
    """``source``'s split under ``root`` in the first situation that applies (module docstring)."""
    dataset_dir = os.path.join(os.path.abspath(os.path.expanduser(root)), source.folder)
    image_dir = os.path.join(dataset_dir, source.image_dir) if source.image_dir else dataset_dir
    if not os.path.isdir(dataset_dir):
        raise DataError(f"{source.cls} not found: no folder {dataset_dir} "
                        f"(`fastprompt data check {root}` lists what each dataset needs)")
    if source.generator == "fashion20":
        return _fashion20(source, dataset_dir, image_dir, cache_root)
    files = _task_files(dataset_dir)
    if source.generator == "aircraft":
        return _aircraft(source, dataset_dir, image_dir, files)
    split_file = os.path.join(dataset_dir, source.split_file)
    if os.path.isfile(split_file):
        return _from_split_dk(source, split_file, image_dir, "split_dk", "split_dk meta")
    cached = generated_split_path(source, dataset_dir, cache_root)
    missing = can_generate(source, dataset_dir)
    coop = _coop_split_file(source, dataset_dir)
    if missing is None and (files is not None or coop is None):
        name, desc = files if files is not None else TASK_TABLE[source.cls]
        if not os.path.isfile(cached):
            train, val, test, classnames = _generate(source, dataset_dir, image_dir)
            meta = {"taskid2cname": classnames, "taskid2desc": [desc], "taskid2type": ["sl"],
                    "taskid2tname": [name], "taskid2metric": [source.metric]}
            _save_generated(cached, (train, val, test), meta, image_dir, dataset_dir)
        out = _from_split_dk(source, cached, image_dir, "generated", "task files" if files else TABLE_SOURCE)
        out.names, out.descriptions = [name], [desc]  # today's task files rule over what the draw recorded
        return out
    if coop is not None:
        spec = resolve(source.coop)
        train, val, test = read_split_json(coop, image_dir, spec.download)
        classnames = classnames_of(train, f"{source.cls} {os.path.basename(coop)} train split")
        name, desc = files if files is not None else TASK_TABLE[source.cls]
        parts = [[TaskItem(it.path, 0, it.label, it.classname) for it in part] for part in (train, val, test)]
        out = SourceSplit(*parts,
                          [name], [desc], [classnames], image_dir, "split_zhou", coop,
                          "task files" if files is not None else TABLE_SOURCE)
        if files is not None and missing is not None:
            out.notes.append(f"{source.cls}: no {source.split_file} and the files its first run splits are missing "
                             f"({missing}); CoOp's {os.path.basename(coop)} used instead")
        return out
    raise DataError(f"{source.cls} in {dataset_dir} has none of: {source.split_file} (the original's split), "
                    f"the files its first run splits ({missing})"
                    + (f", CoOp's {resolve(source.coop).split_file}" if source.coop else "")
                    + "; get the dataset (see `fastprompt data check`)")


def _coop_split_file(source: Source, dataset_dir: str) -> Optional[str]:
    if not source.coop:
        return None
    spec = resolve(source.coop)
    path = os.path.join(dataset_dir, spec.split_file) if spec.split_file else None
    return path if path and os.path.isfile(path) else None


def _from_split_dk(source: Source, path: str, image_dir: str, split_source: str, names_source: str) -> SourceSplit:
    rows, meta = _read_split_dk(path, image_dir)
    names, descs, classnames = _meta_tables(meta, path)
    if source.rename_when == "read":
        classnames = [_rename(source, c, strict=False) for c in classnames]
    where = os.path.basename(path)
    parts = [_to_items(rows[k], classnames, f"{where}:{k}") for k in ("train", "val", "test")]
    return SourceSplit(*parts, list(names), list(descs), [list(c) for c in classnames], image_dir, split_source, path,
                       names_source)


def _aircraft(source: Source, dataset_dir: str, image_dir: str, files) -> SourceSplit:
    """FGVCAircraft: ``variants.txt`` is the class list (every line, in order); the three
    ``images_variant_*.txt`` files are the split, every run."""
    from ..aircraft import read_aircraft

    for rel in source.needs:
        if not os.path.isfile(os.path.join(dataset_dir, rel)):
            raise DataError(f"FGVCAircraft: missing file {os.path.join(dataset_dir, rel)}")
    classnames = [line.strip() for line in _labelled_lines(os.path.join(dataset_dir, "variants.txt"))]
    train, val, test = read_aircraft(dataset_dir, image_dir)
    name, desc = files if files is not None else TASK_TABLE[source.cls]
    parts = [[TaskItem(it.path, 0, it.label, classnames[it.label]) for it in part] for part in (train, val, test)]
    return SourceSplit(*parts, [name], [desc], [classnames], image_dir, "aircraft",
                       os.path.join(dataset_dir, "images_variant_train.txt"),
                       "task files" if files is not None else TABLE_SOURCE)


def _fashion20(source: Source, dataset_dir: str, image_dir: str, cache_root) -> SourceSplit:
    """Fashion-20: the task table is always ``task_info.csv`` (the split file's meta is not read);
    the split is ``split_dk_Fashion20.json`` or the first run's draw."""
    info_file = os.path.join(dataset_dir, "task_info.csv")
    if not os.path.isfile(info_file):
        raise DataError(f"Fashion20: missing file {info_file} (part of the Fashion-20 download, see the SoftCPT "
                        "README); it names the 20 tasks and their classes")
    task_info = read_task_info(info_file)
    if len(task_info) != 20:
        raise DataError(f"{info_file} lists {len(task_info)} tasks; Fashion-20 has 20 (the original's taskid2type "
                        "and taskid2metric are 20 long and would pair with the wrong tasks)")
    names = [t[0] for t in task_info]
    descs = [t[1] for t in task_info]
    classnames = [t[2] for t in task_info]
    split_file = os.path.join(dataset_dir, source.split_file)
    if os.path.isfile(split_file):
        path, situation = split_file, "split_dk"
    else:
        path, situation = generated_split_path(source, dataset_dir, cache_root), "generated"
        if not os.path.isfile(path):
            if not os.path.isdir(image_dir):
                raise DataError(f"Fashion20: no {split_file} and no image folder {image_dir} to split")
            train, val, test = _gen_fashion20(dataset_dir, image_dir, random.Random(SPLIT_SEED), len(task_info))
            meta = {"taskid2cname": classnames, "taskid2desc": descs, "taskid2type": ["sl"] * len(names),
                    "taskid2tname": names, "taskid2metric": [source.metric] * len(names)}
            _save_generated(path, (train, val, test), meta, image_dir, dataset_dir)
    rows, _ = _read_split_dk(path, image_dir)
    where = os.path.basename(path)
    parts = [_to_items(rows[k], classnames, f"{where}:{k}") for k in ("train", "val", "test")]
    return SourceSplit(*parts, names, descs, classnames, image_dir, situation, path, "task_info.csv")
