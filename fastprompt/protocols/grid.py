"""``fastprompt run``: the runs of a protocol, each trained, skipped or resumed, then evaluated.

The grid lives in one output directory, laid out like the originals' ``output/`` trees
(KaiyangZhou/CoOp ``scripts/cocoop/base2new_train.sh``: ``base2new/train_base/<dataset>/
shots_<K>/<trainer>/<config>/seed<S>``)::

    DIR/base2new/<method>/<dataset>/shots<K>/seed<S>/   trained on the base classes; eval.json (base),
                                                        eval_<dataset>_new.json (novel classes)
    DIR/fewshot/<method>/<dataset>/shots<K>/seed<S>/    eval.json
    DIR/xd/<method>/imagenet/shots<K>/seed<S>/          the ImageNet source run of crossdataset and dg:
                                                        eval.json (ImageNet), eval_<target>_all.json
    DIR/multitask/softcpt-<variant>/<dataset>/shots<K>/seed<S>/
                                                        SoftCPT's multi-task runs (a variant or a
                                                        hard-sharing baseline, ``--variants``):
                                                        eval.json with every task's metric and their average
    DIR/results/<protocol>_<method>.{csv,md,png}        the tables (:mod:`fastprompt.protocols.tables`)

Each run directory is an ordinary ``fastprompt train`` run (``fastprompt eval`` and ``--resume``
work on it). Like the originals' scripts, a finished run is skipped; unlike them, an unfinished one
is resumed from its last state rather than skipped or redone, and a run directory whose
configuration differs from the one asked for (another backbone, other overrides) is an error,
never mixed into the table.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .. import distributed
from ..errors import ConfigError, TrainError
from ..folder_lock import FolderLock
from ..train.config import load_recipe, recipe_path, resolve_config
from ..train.run import evaluate_checkpoint, train_run
from ..train.startup import run_status
from .definitions import SOURCE, check_protocol, normalise_datasets, recipe_for

__all__ = ["Job", "plan", "run_grid", "eval_path", "KIND"]

# protocol -> the folder of its training runs (crossdataset and dg share the ImageNet runs)
KIND = {"base2new": "base2new", "fewshot": "fewshot", "crossdataset": "xd", "dg": "xd", "multitask": "multitask"}
MULTITASK_PREFIX = "softcpt-"  # a multitask run's method folder: softcpt-<variant>


@dataclasses.dataclass
class Job:
    """One training run of the grid and the evaluations of its prompts that the protocol needs."""

    run_dir: str
    dataset: str
    shots: int
    seed: int
    recipe: str
    overrides: Tuple[Tuple[str, Any], ...]
    subsample: str = "all"
    evals: Tuple[Tuple[str, str], ...] = ()  # (dataset, subsample) tested with the trained prompts
    method: Optional[str] = None  # the run's method when not the grid's (multitask: softcpt_hard baselines)


def eval_path(run_dir: str, dataset: str, subsample: str) -> str:
    """Where the evaluation of a run's prompts on ``dataset`` / ``subsample`` is written."""
    return os.path.join(run_dir, f"eval_{dataset}_{subsample}.json")


def plan(protocol: str, method: str, output_dir: str, datasets: Optional[Sequence[str]] = None,
         seeds: Sequence[int] = (1, 2, 3), shots: Optional[Sequence[int]] = None,
         variants: Optional[Sequence[str]] = None, config: Optional[str] = None) -> List[Job]:
    """The jobs of a grid, in the order they run (dataset, shots, seed; multitask: dataset, variant,
    shots, seed). ``variants`` / ``config``: the multitask protocol's SoftCPT variants and original
    config (defaults :data:`~.definitions.MULTITASK_VARIANTS`, ``rn50_ep50``); refused elsewhere."""
    from .definitions import DEFAULT_SHOTS, METHOD_SHOTS

    check_protocol(protocol, method)
    if protocol != "multitask" and (variants or config):
        raise ConfigError(f"--variants / --config choose the multitask protocol's SoftCPT runs; {protocol} runs "
                          "one recipe per method")
    shots = list(shots or METHOD_SHOTS.get((method, protocol)) or DEFAULT_SHOTS[protocol])
    if protocol not in ("fewshot", "multitask") and len(shots) != 1:
        raise ConfigError(f"--shots: {protocol} trains with one shot count (16 in the papers), got {shots}")
    if any(int(k) < 1 for k in shots):
        raise ConfigError(f"--shots must be >= 1, got {shots}")
    if not seeds or any(int(s) < 0 for s in seeds):
        raise ConfigError(f"--seeds must be integers >= 0, got {list(seeds)}")
    names = normalise_datasets(datasets, protocol)
    kind = KIND[protocol]
    if protocol == "multitask":
        return _multitask_jobs(output_dir, names, shots, seeds, variants, config)
    jobs = []
    trained = [SOURCE] if kind == "xd" else names
    for dataset in trained:
        for k in shots:
            rec = recipe_for(method, protocol, dataset, int(k))
            for seed in seeds:
                run_dir = os.path.join(output_dir, kind, method, dataset, f"shots{k}", f"seed{seed}")
                if protocol == "base2new":
                    jobs.append(Job(run_dir, dataset, int(k), int(seed), rec.recipe, rec.overrides, "base",
                                    ((dataset, "new"),)))
                elif kind == "xd":
                    jobs.append(Job(run_dir, dataset, int(k), int(seed), rec.recipe, rec.overrides,
                                    evals=tuple((t, "all") for t in names)))
                else:
                    jobs.append(Job(run_dir, dataset, int(k), int(seed), rec.recipe, rec.overrides))
    return jobs


def _multitask_jobs(output_dir: str, names: Sequence[str], shots: Sequence[int], seeds: Sequence[int],
                    variants: Optional[Sequence[str]], config: Optional[str]) -> List[Job]:
    """SoftCPT's sweep: every dataset x variant x shots x seed, each variant with its own recipe."""
    from .definitions import MULTITASK_CONFIG, multitask_recipe, multitask_variants

    jobs = []
    for dataset in names:
        for variant in multitask_variants(variants):
            rec = multitask_recipe(variant, dataset, config or MULTITASK_CONFIG)
            for k in shots:
                for seed in seeds:
                    run_dir = os.path.join(output_dir, "multitask", MULTITASK_PREFIX + variant, dataset,
                                           f"shots{k}", f"seed{seed}")
                    jobs.append(Job(run_dir, dataset, int(k), int(seed), rec.recipe, rec.overrides,
                                    method=rec.recipe.split("/")[0]))
    return jobs


def job_config(job: Job, method: str, data_root: str, arguments: Dict[str, Any], opts: Sequence[str]) -> Dict[str, Any]:
    """The resolved configuration of a job: recipe, protocol settings, the user's options and overrides."""
    settings = dict(arguments)
    settings.update({"DATASET.ROOT": data_root, "DATASET.NAME": job.dataset, "SEED": job.seed,
                     "DATASET.NUM_SHOTS": job.shots, "DATASET.SUBSAMPLE_CLASSES": job.subsample,
                     "OUTPUT_DIR": job.run_dir})
    for key, value in job.overrides:
        settings[key] = value
    return resolve_config([(recipe_path(job.recipe), load_recipe(job.recipe))], method=job.method or method,
                          arguments=settings, overrides=list(opts))


def check_data(jobs: Sequence[Job], data_root: str) -> None:
    """Every dataset of the grid has its folder and files under ``data_root``, checked before anything
    trains (the images themselves are checked when each run loads its dataset)."""
    from ..data.load import dataset_dir_of
    from ..data.registry import resolve

    from ..data.softcpt.sources import MULTITASK, SOURCES

    missing = []
    for name in dict.fromkeys(n for job in jobs for n in (job.dataset,) + tuple(d for d, _ in job.evals)):
        if name in MULTITASK:  # its sources' folders (each run checks their files when it loads them)
            absent = [SOURCES[c].folder for c in MULTITASK[name].sources
                      if not os.path.isdir(os.path.join(data_root, SOURCES[c].folder))]
            if absent:
                missing.append(f"{name}: missing {', '.join(os.path.join(data_root, a) for a in absent)} "
                               "(fastprompt data check ROOT says what each source needs)")
            continue
        spec = resolve(name)
        folder = dataset_dir_of(spec, data_root)
        needed = [spec.split_file] if spec.split_file else []
        needed += [os.path.join(spec.image_dir, "")] if spec.image_dir else []
        absent = [os.path.join(folder, rel) for rel in [""] + needed + list(spec.needs)
                  if not (os.path.isdir if rel.endswith("/") or not rel else os.path.isfile)(os.path.join(folder, rel))]
        if absent:
            missing.append(f"{name}: missing {absent[0]} (get: {spec.download})")
    if missing:
        raise ConfigError(f"--data {data_root}: {len(missing)} dataset(s) of the grid are not there; "
                          + "; ".join(missing) + ". Pass --datasets to run a subset (fastprompt data check ROOT "
                          "lists what is present)")


def _eval_fresh(path: str, run_dir: str) -> bool:
    prompts = os.path.join(run_dir, "prompt.safetensors")
    return os.path.isfile(path) and os.path.isfile(prompts) and os.path.getmtime(path) >= os.path.getmtime(prompts)


def _say(text: str) -> None:
    if distributed.is_launch_main():
        print(f"fastprompt run: {text}", file=sys.stderr, flush=True)


def _train_job(job: Job, cfg: Dict[str, Any], status: str, progress: bool, callbacks: Sequence[Callable]) -> str:
    if status == "finished":
        # the run's config.yaml must be the one asked for (train_run checks it and returns its result)
        train_run(cfg, job.run_dir, resume=True, progress=False)
        return "skipped (finished)"
    resume = status in ("started", "partial")
    no_config = resume and not os.path.isfile(os.path.join(job.run_dir, "config.yaml"))
    done = "trained" if not resume else ("restarted" if no_config else "resumed")
    _say(f"{'training' if done == 'trained' else done[:-2] + 'ing'} {job.run_dir}")
    train_run(cfg, job.run_dir, resume=resume and not no_config, overwrite=no_config, progress=progress,
              callbacks=callbacks)
    return done


def run_job(job: Job, cfg: Dict[str, Any], data_root: str, *, progress: bool = False,
            callbacks: Sequence[Callable] = (), device: str = "") -> str:
    """Train (or skip, or resume) one job, then its evaluations; returns what was done."""
    # every rank reads the status itself: no process group lives between runs, and nothing is written
    # into this job's directory before all ranks have joined its run's group
    status = run_status(job.run_dir)
    try:
        done = _train_job(job, cfg, status, progress, callbacks)
    except TrainError as exc:
        if "configuration differs" not in str(exc):
            raise
        raise TrainError(f"{exc}. This grid directory holds runs of other settings: pass another --output-dir "
                         "for these") from None
    if distributed.is_launch_main():
        for dataset, subsample in job.evals:
            out = eval_path(job.run_dir, dataset, subsample)
            if not _eval_fresh(out, job.run_dir):
                evaluate_checkpoint(job.run_dir, data_root, dataset, subsample, device=device, out=out)
    distributed.barrier()
    return done


def run_grid(protocol: str, method: str, data_root: str, output_dir: str, *, datasets: Optional[Sequence[str]] = None,
             seeds: Sequence[int] = (1, 2, 3), shots: Optional[Sequence[int]] = None,
             arguments: Optional[Dict[str, Any]] = None, opts: Sequence[str] = (), progress: bool = False,
             callbacks: Sequence[Callable] = (), variants: Optional[Sequence[str]] = None,
             config: Optional[str] = None) -> Dict[str, int]:
    """Run every job of the grid; returns how many were trained / resumed / skipped."""
    if not data_root or not os.path.isdir(data_root):
        raise ConfigError(f"--data {data_root!r}: no such folder (the folder holding the dataset folders)")
    jobs = plan(protocol, method, output_dir, datasets, seeds, shots, variants, config)
    arguments = dict(arguments or {})
    # every configuration resolves and every dataset is present before the first run starts
    configs = [job_config(job, method, data_root, arguments, opts) for job in jobs]
    check_data(jobs, data_root)
    counts: Dict[str, int] = {}
    # one grid per folder (each run also locks its own directory); under torchrun rank 0 holds it
    with FolderLock(output_dir, "fastprompt run") if distributed.is_launch_main() else contextlib.nullcontext():
        for i, (job, cfg) in enumerate(zip(jobs, configs), 1):
            _say(f"[{i}/{len(jobs)}] {method} {protocol}: {job.dataset}, {job.shots} shots, seed {job.seed} "
                 f"({job.recipe}{''.join(f' {k} {v}' for k, v in job.overrides) if job.method else ''})")
            done = run_job(job, cfg, data_root, progress=progress, callbacks=callbacks,
                           device=str(arguments.get("TRAIN.DEVICE", "")))
            counts[done] = counts.get(done, 0) + 1
    return counts


def read_json(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
