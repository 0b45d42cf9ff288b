"""A training run from a resolved configuration (``fastprompt train``), and the evaluation of a
finished run's prompts on a dataset (``fastprompt eval``).

The run's start-up (processes, run directory, resume, model, records) is
:class:`~fastprompt.train.startup.RunStartup`, shared with ``fastprompt pretrain``.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Dict, Optional, Sequence

import torch

from ..distributed import checked_device
from ..errors import TrainError
from ..folder_lock import FolderLock
from .build import build_learner, build_model, build_transforms, load_split
from .config import read_yaml, resolve_config
from .feature_setup import build_feature_cache, feature_settings, training_data
from .precision import Precision, resolve_precision
from .schedule import schedule_from_config
from .startup import RunStartup
from .state import write_json
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
        spec = resolve(cfg["DATASET"]["NAME"])
        run.seed()
        learner = build_learner(cfg, model, tokenizer, dataset.classnames, dataset.name, spec.cls if spec else None,
                                model_name, pretrained).to(device)
        aggregator = None
        if cfg["METHOD"] == "promptsrc":
            from .gpa import GaussianPromptAggregation

            aggregator = GaussianPromptAggregation.from_learner(learner, epochs=int(cfg["OPTIM"]["MAX_EPOCH"]))
        records = run.begin()
        identity = {"method": cfg["METHOD"], "model": model_name, "pretrained": pretrained,
                    "classnames": list(dataset.classnames), "seed": int(cfg["SEED"])}
        train_data = training_data(dataset.train, train_tf, features, settings.seed)
        cache = build_feature_cache(features, learner, device, Precision(precision, device).autocast,
                                    settings.test_batch_size, settings.num_workers, log=records.log)
        batches = (cache.train_batches(train_data, settings.batch_size, settings.seed, run.rank, run.world)
                   if features.mode == "all" else None)
        trainer = Trainer(learner, train_data, settings, cfg["OPTIM"], schedule_from_config(cfg["OPTIM"]),
                          precision=precision, device=device, run_dir=run_dir,
                          val_data=ImageDataset(dataset.val, test_tf) if dataset.val else None,
                          test_data=ImageDataset(dataset.test, test_tf), n_classes=len(dataset.classnames),
                          identity=identity, aggregator=aggregator, callbacks=callbacks, records=records,
                          batches=batches, feature_cache=cache)
        records.log(f"{cfg['METHOD']} on {dataset.name} ({len(dataset.classnames)} classes, {len(dataset.train)} "
                    f"training images, shots {dataset.shots}, subsample {dataset.subsample}), backbone {model_name} "
                    f"({pretrained or 'random weights'}), seed {cfg['SEED']}, {run.world} process(es) on {device}, "
                    f"precision {precision} ({why})")
        for note in dataset.notes:
            records.log(f"data: {note}")
        records.log(f"initial prompts: {learner.initial_prompts}")
        if features.mode or features.views or features.precision != "fp32":
            kept = f"{features.mode} ({features.folder or 'in memory'})" if features.mode else "off"
            records.log(f"image side: feature cache {kept}, {features.views or 'no'} fixed views per training image, "
                        f"frozen image tower in {features.precision}")
        run.resume_into(trainer)
        return trainer.fit()


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

    # an eval writing into a run directory holds the run's lock: while a run still trains there (or
    # another eval writes), this one is refused with the holder named
    into_run = out is None or os.path.abspath(os.path.dirname(os.path.abspath(out))) == os.path.abspath(checkpoint)
    if into_run and not os.path.isdir(checkpoint):
        raise TrainError(f"{checkpoint} is not a fastprompt run directory (no such folder)")
    with FolderLock(checkpoint, "fastprompt eval") if into_run else contextlib.nullcontext():
        cfg_path = os.path.join(checkpoint, "config.yaml")
        if not os.path.isfile(cfg_path):
            raise TrainError(f"{checkpoint} is not a fastprompt run directory (no config.yaml)")
        cfg = resolve_config([(cfg_path, read_yaml(cfg_path))])
        saved, _ = read_prompt_checkpoint(checkpoint)
        if saved.get("method") != cfg["METHOD"]:
            raise TrainError(f"{checkpoint}: prompt.safetensors holds {saved.get('method')!r} prompts but config.yaml "
                             f"is a {cfg['METHOD']!r} run")
        dev = checked_device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
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
        metrics = evaluate(learner, loader, dev, len(data.classnames), images=len(data.test), split="test",
                           max_unreadable=float(cfg["DATASET"]["MAX_UNREADABLE"]), classnames=data.classnames)
        result = {"checkpoint": os.path.abspath(checkpoint), "method": cfg["METHOD"], "dataset": data.name,
                  "subsample": subsample, "split": "test", **metrics}
        out = out or os.path.join(checkpoint, f"eval_{data.name}_{subsample}.json")
        write_json(out, result)
        result["written_to"] = out
        return result
