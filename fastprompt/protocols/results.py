"""The results of a grid directory: every finished run's test accuracies, read back from its files.

A run counts when it is finished (:func:`fastprompt.train.startup.run_status`) and has its
``eval.json``; an evaluation of its prompts on another split or dataset (``eval_<dataset>_<subsample>
.json``) counts when it is not older than the run's ``prompt.safetensors``. Layout: see
:mod:`fastprompt.protocols.grid`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Dict, List, Optional, Tuple

from ..train.startup import run_status
from .grid import eval_path

__all__ = ["RunResult", "collect_runs"]

_SHOTS = re.compile(r"^shots(\d+)$")
_SEED = re.compile(r"^seed(\d+)$")
_EVAL = re.compile(r"^eval_(.+)_(all|base|new)\.json$")


@dataclasses.dataclass
class RunResult:
    kind: str            # base2new, fewshot or xd (the folder under the grid directory)
    method: str
    dataset: str         # the dataset trained on
    shots: int
    seed: int
    accuracy: float      # the run's own test (base classes for base2new)
    evals: Dict[Tuple[str, str], float]  # (dataset, subsample) -> accuracy of the prompts there
    run_dir: str
    # A multi-task run (SoftCPT): each task's own metric (``overall_acc`` / ``mean_acc``, in %) by task
    # name in task order, and their unweighted mean, the original's reported number; else empty / None.
    tasks: Dict[str, float] = dataclasses.field(default_factory=dict)
    task_average: Optional[float] = None


def _read(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _number(value) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _accuracy(path: str) -> Optional[float]:
    return _number(_read(path).get("accuracy"))


def _task_metrics(data: dict) -> Tuple[Dict[str, float], Optional[float]]:
    """``(task name -> value, task_average)`` of a multi-task ``eval.json``
    (:func:`fastprompt.train.task_eval.task_metrics`); ``({}, None)`` for a single-task run."""
    average = _number(data.get("task_average"))
    entries = data.get("tasks")
    if average is None or not isinstance(entries, list):
        return {}, None
    tasks = {}
    for entry in entries:
        value = _number(entry.get("value")) if isinstance(entry, dict) else None
        if value is None or not isinstance(entry.get("task"), str):
            return {}, None  # not the format task_metrics writes: not a multi-task result
        tasks[entry["task"]] = value
    return tasks, average


def _subdirs(path: str) -> List[str]:
    try:
        return sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    except OSError:
        return []


def _read_run(kind: str, method: str, dataset: str, shots: int, seed: int, run_dir: str) -> Optional[RunResult]:
    if run_status(run_dir) != "finished":
        return None
    data = _read(os.path.join(run_dir, "eval.json"))
    accuracy = _number(data.get("accuracy"))
    if accuracy is None:
        return None
    tasks, task_average = _task_metrics(data)
    prompts = os.path.join(run_dir, "prompt.safetensors")
    stamp = os.path.getmtime(prompts) if os.path.isfile(prompts) else float("inf")
    evals = {}
    for name in os.listdir(run_dir):
        m = _EVAL.match(name)
        path = os.path.join(run_dir, name)
        if m and path == eval_path(run_dir, m.group(1), m.group(2)) and os.path.getmtime(path) >= stamp:
            value = _accuracy(path)
            if value is not None:
                evals[(m.group(1), m.group(2))] = value
    return RunResult(kind, method, dataset, shots, seed, accuracy, evals, run_dir, tasks, task_average)


def collect_runs(output_dir: str, kind: Optional[str] = None, method: Optional[str] = None) -> List[RunResult]:
    """Every finished run under ``output_dir`` (optionally of one kind / method), in path order."""
    out = []
    for k in _subdirs(output_dir):
        if k not in ("base2new", "fewshot", "xd", "multitask") or (kind and k != kind):
            continue
        for m in _subdirs(os.path.join(output_dir, k)):
            # a multitask run's folder is softcpt-<variant>: the method softcpt selects them all
            if method and m != method and not (k == "multitask" and m.startswith(method + "-")):
                continue
            for dataset in _subdirs(os.path.join(output_dir, k, m)):
                for shots_dir in _subdirs(os.path.join(output_dir, k, m, dataset)):
                    shots = _SHOTS.match(shots_dir)
                    if not shots:
                        continue
                    base = os.path.join(output_dir, k, m, dataset, shots_dir)
                    for seed_dir in _subdirs(base):
                        seed = _SEED.match(seed_dir)
                        if seed:
                            found = _read_run(k, m, dataset, int(shots.group(1)), int(seed.group(1)),
                                              os.path.join(base, seed_dir))
                            if found is not None:
                                out.append(found)
    return out
