"""A run's start-up, shared by ``fastprompt train`` and ``fastprompt pretrain``: its processes, its
directory, its model, its records.

A run directory holds everything needed to understand and resume the run: ``config.yaml``
(resolved), ``env.txt``, ``log.txt``, ``metrics.jsonl``, ``prompt.safetensors`` +
``fastprompt_config.json`` (``from_pretrained``), ``state.pt`` (resumable), ``eval.json`` (the final
test), ``curves.png``, ``tensorboard/`` (and pretraining's own files, :data:`RUN_FILES`). A
directory that already holds a run is never silently reused: ``resume=True`` continues it (with
its own ``config.yaml``), ``overwrite=True`` deletes the run files (and nothing else) and starts
again.

:class:`RunStartup` is the sequence both runs follow, in the order DESIGN §7.2 asks (cheap checks
before expensive ones, nothing written before the run is known to be buildable)::

    with RunStartup(cfg, run_dir, resume=resume, overwrite=overwrite, progress=progress) as run:
        if run.finished is not None:          # --resume of a finished run: its eval.json
            return run.finished
        model, tokenizer, name, pretrained = run.build_model()
        ...                                   # the run's own data and checks
        run.seed()                            # SEED, then the learner draws its initial prompts
        ...                                   # the learner
        records = run.begin()                 # config.yaml + env.txt, log.txt / metrics.jsonl
        ...                                   # Trainer(records=records, ...)
        run.resume_into(trainer)
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any, Callable, Dict, Optional

import torch

from .. import distributed
from ..atomic_io import TEMP_PREFIX
from ..errors import ConfigError, TrainError
from ..folder_lock import FolderLock
from .build import build_model, set_random_seed
from .config import dump_yaml, flatten, read_yaml, resolve_config
from .key_audit import check_job
from .records import RunRecords
from .state import STATE_FILE, load_state, write_text
from .trainer import TrainSettings

__all__ = ["RUN_FILES", "RunStartup", "prepare_run_dir", "open_run", "write_run_header", "run_status", "run_settings"]

RUN_FILES = ("config.yaml", "env.txt", "log.txt", "metrics.jsonl", STATE_FILE, "prompt.safetensors",
             "fastprompt_config.json", "eval.json", "curves.png", "tensorboard",
             # fastprompt pretrain's own (fastprompt.pretrain.run)
             "pretrain.json", "classes.json", "classnames.txt", "transfer")
# Keys that may differ between a run's saved configuration and the one given with --resume (not
# DATALOADER.NUM_WORKERS: it names the original's worker streams, which decide the batches' augmentations).
_RESUME_FREE = ("OUTPUT_DIR", "RESUME", "DATASET.ROOT", "TRAIN.DEVICE", "TRAIN.TENSORBOARD",
                "TRAIN.PRINT_FREQ", "TRAIN.FEATURE_CACHE_DIR")


def run_status(run_dir: str) -> str:
    """``"absent"``, ``"empty"``, ``"started"`` (config only), ``"partial"`` (has a state), ``"finished"``."""
    if not os.path.isdir(run_dir):
        return "absent"
    if not any(os.path.exists(os.path.join(run_dir, f)) for f in RUN_FILES):
        return "empty"
    path = os.path.join(run_dir, STATE_FILE)
    if not os.path.isfile(path):
        return "started"
    try:
        return "finished" if load_state(path).get("finished") else "partial"
    except TrainError:
        return "partial"


def _check_writable(run_dir: str) -> None:
    try:
        os.makedirs(run_dir, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=run_dir, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise TrainError(f"cannot write to the output directory {run_dir}: {exc.strerror or exc}") from None


def _remove_temporaries(run_dir: str) -> None:
    """Delete the half-written files a killed run left (``.tmp-*`` of :func:`~fastprompt.atomic_io.atomic_write`;
    their targets are whole, old or new). Safe: the caller holds the run directory's lock."""
    for name in os.listdir(run_dir):
        if name.startswith(TEMP_PREFIX):
            try:
                os.unlink(os.path.join(run_dir, name))
            except OSError:
                pass


def prepare_run_dir(run_dir: str, resume: bool = False, overwrite: bool = False) -> Optional[Dict[str, Any]]:
    """Check/prepare ``run_dir``; returns the saved configuration when resuming one."""
    if resume and overwrite:
        raise TrainError("--resume and --overwrite exclude each other")
    status = run_status(run_dir)
    if status in ("absent", "empty"):
        if resume:
            raise TrainError(f"nothing to resume in {run_dir}: it holds no run (no config.yaml / {STATE_FILE})")
        _check_writable(run_dir)
        return None
    if overwrite:
        _check_writable(run_dir)
        _remove_temporaries(run_dir)
        for name in RUN_FILES:
            path = os.path.join(run_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.unlink(path)
        return None
    if not resume:
        what = "a finished run" if status == "finished" else "a run"
        present = ", ".join(f for f in RUN_FILES if os.path.exists(os.path.join(run_dir, f)))
        raise TrainError(f"{run_dir} already holds {what} ({present}); "
                         "pass --resume to continue it or --overwrite to delete it and start again")
    _check_writable(run_dir)
    _remove_temporaries(run_dir)
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        raise TrainError(f"cannot resume {run_dir}: its config.yaml is missing")
    return read_yaml(path)


def _check_same(saved: Dict[str, Any], given: Dict[str, Any], run_dir: str) -> None:
    from .defaults import base_defaults

    a, b = flatten(saved), flatten(given)
    # a key added after the run was written (ProGrad's LOSS section) is the same when it is at its default
    added = {k for k, v in flatten(base_defaults()).items() if k not in a and k in b and b[k] == v}
    diff = [k for k in sorted(set(a) | set(b) - added) if k not in _RESUME_FREE and a.get(k) != b.get(k)
            and not (isinstance(a.get(k), (list, tuple)) and list(a[k]) == list(b.get(k) or ()))]
    if diff:
        shown = "; ".join(f"{k}: run {a.get(k)!r}, now {b.get(k)!r}" for k in diff[:5])
        raise TrainError(f"--resume {run_dir}: the configuration differs from the run's config.yaml ({shown}"
                         f"{'; ...' if len(diff) > 5 else ''}); resume with the run's own settings or use --overwrite")


def open_run(cfg: Dict[str, Any], run_dir: str, rank: int, resume: bool, overwrite: bool):
    """``(cfg, saved, finished_result)``: the run directory checked and prepared (rank 0), the
    configuration to use (the run's own when resuming), and the finished run's ``eval.json``
    contents when ``resume`` finds nothing left to do (``None`` otherwise)."""
    if int(cfg["SEED"]) < 0:
        raise ConfigError("SEED must be >= 0 (pass --seed)")
    saved = None
    if rank == 0:
        saved = prepare_run_dir(run_dir, resume, overwrite)
        if saved is not None:
            _check_same(saved, cfg, run_dir)
            cfg = resolve_config([(os.path.join(run_dir, "config.yaml"), saved)],
                                 arguments={k: flatten(cfg)[k] for k in _RESUME_FREE if k in flatten(cfg)})
    cfg = distributed.broadcast_object(cfg)
    finished = os.path.join(run_dir, "eval.json")
    if resume and run_status(run_dir) == "finished" and os.path.isfile(finished):
        import json

        print(f"{run_dir} is finished; its test result is in {finished}", file=sys.stderr)
        with open(finished, encoding="utf-8") as f:
            return cfg, saved, json.load(f)
    return cfg, saved, None


def write_run_header(cfg: Dict[str, Any], run_dir: str) -> None:
    """``config.yaml`` (resolved) and ``env.txt`` of a new run (rank 0)."""
    from ..env import report

    write_text(os.path.join(run_dir, "config.yaml"), dump_yaml(cfg))
    write_text(os.path.join(run_dir, "env.txt"), "".join(f"{k}: {v}\n" for k, v in report()))


# Keys of the loop's settings and the smallest value each may take.
_AT_LEAST = {"OPTIM.MAX_EPOCH": 1, "DATALOADER.TRAIN_X.BATCH_SIZE": 1, "DATALOADER.TEST.BATCH_SIZE": 1,
             "TRAIN.GRAD_ACCUM_STEPS": 1, "TRAIN.PRINT_FREQ": 1, "TRAIN.EVAL_FREQ": 0, "TRAIN.CHECKPOINT_STEPS": 0,
             "TRAIN.MAX_STEPS": 0, "DATALOADER.NUM_WORKERS": 0}


def _checked_settings(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The loop's numbers from ``cfg``, each in its range, or a ``ConfigError`` naming the key."""
    flat = flatten(cfg)
    for key, least in _AT_LEAST.items():
        value = flat[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"{key} must be an integer >= {least}, got {value!r}")
    lr = flat["OPTIM.LR"]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:  # NaN fails too
        raise ConfigError(f"OPTIM.LR must be a positive number, got {lr!r}")
    return flat


def run_settings(cfg: Dict[str, Any], world: int, progress: bool) -> TrainSettings:
    """The loop's :class:`TrainSettings` from ``cfg`` for ``world`` processes, every value checked."""
    flat = _checked_settings(cfg)
    batch = flat["DATALOADER.TRAIN_X.BATCH_SIZE"]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = min(flat["DATALOADER.NUM_WORKERS"], max(cpus // world - 1, 0))  # more workers than CPUs only slow down
    if batch % world:
        raise ConfigError(f"DATALOADER.TRAIN_X.BATCH_SIZE {batch} is the global batch and must divide among "
                          f"{world} processes")
    try:
        return TrainSettings(max_epoch=flat["OPTIM.MAX_EPOCH"], batch_size=batch // world, seed=int(cfg["SEED"]),
                             test_batch_size=flat["DATALOADER.TEST.BATCH_SIZE"], num_workers=workers,
                             grad_accum_steps=flat["TRAIN.GRAD_ACCUM_STEPS"], print_freq=flat["TRAIN.PRINT_FREQ"],
                             eval_freq=flat["TRAIN.EVAL_FREQ"], checkpoint_steps=flat["TRAIN.CHECKPOINT_STEPS"],
                             max_steps=flat["TRAIN.MAX_STEPS"], final_model=flat["TEST.FINAL_MODEL"],
                             no_test=bool(flat["TEST.NO_TEST"]), tensorboard=bool(flat["TRAIN.TENSORBOARD"]),
                             progress=progress, max_unreadable=flat["DATASET.MAX_UNREADABLE"])
    except ValueError as exc:  # TEST.FINAL_MODEL, DATASET.MAX_UNREADABLE: TrainSettings checks them by key
        raise ConfigError(str(exc)) from None


class RunStartup:
    """The start-up of a run into ``run_dir`` (see the module docstring), as a context manager.

    On entry: the processes (``rank``, ``world``, ``device`` from torchrun's environment), the run
    directory locked for the life of the run (:class:`~fastprompt.folder_lock.FolderLock`, rank 0,
    taken before its first check so that two jobs cannot both find it free), checked and prepared
    (``cfg`` becomes the run's own when resuming), and the loop's :class:`TrainSettings` from
    ``cfg`` (``settings``). On exit: the records closed and the lock released; on a clean exit the
    process group shut down as well.

    Attributes:
        cfg: the configuration to use; ``saved``: the run's saved configuration (rank 0, resuming).
        finished: the finished run's ``eval.json`` contents when ``resume`` finds nothing to do.
        records: the run's :class:`RunRecords`, from :meth:`begin` on.
    """

    def __init__(self, cfg: Dict[str, Any], run_dir: str, *, resume: bool = False, overwrite: bool = False,
                 progress: bool = True, job: str = "fastprompt train"):
        self.run_dir, self.resume = run_dir, resume
        self.records: Optional[RunRecords] = None
        # keys only the other command reads are refused before anything is touched (job: "fastprompt train")
        check_job(cfg, flatten(cfg), job.split()[-1])
        self.rank, self.world, self.device = distributed.init_from_env(cfg["TRAIN"]["DEVICE"])
        self._lock = FolderLock(run_dir, job) if self.rank == 0 else None
        try:
            if self._lock is not None:
                try:
                    self._lock.acquire()
                except OSError as exc:  # not a folder, no permission, a read-only file system, ...
                    raise TrainError(f"cannot write to the output directory {run_dir}: {exc.strerror or exc}") from None
            self.cfg, self.saved, self.finished = open_run(cfg, run_dir, self.rank, resume, overwrite)
            self.settings = run_settings(self.cfg, self.world, progress) if self.finished is None else None
        except BaseException:
            self._close()
            raise

    def __enter__(self) -> "RunStartup":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is KeyboardInterrupt and self.records is not None:
            self.records.log(f"interrupted; the last checkpoint in {self.run_dir} is kept: rerun the same command "
                             "with --resume to go on from it")
        self._close()
        if exc_type is None:
            distributed.shutdown()

    def _close(self) -> None:
        if self.records is not None:
            self.records.close()
        if self._lock is not None:
            self._lock.release()

    @property
    def resuming(self) -> bool:
        """The run continues a saved one (known on rank 0, which holds the run's files)."""
        return self.saved is not None

    def build_model(self):
        """``(model, tokenizer, model_name, pretrained)`` of ``MODEL.BACKBONE`` on the run's device."""
        return build_model(self.cfg, self.device)

    def seed(self) -> None:
        """Seed the global RNGs from ``SEED``; the learner's initial prompts are drawn next."""
        set_random_seed(int(self.cfg["SEED"]))

    def begin(self, write_files: Optional[Callable[[str], None]] = None) -> RunRecords:
        """Everything is built and checked (data, model, learner): write a new run's ``config.yaml``
        and ``env.txt`` (and what ``write_files(run_dir)`` adds) on rank 0, wait for every rank and
        open the run's records. Nothing is written before, so a run that fails to start leaves its
        directory as it was and the corrected command runs in it."""
        if self.rank == 0 and not self.resuming:
            write_run_header(self.cfg, self.run_dir)
            if write_files is not None:
                write_files(self.run_dir)
        distributed.barrier()
        main = self.rank == 0
        self.records = RunRecords(self.run_dir, enabled=main, tensorboard=self.settings.tensorboard, echo=main)
        return self.records

    def resume_into(self, trainer) -> None:
        """Load the run's ``state.pt`` into ``trainer`` when resuming a run that has one."""
        state_path = os.path.join(self.run_dir, STATE_FILE)
        if self.resume and os.path.isfile(state_path):
            trainer.resume(state_path)
