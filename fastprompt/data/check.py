"""What ``fastprompt data check`` and ``fastprompt data fewshot`` report.

:func:`check_root` looks for every CoOp dataset folder under a root and, for each one found (or
asked for), lists each missing file or folder by its expected path with what to download (CoOp
``DATASETS.md``), or the image counts when it is complete. :func:`fewshot_record` is the subset a
``(shots, seed, subsample)`` run trains on, as a JSON-ready dict in the ``split_zhou_*.json`` row
format.
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

__all__ = ["CheckResult", "check_dataset", "check_root", "format_check", "fewshot_record"]

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


def fewshot_record(name: str, root: str, shots: int, seed: int, subsample: str = "all",
                   original_caches: bool = True) -> dict:
    """The chosen subset as JSON-ready data: rows ``[path relative to image_dir, label, classname]``."""
    ds = load_dataset(name, root, shots=shots, seed=seed, subsample=subsample, original_caches=original_caches)
    return {"dataset": ds.name, "root": ds.root, "image_dir": ds.image_dir, "shots": ds.shots, "seed": ds.seed,
            "subsample": ds.subsample, "source": ds.fewshot_source, "classnames": ds.classnames,
            "train": items_to_rows(ds.train, ds.image_dir), "val": items_to_rows(ds.val, ds.image_dir)}
