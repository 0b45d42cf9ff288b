"""A run from a resolved configuration: its directory, training, and evaluation of a checkpoint.

A run directory holds everything needed to understand and resume the run:
``config.yaml`` (resolved), ``env.txt``, ``log.txt``, ``metrics.jsonl``, ``prompt.safetensors`` +
``fastprompt_config.json`` (``from_pretrained``), ``state.pt`` (resumable), ``eval.json`` (the final
test), ``curves.png``, ``tensorboard/``. A directory that already holds a run is never silently
reused: ``resume=True`` continues it (with its own ``config.yaml``), ``overwrite=True`` deletes the
run files (and nothing else) and starts again.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any, Callable, Dict, Optional, Sequence

import torch

from .. import distributed
from .build import build_learner, build_model, load_data, set_random_seed
from .config import dump_yaml, flatten, read_yaml, resolve_config
from ..errors import ConfigError, TrainError
from .feature_setup import build_feature_cache, feature_settings, training_data
from .precision import Precision, resolve_precision
from .schedule import schedule_from_config
from .state import STATE_FILE, load_state, write_json, write_text
from .trainer import Trainer, TrainSettings

__all__ = ["RUN_FILES", "prepare_run_dir", "open_run", "write_run_header", "train_run", "evaluate_checkpoint",
           "run_status", "run_settings"]

RUN_FILES = ("config.yaml", "env.txt", "log.txt", "metrics.jsonl", STATE_FILE, "prompt.safetensors",
             "fastprompt_config.json", "eval.json", "curves.png", "tensorboard",
             # fastprompt pretrain's own (fastprompt.pretrain.run)
             "pretrain.json", "classes.json", "classnames.txt", "transfer")
# Keys that may differ between a run's saved configuration and the one given with --resume.
_RESUME_FREE = ("OUTPUT_DIR", "RESUME", "DATASET.ROOT", "DATALOADER.NUM_WORKERS", "TRAIN.DEVICE", "TRAIN.TENSORBOARD",
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
        for name in RUN_FILES:
            path = os.path.join(run_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.unlink(path)
        return None
    if not resume:
        what = "a finished run" if status == "finished" else "a run"
        raise TrainError(f"{run_dir} already holds {what} ({', '.join(f for f in RUN_FILES if os.path.exists(os.path.join(run_dir, f)))}); "
                         "pass --resume to continue it or --overwrite to delete it and start again")
    _check_writable(run_dir)
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        raise TrainError(f"cannot resume {run_dir}: its config.yaml is missing")
    return read_yaml(path)


def _check_same(saved: Dict[str, Any], given: Dict[str, Any], run_dir: str) -> None:
    a, b = flatten(saved), flatten(given)
    diff = [k for k in sorted(set(a) | set(b)) if k not in _RESUME_FREE and a.get(k) != b.get(k)
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


def run_settings(cfg: Dict[str, Any], world: int, progress: bool) -> TrainSettings:
    t, dl = cfg["TRAIN"], cfg["DATALOADER"]
    batch = int(dl["TRAIN_X"]["BATCH_SIZE"])
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = min(int(dl["NUM_WORKERS"]), max(cpus // world - 1, 0))  # more workers than CPUs only slow down
    if batch % world:
        raise ConfigError(f"DATALOADER.TRAIN_X.BATCH_SIZE {batch} is the global batch and must divide among "
                          f"{world} processes")
    return TrainSettings(max_epoch=int(cfg["OPTIM"]["MAX_EPOCH"]), batch_size=batch // world, seed=int(cfg["SEED"]),
                         test_batch_size=int(dl["TEST"]["BATCH_SIZE"]), num_workers=workers,
                         grad_accum_steps=int(t["GRAD_ACCUM_STEPS"]), print_freq=int(t["PRINT_FREQ"]),
                         eval_freq=int(t["EVAL_FREQ"]), checkpoint_steps=int(t["CHECKPOINT_STEPS"]),
                         max_steps=int(t["MAX_STEPS"]), final_model=cfg["TEST"]["FINAL_MODEL"],
                         no_test=bool(cfg["TEST"]["NO_TEST"]), tensorboard=bool(t["TENSORBOARD"]), progress=progress)


def train_run(cfg: Dict[str, Any], run_dir: str, *, resume: bool = False, overwrite: bool = False,
              callbacks: Sequence[Callable] = (), progress: bool = True) -> Optional[Dict[str, Any]]:
    """Train the configured learner into ``run_dir`` and test it; returns the test metrics."""
    from ..data.images import ImageDataset
    from ..data.registry import resolve

    rank, world, device = distributed.init_from_env(cfg["TRAIN"]["DEVICE"])
    cfg, saved, done = open_run(cfg, run_dir, rank, resume, overwrite)
    if done is not None:
        distributed.shutdown()
        return done

    # model, data and precision first: a bad name, data root or precision fails before anything is written
    model, tokenizer, model_name, pretrained = build_model(cfg, device)
    dataset, train_tf, test_tf = load_data(cfg, model)
    precision, why = resolve_precision(cfg["TRAIN"]["PRECISION"], cfg["TRAINER"][_section(cfg)].get("PREC"), device)
    features = feature_settings(cfg, device)
    if rank == 0 and saved is None:
        write_run_header(cfg, run_dir)
    distributed.barrier()
    spec = resolve(cfg["DATASET"]["NAME"])
    set_random_seed(int(cfg["SEED"]))
    learner = build_learner(cfg, model, tokenizer, dataset.classnames, dataset.name, spec.cls if spec else None,
                            model_name, pretrained).to(device)
    aggregator = None
    if cfg["METHOD"] == "promptsrc":
        from .gpa import GaussianPromptAggregation

        aggregator = GaussianPromptAggregation.from_learner(learner, epochs=int(cfg["OPTIM"]["MAX_EPOCH"]))
    identity = {"method": cfg["METHOD"], "model": model_name, "pretrained": pretrained,
                "classnames": list(dataset.classnames), "seed": int(cfg["SEED"])}
    settings = run_settings(cfg, world, progress)
    train_data = training_data(dataset.train, train_tf, features, settings.seed)
    cache = build_feature_cache(features, learner, device, Precision(precision, device).autocast,
                                settings.test_batch_size, settings.num_workers)
    batches = (cache.train_batches(train_data, settings.batch_size, settings.seed, rank, world)
               if features.mode == "all" else None)
    trainer = Trainer(learner, train_data, settings, cfg["OPTIM"], schedule_from_config(cfg["OPTIM"]),
                      precision=precision, device=device, run_dir=run_dir,
                      val_data=ImageDataset(dataset.val, test_tf) if dataset.val else None,
                      test_data=ImageDataset(dataset.test, test_tf), n_classes=len(dataset.classnames),
                      identity=identity, aggregator=aggregator, callbacks=callbacks, batches=batches,
                      feature_cache=cache)
    if cache is not None:
        cache.log = trainer.records.log
    try:
        rec = trainer.records
        rec.log(f"{cfg['METHOD']} on {dataset.name} ({len(dataset.classnames)} classes, {len(dataset.train)} training "
                f"images, shots {dataset.shots}, subsample {dataset.subsample}), backbone {model_name} "
                f"({pretrained or 'random weights'}), seed {cfg['SEED']}, {world} process(es) on {device}, precision "
                f"{precision} ({why})")
        if features.mode or features.views or features.precision != "fp32":
            kept = f"{features.mode} ({features.folder or 'in memory'})" if features.mode else "off"
            rec.log(f"image side: feature cache {kept}, {features.views or 'no'} fixed views per training image, "
                    f"frozen image tower in {features.precision}")
        state_path = os.path.join(run_dir, STATE_FILE)
        if resume and os.path.isfile(state_path):
            trainer.resume(state_path)
        result = trainer.fit()
    finally:
        trainer.records.close()
    distributed.shutdown()
    return result


def _section(cfg: Dict[str, Any]) -> str:
    from .methods import METHODS

    return METHODS[cfg["METHOD"]].section


def evaluate_checkpoint(checkpoint: str, data_root: str, dataset_name: str, subsample: str = "all",
                        batch_size: Optional[int] = None, num_workers: int = 0, device: str = "",
                        out: Optional[str] = None) -> Dict[str, Any]:
    """Accuracy and macro-F1 of the prompts in ``checkpoint`` (a run directory) on a dataset's test split."""
    from ..data import load_dataset
    from ..data.images import ImageDataset
    from ..learners.base import PromptLearner
    from ..learners.checkpoint import read_prompt_checkpoint
    from .evaluate import evaluate
    from torch.utils.data import DataLoader
    from ..data.images import skip_collate

    cfg_path = os.path.join(checkpoint, "config.yaml")
    if not os.path.isfile(cfg_path):
        raise TrainError(f"{checkpoint} is not a fastprompt run directory (no config.yaml)")
    cfg = resolve_config([(cfg_path, read_yaml(cfg_path))])
    saved, _ = read_prompt_checkpoint(checkpoint)
    if saved.get("method") != cfg["METHOD"]:
        raise TrainError(f"{checkpoint}: prompt.safetensors holds {saved.get('method')!r} prompts but config.yaml "
                         f"is a {cfg['METHOD']!r} run")
    dev = torch.device(device) if device else (torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    model, _, _, _ = build_model(cfg, dev)
    learner = PromptLearner.from_pretrained(checkpoint, model=model)
    data = load_dataset(dataset_name, data_root, shots=0, seed=max(int(cfg["SEED"]), 0), subsample=subsample)
    from ..data.transforms import transforms_for_model

    _, test_tf = transforms_for_model(model)
    if cfg["METHOD"] == "softcpt":  # the dataset is the task: its name generates the context
        learner.set_tasks({data.name: data.classnames})
    else:
        learner.set_classnames(data.classnames)
    learner = learner.to(dev)
    loader = DataLoader(ImageDataset(data.test, test_tf), batch_size=batch_size or int(cfg["DATALOADER"]["TEST"]["BATCH_SIZE"]),
                        shuffle=False, num_workers=num_workers, collate_fn=skip_collate)
    metrics = evaluate(learner, loader, dev, len(data.classnames))
    result = {"checkpoint": os.path.abspath(checkpoint), "method": cfg["METHOD"], "dataset": data.name,
              "subsample": subsample, "split": "test", **metrics}
    out = out or os.path.join(checkpoint, f"eval_{data.name}_{subsample}.json")
    write_json(out, result)
    result["written_to"] = out
    return result
