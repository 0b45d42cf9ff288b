"""What ``fastprompt data check`` and ``fastprompt data fewshot`` report.

:func:`check_root` looks for every CoOp dataset folder under a root and, for each one found (or
asked for), lists each missing file or folder by its expected path with what to download (CoOp
``DATASETS.md``), or the image counts when it is complete. :func:`fewshot_record` is the subset a
``(shots, seed, subsample)`` run trains on, as a JSON-ready dict in the ``split_zhou_*.json`` row
format. SoftCPT's multi-task sets (``general10``, ``plant6``, ``fashion20``) are checked source by
source (:func:`check_multitask`: which of the three split situations applies, or what is missing)
and their subsets carry task ids (rows ``[path relative to the root, task, label, classname]``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ..errors import DataError
from .items import items_to_rows
from .listing import missing_paths
from .load import _read_full, dataset_dir_of, load_dataset
from .registry import SPECS, Spec, resolve

__all__ = ["CheckResult", "check_dataset", "check_root", "format_check", "fewshot_record", "check_multitask"]

_SHOW_MISSING = 10


@dataclass
class CheckResult:
    spec: Spec
    path: str
    status: str                               # "ok" | "incomplete" | "absent"
    counts: Dict[str, int] = field(default_factory=dict)
    problems: List[str] = field(default_factory=list)


def _required(spec: Spec) -> List[str]:
    entries = [os.path.join(spec.image_dir, "") if spec.image_dir else ""]
    if spec.split_file:
        entries.append(spec.split_file)
    entries += list(spec.needs)
    return [e for e in dict.fromkeys(entries) if e]


def check_dataset(spec: Spec, root: str, cache: bool = True, cache_root: Optional[str] = None) -> CheckResult:
    """Check one dataset folder under ``root`` (nothing is written there)."""
    folder = dataset_dir_of(spec, root)
    if not os.path.isdir(folder):
        return CheckResult(spec, folder, "absent", problems=[f"missing folder {os.path.join(folder, '')}"])
    problems = []
    for rel in _required(spec):
        path = os.path.join(folder, rel)
        is_dir = rel.endswith("/")
        if not (os.path.isdir(path) if is_dir else os.path.isfile(path)):
            problems.append(f"missing {'folder' if is_dir else 'file'} {path}")
    if problems:
        return CheckResult(spec, folder, "incomplete", problems=problems)
    try:
        train, val, test, _, listed = _read_full(spec, folder, cache, cache_root, True)
    except DataError as exc:
        return CheckResult(spec, folder, "incomplete", problems=[str(exc)])
    parts = [("train", train), ("val", val), ("test", test)]
    if spec.family == "imagenet" or spec.test_only:
        parts = [("train", train), ("test", test)] if not spec.test_only else [("test", test)]
    counts = {k: len(v) for k, v in parts}
    if listed is None:
        seen = set()
        paths = [it.path for _, v in parts for it in v if not (it.path in seen or seen.add(it.path))]
        missing = missing_paths(paths, cache, cache_root)
        if missing:
            problems = [f"missing image {p}" for p in missing[:_SHOW_MISSING]]
            if len(missing) > _SHOW_MISSING:
                problems.append(f"... {len(missing) - _SHOW_MISSING} more missing images ({len(missing)} in all)")
            return CheckResult(spec, folder, "incomplete", counts, problems)
    return CheckResult(spec, folder, "ok", counts)


def check_root(root: str, dataset: Optional[str] = None, cache: bool = True,
               cache_root: Optional[str] = None) -> List[CheckResult]:
    """Check ``dataset`` (any accepted name) or every CoOp dataset under ``root``."""
    if not os.path.isdir(os.path.expanduser(root)):
        raise DataError(f"data root not found: {root}")
    specs = SPECS if dataset is None else [resolve(dataset)]
    if None in specs:
        raise DataError(f"{dataset!r} is custom data; `data check` checks the CoOp dataset folders")
    return [check_dataset(s, root, cache, cache_root) for s in specs]


def format_check(results: List[CheckResult], root: str, explicit: bool = False) -> str:
    """The report: one line per dataset found, its missing entries and a download line."""
    lines = [f"datasets under {os.path.abspath(os.path.expanduser(root))}:"]
    width = max([len(r.spec.folder) for r in results if explicit or r.status != "absent"] or [0])
    absent = []
    for r in results:
        if r.status == "absent" and not explicit:
            absent.append(r.spec.folder)
            continue
        name = r.spec.folder.ljust(width)
        if r.status == "ok":
            total = sum(r.counts.values())
            detail = " / ".join(f"{k} {v:,}" for k, v in r.counts.items())
            lines.append(f"  {name}  ok          {total:,} images ({detail})")
            continue
        lines.append(f"  {name}  {'MISSING' if r.status == 'absent' else 'INCOMPLETE'}")
        lines += [f"      {p}" for p in r.problems]
        lines.append(f"      download: {r.spec.download}")
    if absent:
        lines.append(f"  not present: {', '.join(absent)}")
    if all(r.status == "absent" for r in results) and not explicit:
        lines.append("  no CoOp dataset folder found (see `fastprompt data check ROOT --dataset NAME` "
                     "for what one needs)")
    return "\n".join(lines)


_SITUATIONS = {"split_dk": "the original's {file}", "generated": "split drawn as the original's first run ({file})",
               "split_zhou": "CoOp's {file}", "aircraft": "FGVC-Aircraft's text files"}


def check_multitask(root: str, name: str, cache: bool = True, cache_root: Optional[str] = None):
    """``(report, ok)`` for SoftCPT's multi-task set ``name`` under ``root``: per source, the split
    situation that applies and where the task names come from, or what is missing (nothing is
    written into the dataset folders; a split drawn as the original's first run goes to the cache)."""
    from .softcpt.sources import SOURCES, resolve_multitask
    from .softcpt.split import read_source_split

    spec = resolve_multitask(name)
    root_dir = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root_dir):
        raise DataError(f"data root not found: {root}")
    lines, ok = [f"{spec.cls} under {root_dir} ({len(spec.sources)} source(s), task order):"], True
    width = max(len(SOURCES[s].folder) for s in spec.sources)
    for src in spec.sources:
        source = SOURCES[src]
        try:
            split = read_source_split(source, root_dir, cache_root)
            missing = missing_paths([it.path for part in (split.train, split.val, split.test) for it in part],
                                    cache, cache_root)
        except DataError as exc:
            ok = False
            lines.append(f"  {source.folder.ljust(width)}  INCOMPLETE  {exc}")
            continue
        where = _SITUATIONS[split.split_source].format(file=split.split_path)
        if missing:
            ok = False
            lines.append(f"  {source.folder.ljust(width)}  INCOMPLETE  {len(missing)} image(s) of {where} are not "
                         f"on disk, e.g. {missing[0]}")
            continue
        counts = " / ".join(f"{k} {len(v):,}" for k, v in (("train", split.train), ("val", split.val),
                                                            ("test", split.test)))
        lines.append(f"  {source.folder.ljust(width)}  ok          {len(split.names)} task(s), {counts}; {where}; "
                     f"task names: {split.names_source}")
    return "\n".join(lines), ok


def fewshot_record(name: str, root: str, shots: int, seed: int, subsample: str = "all",
                   original_caches: bool = True, subsample_tasks: Optional[str] = None) -> dict:
    """The chosen subset as JSON-ready data: rows ``[path relative to image_dir, label, classname]``
    (multi-task sets: ``[path relative to the root, task, label, classname]`` and a ``tasks`` table)."""
    from .softcpt.sources import is_multitask

    if is_multitask(name):
        return _multitask_record(name, root, shots, seed, subsample, original_caches, subsample_tasks or "all")
    if subsample_tasks not in (None, "all"):
        raise DataError(f"subsample_tasks applies to SoftCPT's multi-task sets, not to {name}")
    ds = load_dataset(name, root, shots=shots, seed=seed, subsample=subsample, original_caches=original_caches)
    return {"dataset": ds.name, "root": ds.root, "image_dir": ds.image_dir, "shots": ds.shots, "seed": ds.seed,
            "subsample": ds.subsample, "source": ds.fewshot_source, "classnames": ds.classnames,
            "train": items_to_rows(ds.train, ds.image_dir), "val": items_to_rows(ds.val, ds.image_dir)}


def _multitask_record(name, root, shots, seed, subsample, original_caches, subsample_tasks) -> dict:
    ds = load_dataset(name, root, shots=shots, seed=seed, subsample=subsample, original_caches=original_caches,
                      subsample_tasks=subsample_tasks)
    prefix = os.path.join(ds.root, "")

    def rows(items):
        return [[it.path[len(prefix):] if it.path.startswith(prefix) else it.path, it.task, it.label, it.classname]
                for it in items]
    tasks = [{"name": t.name, "description": t.description, "metric": t.metric, "source": t.source,
              "classnames": t.classnames, "split": t.split_source, "split_path": t.split_path,
              "names": t.names_source, "fewshot": t.fewshot_source} for t in ds.tasks]
    return {"dataset": ds.name, "root": ds.root, "shots": ds.shots, "seed": ds.seed, "subsample": ds.subsample,
            "subsample_tasks": ds.subsample_tasks, "source": ds.fewshot_source, "situation": ds.situation,
            "tasks": tasks, "classnames": ds.classnames, "notes": ds.notes, "train": rows(ds.train),
            "val": rows(ds.val)}
