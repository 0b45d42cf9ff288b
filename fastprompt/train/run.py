"""A training run from a resolved configuration (``fastprompt train``); the evaluation of a
finished run's prompts on a dataset (``fastprompt eval``) is :mod:`.evaluate`'s, named here too.

The run's start-up (processes, run directory, resume, model, records) is
:class:`~fastprompt.train.startup.RunStartup`, shared with ``fastprompt pretrain``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

import torch

from .batches import training_batches
from .build import build_learner, build_transforms, load_split
from .evaluate import evaluate_checkpoint
from .feature_setup import build_feature_cache, feature_settings, training_data
from .precision import Precision, resolve_precision
from .schedule import schedule_from_config
from .startup import RunStartup
from .task_eval import TaskSlices
from .trainer import Trainer

__all__ = ["train_run", "evaluate_checkpoint"]

def train_run(cfg: Dict[str, Any], run_dir: str, *, resume: bool = False, overwrite: bool = False,
              callbacks: Sequence[Callable] = (), progress: bool = True) -> Optional[Dict[str, Any]]:
    """Train the configured learner into ``run_dir`` and test it; returns the test metrics."""
    from ..data.images import ImageDataset
    from ..data.registry import resolve

    with RunStartup(cfg, run_dir, resume=resume, overwrite=overwrite, progress=progress) as run:
        if run.finished is not None:
            return run.finished
        cfg, device, settings = run.cfg, run.device, run.settings
        # data, model and precision first, cheapest first: a bad dataset name, root or class list fails before
        # the model is built (or downloaded), and everything before anything is written
        dataset = load_split(cfg)
        model, tokenizer, model_name, pretrained = run.build_model()
        train_tf, test_tf = build_transforms(cfg, model)
        precision, why = resolve_precision(cfg["TRAIN"]["PRECISION"], cfg["TRAINER"][_section(cfg)].get("PREC"), device)
        features = feature_settings(cfg, device)
        # a multi-task set (SoftCPT's general10, ...): joint labels, the learner takes its tasks, each image is
        # evaluated within its own task (fastprompt.data.softcpt.items.JointDataset); it has no one dataset class
        multitask = getattr(dataset, "multitask", None) is not None
        spec = None if multitask else resolve(cfg["DATASET"]["NAME"])
        run.seed()
        learner = build_learner(cfg, model, tokenizer, dataset.classnames, dataset.name, spec.cls if spec else None,
                                model_name, pretrained, tasks=dataset.task_pairs() if multitask else None).to(device)
        # G where the original's build_model leaves it: its loader draws from here on
        original_g = torch.get_rng_state()
        batches, order = training_batches(cfg, learner, dataset.train, train_tf, settings, original_g,
                                          fewshot_drawn=dataset.original_main_draw if multitask
                                          else dataset.fewshot_source == "sampled", rank=run.rank,
                                          world=run.world, feature_mode=features.mode, fixed_views=features.views)
        aggregator = None
        if cfg["METHOD"] == "promptsrc":
            from .gpa import GaussianPromptAggregation

            aggregator = GaussianPromptAggregation.from_learner(learner, epochs=int(cfg["OPTIM"]["MAX_EPOCH"]))
        records = run.begin()
        identity = {"method": cfg["METHOD"], "model": model_name, "pretrained": pretrained,
                    "classnames": list(dataset.classnames), "seed": int(cfg["SEED"])}
        if multitask:
            identity["tasks"] = [name for name, _ in dataset.task_pairs()]
        train_data = training_data(dataset.train, train_tf, features, settings.seed)
        cache = build_feature_cache(features, learner, device, Precision(precision, device).autocast,
                                    settings.test_batch_size, settings.num_workers, log=records.log)
        if features.mode == "all":
            batches = cache.train_batches(train_data, settings.batch_size, settings.seed, run.rank, run.world)
        trainer = Trainer(learner, train_data, settings, cfg["OPTIM"], schedule_from_config(cfg["OPTIM"]),
                          precision=precision, device=device, run_dir=run_dir,
                          val_data=ImageDataset(dataset.val, test_tf) if dataset.val else None,
                          test_data=ImageDataset(dataset.test, test_tf), n_classes=len(dataset.classnames),
                          identity=identity, aggregator=aggregator, callbacks=callbacks, records=records,
                          batches=batches, feature_cache=cache,
                          tasks=TaskSlices.of(dataset) if multitask else None)
        tasks = f"{len(dataset.task_pairs())} tasks, " if multitask else ""
        records.log(f"{cfg['METHOD']} on {dataset.name} ({tasks}{len(dataset.classnames)} classes, {len(dataset.train)} "
                    f"training images, shots {dataset.shots}, subsample {dataset.subsample}), backbone {model_name} "
                    f"({pretrained or 'random weights'}), seed {cfg['SEED']}, {run.world} process(es) on {device}, "
                    f"precision {precision} ({why})")
        for note in dataset.notes:
            records.log(f"data: {note}")
        records.log(f"initial prompts: {learner.initial_prompts}")
        if learner.initial_prompts == "original" and cfg["METHOD"] == "pre" and learner.config.separate:
            # minhanh151/PRE keeps the per-token encoders in a plain dict: its optimizer never sees them
            records.log("note: the original PRE never trains its per-token encoders (TRAINER.PRE.SEPARATE True), "
                        "fastprompt does: this run leaves the original's path after its first step")
        records.log(f"training order: {order}")
        if features.mode or features.views or features.precision != "fp32":
            kept = f"{features.mode} ({features.folder or 'in memory'})" if features.mode else "off"
            records.log(f"image side: feature cache {kept}, {features.views or 'no'} fixed views per training image, "
                        f"frozen image tower in {features.precision}")
        run.resume_into(trainer)
        return trainer.fit()


def _section(cfg: Dict[str, Any]) -> str:
    from .methods import METHODS

    return METHODS[cfg["METHOD"]].section
