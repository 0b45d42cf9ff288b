"""SoftCPT's multi-task datasets — General-10, Plant-6, Fashion-20 — with the original's items.

What the original does (kding1225/softcpt ``datasets/general10.py``, ``plant6.py``,
``fashion20.py``, on ``DatasetBaseMT``/``DatumMT`` of its bundled Dassl,
``dist/Dassl.pytorch/dassl/data/datasets/base_dataset.py``):

* ``General10`` / ``Plant6`` build each source class of ``data_sources`` (task order; see
  :mod:`fastprompt.data.softcpt.sources`) with ``SUBSAMPLE_CLASSES = "all"``, each in a
  ``multiprocessing.Pool`` worker, and merge them (``merge_tasks``): tasks numbered in source
  order, each source's train/val/test items appended in that order with their task ids mapped,
  the ``taskid2*`` tables concatenated. Each source reads its split (:mod:`.split`)
  and, with ``NUM_SHOTS >= 1``, its own ``<source>/split_fewshot_mt/shot_K-seed_S.pkl`` or draws
  ``generate_fewshot_dataset(train, K)`` then ``(val, min(K, 4))``: per (task, label) group in
  order of first appearance, ``random.sample(group, K)``, a short group kept whole (the same
  draw as CoOp's, Dassl's ``split_dataset_by_label`` keyed by (task, label)). The test split is
  always whole.
* With ``NUM_SHOTS >= 1`` the merged lists and the tables are saved to
  ``general10/split_fewshot_mt/shot_K-seed_S.pkl`` (``train``, ``val``, ``test`` of ``DatumMT``
  and ``taskid2cname``/``tname``/``desc``/``type``/``metric``); a later run reads that file
  instead of the sources (metrics and types then come from the source classes).
* ``DATASET.SUBSAMPLE_TASKS`` (``subsample_tasks``): ``"all"``, ``"task<i>"`` (one task), or
  ``"base"`` / ``"new"`` (the first ``ceil(T / 2)`` tasks / the rest), tasks renumbered from 0.
  Then ``SUBSAMPLE_CLASSES`` per task: ``m = ceil(n / 2)`` of the task's ``n`` listed classes,
  ``base`` the first ``m`` labels, ``new`` the rest, relabelled from 0; items of other classes
  dropped.
* ``Fashion20`` is one source of 20 tasks (``task_info.csv``); it draws its few-shot subset in
  the main process over all tasks at once, supports ``"task<i>"`` only and no class subsample.

**The one place the original gives no seed-fixed answer.** Python reseeds ``random`` from the OS
in every forked child (``os.register_at_fork``), so General-10's and Plant-6's ``Pool`` workers
draw a different subset on every run whatever the seed; only the ``split_fewshot_mt`` pickle a
run leaves fixes it. So: where that pickle exists (the set's, or a source's), it is read through
the restricted unpickler (:func:`~fastprompt.data.dassl_pickle.load_datum_mt_pickle`) and every
record checked (one label and one task, both in range, the task's class names equal to its
split's, the image inside its source's folder, every class in train) — item for item. Where it
does not, each task's subset is drawn as the original evidently intends and as a single-dataset
run draws it: from ``random.Random(seed)``, train ``K`` then val ``min(K, 4)``, on the task's
split — the subset :func:`fastprompt.data.load.load_dataset` draws for that dataset on the same
split (:func:`~fastprompt.data.fewshot.sample_fewshot`). Fashion-20's draw is seed-fixed in the
original and is reproduced as it is. The draw is recorded in fastprompt's cache
(``<cache_dir>/softcpt_fewshot/``), never in the dataset tree, and read back when its split
has not changed. fastprompt writes nothing into a dataset folder.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
from typing import Dict, List, Optional, Sequence, Tuple

from ...atomic_io import atomic_write_text
from ...errors import DataError
from ...keyed_file import cache_dir
from ..dassl_pickle import MTRecord, inside, load_datum_mt_pickle, rebase_path
from ..fewshot import check_int, fewshot_subset, sample_fewshot
from ..items import Item
from ..listing import require_files
from ..subsample import check_subsample
from .items import MultiTaskDataset, TaskInfo, TaskItem
from .sources import SOURCES, MultiTaskSpec, Source, resolve_multitask
from .split import SourceSplit, read_source_split

__all__ = ["load_multitask", "mt_fewshot_path", "check_subsample_tasks"]

logger = logging.getLogger("fastprompt.data")

_TABLES = ("taskid2cname", "taskid2tname", "taskid2desc")


def mt_fewshot_path(folder_dir: str, shots: int, seed: int) -> str:
    """``<folder>/split_fewshot_mt/shot_K-seed_S.pkl``: where the original keeps a subset."""
    return os.path.join(folder_dir, "split_fewshot_mt", f"shot_{shots}-seed_{seed}.pkl")


def check_subsample_tasks(value, spec: MultiTaskSpec) -> str:
    ok = value in ("all", "base", "new") or (isinstance(value, str) and value.startswith("task")
                                             and value[4:].isdigit())
    if not ok or (value in ("base", "new") and "base" not in spec.task_subsets):
        raise DataError(f"subsample_tasks for {spec.name} must be one of {', '.join(spec.task_subsets)} "
                        f"(taskN: one task, N from 0), got {value!r}")
    return value


def _norm(name: str) -> str:
    return name.replace("_", " ")


# ------------------------------------------------------------------ original pickles

def _check_records(records: Sequence[MTRecord], classnames: List[List[str]], folders: List[str], root: str,
                   pkl: str, split: str, every_class: Optional[set] = None) -> List[TaskItem]:
    """Each record of a ``split_fewshot_mt`` pickle checked against the tasks it claims: one
    label and one task, in range, the image inside its task's source folder (moved trees
    rebased), and (``every_class``: the (task, label) pairs the full train split has) every
    class that could be drawn present. A :class:`DataError` names the file and the first bad record."""
    out, seen = [], set()
    for i, rec in enumerate(records):
        where = f"{pkl}: {split}[{i}] ({rec.path})"
        if len(rec.labels) != 1 or len(rec.tasks) != 1:
            raise DataError(f"{where} has labels {list(rec.labels)} and tasks {list(rec.tasks)}; every SoftCPT "
                            "dataset has one of each: the pickle is not one of these datasets, move it away")
        task, label = rec.tasks[0], rec.labels[0]
        if not 0 <= task < len(classnames):
            raise DataError(f"{where} has task {task}, but the dataset has {len(classnames)} tasks (0.."
                            f"{len(classnames) - 1}); the pickle belongs to another dataset: move it away")
        if not 0 <= label < len(classnames[task]):
            raise DataError(f"{where} has label {label}, but task {task} has {len(classnames[task])} classes; the "
                            "pickle belongs to another dataset or split: move it away")
        folder_dir = os.path.join(root, folders[task])
        path = rebase_path(rec.path, folder_dir, folders[task])
        if not inside(path, folder_dir):
            raise DataError(f"{where} is not inside its task's dataset folder {folder_dir}; move the pickle away")
        seen.add((task, label))
        out.append(TaskItem(path, task, label, classnames[task][label]))
    if every_class:
        missing = sorted(every_class - seen)
        if missing:
            shown = ", ".join(f"task {t} {classnames[t][c]!r}" for t, c in missing[:5])
            raise DataError(f"{pkl}: its {split} subset lacks {len(missing)} class(es) ({shown}"
                            f"{', ...' if len(missing) > 5 else ''}); move it away to draw the subset afresh")
    return out


def _compare_names(pkl: str, task: int, got: List[str], split: Optional[SourceSplit], local: int) -> None:
    if split is None:
        return
    want = split.classnames[local]
    if [_norm(x) for x in got] != [_norm(x) for x in want]:
        diff = next((i for i, (a, b) in enumerate(zip(got, want)) if _norm(a) != _norm(b)), min(len(got), len(want)))
        raise DataError(f"{pkl}: task {task} lists {len(got)} classes, its split ({split.split_path}) {len(want)}, "
                        f"first difference at label {diff}; the pickle belongs to another split: move it away")


def _try_split(source: Source, root: str, cache_root) -> Optional[SourceSplit]:
    try:
        return read_source_split(source, root, cache_root)
    except DataError:
        return None


def _read_set_pickle(spec: MultiTaskSpec, root: str, pkl: str, cache_root, notes: List[str]):
    """General-10 / Plant-6: the set's own pickle holds everything (the sources are not read)."""
    data = load_datum_mt_pickle(pkl, required=("train", "val", "test") + _TABLES)
    cnames, tnames, descs = data["taskid2cname"], data["taskid2tname"], data["taskid2desc"]
    n = len(spec.sources)
    if not (len(cnames) == len(tnames) == len(descs) == n) or not all(isinstance(c, list) for c in cnames) \
            or not all(isinstance(t, str) for t in tnames):
        raise DataError(f"{pkl}: taskid2cname, taskid2tname and taskid2desc must list the {n} tasks of "
                        f"{spec.cls} (found {len(cnames)}, {len(tnames)}, {len(descs)}); move it away")
    folders = [SOURCES[s].folder for s in spec.sources]
    tasks, expected = [], set()
    for t, src in enumerate(spec.sources):
        source = SOURCES[src]
        split = _try_split(source, root, cache_root)
        if split is None:
            notes.append(f"task {t} ({src}): its split is not on disk, so the class names of {pkl} were not "
                         "compared with it")
        _compare_names(pkl, t, cnames[t], split, 0)
        expected |= ({(t, it.label) for it in split.train} if split else {(t, c) for c in range(len(cnames[t]))})
        tasks.append(TaskInfo(tnames[t], descs[t], list(cnames[t]), source.metric, "sl", src, source.folder,
                              split.image_dir if split else os.path.join(root, source.folder, source.image_dir),
                              split.split_source if split else "fewshot pickle", split.split_path if split else "",
                              "fewshot pickle", pkl))
    parts = {k: _check_records(data[k], cnames, folders, root, pkl, k, expected if k == "train" else None)
             for k in ("train", "val", "test")}
    return tasks, parts["train"], parts["val"], parts["test"]


def _read_source_pickle(split: SourceSplit, source: Source, root: str, pkl: str):
    data = load_datum_mt_pickle(pkl, required=("train", "val"))
    folders = [source.folder] * len(split.classnames)
    train = _check_records(data["train"], split.classnames, folders, root, pkl, "train",
                           {(it.task, it.label) for it in split.train})
    val = _check_records(data["val"], split.classnames, folders, root, pkl, "val")
    return train, val


# ------------------------------------------------------------------ the draw without a pickle

def _draw(split: SourceSplit, shots: int, seed: int) -> Tuple[List[TaskItem], List[TaskItem]]:
    """The source's subset from ``random.Random(seed)``: train ``shots`` then val ``min(shots,
    4)`` per (task, label) group in order of first appearance. For a one-task source this is
    :func:`~fastprompt.data.fewshot.sample_fewshot` on the split's items, the draw of
    ``load_dataset``; Fashion-20's groups span its 20 tasks, as its original draw does."""
    if len(split.classnames) == 1:
        def as_items(xs):
            return [Item(it.path, it.label, it.classname) for it in xs]
        train, val = sample_fewshot(as_items(split.train), as_items(split.val), shots, seed)
        return ([TaskItem(it.path, 0, it.label, it.classname) for it in train],
                [TaskItem(it.path, 0, it.label, it.classname) for it in val])
    rng = random.Random(seed)
    out = []
    for items, k in ((split.train, shots), (split.val, min(shots, 4))):
        # one key per (task, label) so Dassl's grouping by label groups by the pair, in the same order
        keys: Dict[Tuple[int, int], int] = {}
        coded = [Item(str(i), keys.setdefault((it.task, it.label), len(keys)), "") for i, it in enumerate(items)]
        out.append([items[int(c.path)] for c in fewshot_subset(coded, k, rng)])
    return out[0], out[1]


def _digest(split: SourceSplit) -> str:
    h = hashlib.sha256()
    for part in (split.train, split.val):
        for it in part:
            h.update(f"{it.path}\0{it.task}\0{it.label}\n".encode())
        h.update(b"|")
    return h.hexdigest()


def _draw_cache_path(source: Source, split: SourceSplit, shots: int, seed: int, cache_root) -> str:
    h = hashlib.sha256(os.path.abspath(split.image_dir).encode()).hexdigest()[:16]
    return os.path.join(cache_root or cache_dir(), "softcpt_fewshot", f"{source.folder}-{h}",
                        f"shot_{shots}-seed_{seed}.json")


def _cached_draw(source: Source, split: SourceSplit, shots: int, seed: int, cache_root):
    """The drawn subset, from fastprompt's record of it when that was drawn on this very split,
    else drawn (and recorded). ``(train, val, source string)``."""
    path = _draw_cache_path(source, split, shots, seed, cache_root)
    digest = _digest(split)
    try:
        with open(path, "r", encoding="utf-8") as f:
            rec = json.load(f)
        if rec.get("split_digest") == digest:
            index = {(it.path, it.task, it.label): it for it in split.train + split.val}
            parts = [[index[(p, t, lab)] for p, t, lab in rec[k]] for k in ("train", "val")]
            return parts[0], parts[1], f"cache {path}"
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent or not ours: draw again (the draw is a pure function of split, shots and seed)
    train, val = _draw(split, shots, seed)
    rec = {"source": source.cls, "shots": shots, "seed": seed, "split": split.split_path, "split_digest": digest,
           "train": [[it.path, it.task, it.label] for it in train], "val": [[it.path, it.task, it.label] for it in val]}
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_text(path, json.dumps(rec))
    except OSError as exc:
        logger.warning("fastprompt: cannot record the drawn subset in %s (%s); it is drawn again next time",
                       path, exc.strerror or exc)
    return train, val, "sampled"


# ------------------------------------------------------------------ merge and subsample

def _merge(parts: List[Tuple[List[TaskInfo], list, list, list]]):
    """``merge_tasks``: tasks renumbered in source order, items appended source by source."""
    tasks, train, val, test = [], [], [], []
    for infos, tr, va, te in parts:
        offset = len(tasks)
        tasks += infos
        for dst, src in ((train, tr), (val, va), (test, te)):
            dst += [it._replace(task=it.task + offset) for it in src]
    return tasks, train, val, test


def _subsample_tasks(tasks, lists, value: str):
    if value == "all":
        return tasks, lists
    if value.startswith("task"):
        t = int(value[4:])
        if t >= len(tasks):
            raise DataError(f"subsample_tasks {value!r} is out of range: the dataset has tasks task0.."
                            f"task{len(tasks) - 1}")
        selected = [t]
    else:
        m = math.ceil(len(tasks) / 2)
        selected = list(range(len(tasks)))[:m] if value == "base" else list(range(len(tasks)))[m:]
    relabel = {old: new for new, old in enumerate(selected)}
    lists = [[it._replace(task=relabel[it.task]) for it in x if it.task in relabel] for x in lists]
    return [tasks[i] for i in selected], lists


def _subsample_classes(tasks: List[TaskInfo], lists, value: str):
    """Per task: ``m = ceil(n / 2)`` of its ``n`` listed classes; base the first ``m``, new the rest."""
    if value == "all":
        return tasks, lists
    keep = []
    for info in tasks:
        n = len(info.classnames)
        m = math.ceil(n / 2)
        selected = list(range(n))[:m] if value == "base" else list(range(n))[m:]
        keep.append({old: new for new, old in enumerate(selected)})
        info.classnames = [info.classnames[i] for i in selected]
    lists = [[it._replace(label=keep[it.task][it.label]) for it in x if it.label in keep[it.task]] for x in lists]
    return tasks, lists


# ------------------------------------------------------------------ the loader

def load_multitask(name: str, root: str, shots: int = 0, seed: int = 1, subsample: str = "all", *,
                   subsample_tasks: str = "all", original_caches: bool = True, check_files: bool = True,
                   cache: bool = True, cache_root: Optional[str] = None) -> MultiTaskDataset:
    """Load ``general10``, ``plant6`` or ``fashion20`` as the original builds it (module docstring).

    Args:
        name: ``general10`` / ``General10``, ``plant6`` / ``Plant6``, ``fashion20`` / ``Fashion20``.
        root: the folder holding the dataset folders (the original's ``DATASET.ROOT``).
        shots: images per class and task for training (val: ``min(shots, 4)``); 0 = all.
        seed: the run seed.
        subsample: ``all`` / ``base`` / ``new`` classes of every task (``SUBSAMPLE_CLASSES``).
        subsample_tasks: ``all``, ``task<i>``, ``base`` or ``new`` (``SUBSAMPLE_TASKS``).
        original_caches: read the original's ``split_fewshot_mt`` pickles when present.
        check_files: verify every image the lists name is on disk.
        cache, cache_root: fastprompt's listing cache and cache folder.

    Returns:
        :class:`~fastprompt.data.softcpt.items.MultiTaskDataset`.

    Raises:
        DataError: a missing folder or file (named), a bad pickle record, a bad argument.
    """
    spec = resolve_multitask(name)
    shots, seed = check_int(shots, "shots"), check_int(seed, "seed")
    check_subsample(subsample)
    check_subsample_tasks(subsample_tasks, spec)
    if subsample != "all" and not spec.subsample_classes:
        raise DataError(f"{spec.cls} has no base/new class split (the original asserts SUBSAMPLE_CLASSES == 'all'); "
                        "use subsample='all'")
    root_dir = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root_dir):
        raise DataError(f"data root not found: {root}")
    notes: List[str] = []
    set_pkl = mt_fewshot_path(os.path.join(root_dir, spec.folder), shots, seed)
    if shots >= 1 and original_caches and len(spec.sources) > 1 and os.path.isfile(set_pkl):
        tasks, train, val, test = _read_set_pickle(spec, root_dir, set_pkl, cache_root, notes)
        fewshot_source = set_pkl
    else:
        parts, sources_used = [], []
        for src in spec.sources:
            source = SOURCES[src]
            split = read_source_split(source, root_dir, cache_root)
            notes += split.notes
            train, val, how = split.train, split.val, "all"
            if shots >= 1:
                pkl = mt_fewshot_path(os.path.join(root_dir, source.folder), shots, seed)
                if original_caches and os.path.isfile(pkl):
                    train, val = _read_source_pickle(split, source, root_dir, pkl)
                    how = pkl
                else:
                    train, val, how = _cached_draw(source, split, shots, seed, cache_root)
            infos = [TaskInfo(split.names[t], split.descriptions[t], list(split.classnames[t]), source.metric, "sl",
                              src, source.folder, split.image_dir, split.split_source, split.split_path,
                              split.names_source, how) for t in range(len(split.classnames))]
            parts.append((infos, train, val, split.test))
            sources_used.append(how)
        tasks, train, val, test = _merge(parts)
        drawn = [h == "sampled" or h.startswith("cache ") for h in sources_used]
        fewshot_source = ("all" if shots == 0 else "sampled" if all(drawn)
                          else "source pickles" if not any(drawn) else "source pickles+sampled")
    if check_files:
        require_files((it.path for it in train + val + test), f"{spec.cls} ({', '.join(spec.sources)})", cache,
                      cache_root, "Check the downloads of those datasets (`fastprompt data check ROOT`).")
    tasks, (train, val, test) = _subsample_tasks(tasks, [train, val, test], subsample_tasks)
    tasks, (train, val, test) = _subsample_classes(tasks, [train, val, test], subsample)
    situation = "+".join(dict.fromkeys(t.split_source for t in tasks))
    for info in tasks:
        if info.names_source == "fastprompt table":
            notes.append(f"task {info.name!r} ({info.source}): name and description from fastprompt's table, "
                         f"not the original's task files (put task_name.txt/task_desc.txt in {info.folder}/)")
    for note in notes:
        logger.info("%s: %s", spec.cls, note)
    return MultiTaskDataset(spec.name, root_dir, tasks, train, val, test, shots, seed, subsample, subsample_tasks,
                            fewshot_source, situation, notes)
