"""``fastprompt pretrain``: POMP / RPP prompt pretraining on ImageNet-21K, then zero-shot transfer.

POMP (Ren et al., NeurIPS 2023; amazon-science/prompt-pretraining ``scripts/pomp/main.sh``) trains
prompts on a 16-shot subset of ImageNet-21K-P (winter-21, 10,450 classes) and, because encoding
every class name each step did not fit in GPU memory, scores each image against ``K = 1000``
sampled classes (local contrast). fastprompt's prefix-shared, EOT-truncated text path makes the
exact full-vocabulary step affordable, so a pretraining run here:

1. reads the data: an ImageNet-21K-P folder tree (``DATASET.ROOT``; POMP's few-shot subset drawn
   from ``SEED``, class universe ``DATASET.UNIVERSE``) or a WebDataset shard set written by
   ``fastprompt data pack`` (``DATASET.SHARDS``, streamed with an exact resumable position);
   the class table used is written into the run (``classes.json``, ``classnames.txt``);
2. chooses the objective (``TRAIN.OBJECTIVE``): ``auto`` estimates the memory of the
   full-vocabulary step from the class count, batch and backbone before the first step
   (:mod:`fastprompt.pretrain.step_memory`) and uses it when it fits, else POMP's local contrast,
   logging why; ``full`` / ``local`` force either. The choice and its reason are recorded in
   ``pretrain.json`` and kept on resume. Under torchrun the full-vocabulary text side is split
   by classes over the ranks (:mod:`fastprompt.learners.class_sharding`);
3. trains with the :class:`~fastprompt.train.trainer.Trainer` (checkpoints every
   ``TRAIN.CHECKPOINT_STEPS``, images/s in the log, resumable at any step): a folder tree on the
   original's batches, augmentations and negative-class draws when the learner starts from the
   original's prompts (:func:`fastprompt.train.batches.training_batches`), shards in their
   stream's own order;
4. tests the prompts zero-shot on ImageNet-1K, the cross-dataset targets and the ImageNet variants
   found under ``TEST.TRANSFER_ROOT`` (:mod:`fastprompt.pretrain.transfer`).

RPP's teacher (the frozen zero-shot CLIP) encodes all classes once, cached on disk
(``TRAINER.RPP.TEACHER_CACHE``, on for pretraining); its soft labels cover the same columns as
the student's in both objectives.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Callable, Dict, List, Sequence

import torch

from .. import distributed
from ..errors import ConfigError, DataError, TrainError
from ..train.batches import training_batches
from ..train.build import build_learner, build_transforms
from ..train.precision import resolve_precision
from ..train.schedule import schedule_from_config
from ..train.startup import RunStartup
from ..train.state import write_json
from ..train.trainer import Trainer

__all__ = ["pretrain_run", "PRETRAIN_METHODS", "OBJECTIVES", "PRETRAIN_FILE", "POMP_SHOTS", "set_objective"]

PRETRAIN_METHODS = ("pomp", "rpp")
OBJECTIVES = ("auto", "full", "local")
PRETRAIN_FILE = "pretrain.json"
POMP_SHOTS = 16  # images per class of POMP's ImageNet-21K subset (scripts/pomp/main.sh)


@dataclasses.dataclass
class PretrainData:
    """What a pretraining run reads: the class table, the training source, optional val/test."""

    table: Any                        # fastprompt.data.ClassTable
    train: Any                        # ImageDataset (folder tree) or ShardDataset (shards)
    batches: Any = None               # ShardBatchStream for shards; None: the trainer's seeded order
    val: Any = None
    test: Any = None
    description: str = ""
    items: Any = None                 # the tree's training items (a map-style dataset), None for shards
    fewshot_drawn: bool = False       # the tree's few-shot subset was drawn (not read from the original's pickle)

    @property
    def classnames(self) -> List[str]:
        return list(self.table.names)


def _load_data(cfg: Dict[str, Any], train_tf, test_tf, batch: int, rank: int, world: int, workers: int,
               device: torch.device) -> PretrainData:
    from ..data.imagenet21k import load_imagenet21k
    from ..data.images import ImageDataset

    ds, seed = cfg["DATASET"], int(cfg["SEED"])
    if ds["SHARDS"]:
        from ..data.shard_stream import ShardBatchStream
        from ..data.shards import ShardDataset

        data = ShardDataset(ds["SHARDS"], train_tf, shuffle_shards=True,
                            shuffle_buffer=int(cfg["DATALOADER"]["SHUFFLE_BUFFER"]), seed=seed)
        if ds["UNIVERSE"] not in ("folders", data.class_table.universe):
            raise ConfigError(f"DATASET.UNIVERSE {ds['UNIVERSE']!r}: the shards at {ds['SHARDS']} were packed with the "
                              f"{data.class_table.universe!r} universe; drop the setting or repack them")
        stream = ShardBatchStream(data, batch, num_workers=workers, seed=seed, rank=rank, world=world,
                                  pin_memory=device.type == "cuda")
        total = f"{data.num_samples} samples" if data.num_samples is not None else "samples"
        return PretrainData(data.class_table, data, stream,
                            description=f"shards {ds['SHARDS']} ({len(data.shards)} shards, {total})")
    if not ds["ROOT"]:
        raise ConfigError("no data: pass --data ROOT (an ImageNet-21K-P tree) or --shards DIR (fastprompt data pack)")
    shots = _shots(cfg)
    d = load_imagenet21k(ds["ROOT"], shots=shots, seed=seed, universe=ds["UNIVERSE"])
    test = ImageDataset(d.test, test_tf) if d.test else None
    return PretrainData(d.class_table, ImageDataset(d.train, train_tf), None, test, test,
                        description=f"{d.root} ({len(d.train)} training images, {shots or 'all'} shots, "
                                    f"subset {d.fewshot_source})", items=d.train,
                        fewshot_drawn=d.fewshot_source == "sampled")


def _shots(cfg: Dict[str, Any]) -> int:
    """Images per class of the training subset: ``DATASET.NUM_SHOTS``, POMP's 16 when unset (Dassl's -1)."""
    shots = int(cfg["DATASET"]["NUM_SHOTS"])
    return POMP_SHOTS if shots < 0 else shots


def set_objective(learner, mode: str) -> None:
    """Switch a POMP or RPP learner to the full-vocabulary softmax (``"full"``) or POMP's local contrast.

    POMP: ``objective.mode`` (and ``config.mode``, saved with the prompts). RPP: ``"local"`` is its
    ``pomp=True`` setting (a :class:`~fastprompt.learners.pomp.objective.POMPObjective` with the
    config's ``K`` and correction), ``"full"`` the plain cross-entropy over all classes.
    """
    from ..learners.pomp.objective import POMPObjective

    if mode not in ("full", "local"):
        raise ValueError(f"objective must be 'full' or 'local', got {mode!r}")
    if learner.method == "pomp":
        learner.objective.mode = learner.config.mode = mode
    elif learner.method == "rpp":
        cfg = learner.config
        cfg.pomp = mode == "local"
        learner.objective = (POMPObjective(cfg.pomp_num_sampled_classes, mode="local",
                                           local_correction=cfg.pomp_local_correction, log_base=cfg.pomp_log_base,
                                           seed=cfg.pomp_seed) if cfg.pomp else None)
    else:
        raise ValueError(f"{learner.method} has no pretraining objective (pretraining: {', '.join(PRETRAIN_METHODS)})")


def _classes_sha(names: Sequence[str]) -> str:
    return hashlib.sha256("\0".join(names).encode("utf-8")).hexdigest()


def _choose(cfg, learner, images_per_step: int, device, precision: str, world: int, run_dir: str, resuming: bool):
    """``(mode, reason, record)``: the objective of this run (the saved one when resuming)."""
    path = os.path.join(run_dir, PRETRAIN_FILE)
    if resuming and os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        return saved["objective"], f"{saved['reason']} (chosen when the run started)", saved
    from .step_memory import choose_objective_mode

    wanted = str(cfg["TRAIN"]["OBJECTIVE"])
    mode, reason, estimate = choose_objective_mode(learner, images_per_step, device, precision,
                                                   force=None if wanted == "auto" else wanted, world=world)
    return mode, reason, {"objective": mode, "requested": wanted, "reason": reason,
                          "estimate": estimate.as_dict() if hasattr(estimate, "as_dict") else None}


def pretrain_run(cfg: Dict[str, Any], run_dir: str, *, resume: bool = False, overwrite: bool = False,
                 callbacks: Sequence[Callable] = (), progress: bool = True) -> Dict[str, Any]:
    """Pretrain prompts as ``cfg`` says into ``run_dir``, then test transfer; returns
    ``{"test": ImageNet-21K val metrics or None, "transfer": {dataset: metrics}, "objective": ...}``."""
    method = cfg["METHOD"]
    if method not in PRETRAIN_METHODS:
        raise ConfigError(f"fastprompt pretrain trains {' or '.join(PRETRAIN_METHODS)} (ImageNet-21K prompt "
                          f"pretraining), not {method!r}; use fastprompt train for the other learners")
    if str(cfg["TRAIN"]["OBJECTIVE"]) not in OBJECTIVES:
        raise ConfigError(f"TRAIN.OBJECTIVE must be one of {OBJECTIVES}, got {cfg['TRAIN']['OBJECTIVE']!r}")
    with RunStartup(cfg, run_dir, resume=resume, overwrite=overwrite, progress=progress,
                    job="fastprompt pretrain") as run:
        if run.finished is not None:
            return run.finished
        cfg, device, settings, rank, world = run.cfg, run.device, run.settings, run.rank, run.world
        model, tokenizer, model_name, pretrained = run.build_model()
        train_tf, test_tf = build_transforms(cfg, model)
        data = _load_data(cfg, train_tf, test_tf, settings.batch_size, rank, world, settings.num_workers, device)
        section = cfg["TRAINER"][method.upper()]
        precision, why = resolve_precision(cfg["TRAIN"]["PRECISION"], section.get("PREC"), device)
        run.seed()
        learner = build_learner(cfg, model, tokenizer, data.classnames, "imagenet21k", None, model_name,
                                pretrained).to(device)
        original_g = torch.get_rng_state()  # G where the original's build_model leaves it
        records = run.begin(write_files=data.table.write)
        views = int(cfg["DATALOADER"]["K_TRANSFORMS"])
        decision = None
        if rank == 0:  # one decision for every rank (another rank's free memory, or a file it cannot see, must
            # not give it another objective)
            decision = _choose(cfg, learner, settings.batch_size * views, device, precision, world, run_dir,
                               run.resuming)
        mode, reason, record = distributed.broadcast_object(decision)
        set_objective(learner, mode)
        if world > 1 and mode == "full":
            learner.shard_classes = True
        if rank == 0 and not run.resuming:
            write_json(os.path.join(run_dir, PRETRAIN_FILE),
                       {**record, "method": method, "num_classes": len(data.classnames),
                        "universe": data.table.universe, "data": data.description, "world_size": world})
        distributed.barrier()

        identity = {"method": method, "model": model_name, "pretrained": pretrained, "seed": int(cfg["SEED"]),
                    "num_classes": len(data.classnames), "classes_sha256": _classes_sha(data.classnames),
                    "objective": mode}
        order = "the shard stream's own (seeded shuffle buffer, per-worker positions in the state)"
        if data.items is not None:  # a tree read as a map-style dataset: the original's batches (after the
            # objective is chosen: POMP's local contrast draws its negatives on the original's stream)
            try:
                data.batches, order = training_batches(cfg, learner, data.items, train_tf, settings, original_g,
                                                       fewshot_drawn=data.fewshot_drawn, rank=rank, world=world)
            except (ConfigError, DataError) as exc:
                records.log(f"error: {exc}")
                raise
        # a stream counts its unreadable samples exactly at the position it has given out (and across a resume)
        train = data.batches if data.batches is not None else data.train
        trainer = Trainer(learner, train, settings, cfg["OPTIM"], schedule_from_config(cfg["OPTIM"]),
                          precision=precision, device=device, run_dir=run_dir, val_data=data.val,
                          test_data=data.test, n_classes=len(data.classnames), identity=identity,
                          callbacks=callbacks, records=records, batches=data.batches)
        records.log(f"{method} pretraining on {data.description}: {len(data.classnames)} classes "
                    f"({data.table.universe} universe), backbone {model_name} ({pretrained or 'random weights'}), "
                    f"seed {cfg['SEED']}, {world} process(es) on {device}, precision {precision} ({why})")
        split = " (text classes split over the ranks)" if world > 1 and mode == "full" else ""
        records.log(f"objective: {mode} — {reason}{split}")
        records.log(f"initial prompts: {learner.initial_prompts}")
        records.log(f"training order: {order}")
        run.resume_into(trainer)
        test = trainer.fit()
        transfer = _transfer(cfg, trainer, learner, test_tf, device, run_dir, method)
    return {"test": test, "transfer": transfer, "objective": mode}


def _transfer(cfg, trainer: Trainer, learner, test_tf, device, run_dir: str, method: str) -> Dict[str, Any]:
    root = cfg["TEST"]["TRANSFER_ROOT"]
    if not root:
        trainer.records.log("transfer: not tested (set TEST.TRANSFER_ROOT or --transfer-data to the folder holding "
                            "ImageNet and the cross-dataset / variant test sets)")
        return {}
    from ..protocols.report import write_tables
    from .transfer import TRANSFER_DIR, transfer_evaluation, transfer_tables

    if not os.path.isdir(root):
        raise TrainError(f"TEST.TRANSFER_ROOT {root} is not a folder")
    results = transfer_evaluation(learner, root, list(cfg["TEST"]["TRANSFER_DATASETS"]), test_transform=test_tf,
                                  device=device, batch_size=int(cfg["DATALOADER"]["TEST"]["BATCH_SIZE"]),
                                  num_workers=trainer.settings.num_workers, autocast=trainer.precision.autocast,
                                  seed=int(cfg["SEED"]), run_dir=run_dir, log=trainer.records.log)
    if distributed.is_main() and results:
        tables = transfer_tables(method, _shots(cfg), results, int(cfg["SEED"]))
        out = write_tables(tables, os.path.join(run_dir, TRANSFER_DIR))
        write_json(os.path.join(run_dir, TRANSFER_DIR, "transfer.json"), results)
        for note in out["notes"]:
            trainer.records.log(f"transfer: {note}")
        trainer.records.log(f"transfer: tables in {os.path.join(run_dir, TRANSFER_DIR)}")
    return results
