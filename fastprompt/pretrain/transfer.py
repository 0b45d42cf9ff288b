"""Zero-shot transfer of pretrained prompts: the evaluation POMP reports after ImageNet-21K pretraining.

POMP (Ren et al., NeurIPS 2023, §4) tests its ImageNet-21K prompts without further training on
ImageNet-1K, on the 10 cross-dataset targets of CoCoOp's protocol (Caltech101 ... UCF101) and on
the ImageNet variants (-V2, -Sketch, -A, -R): the class names of each test set replace the
21K pretraining classes, and the test split is classified (amazon-science/prompt-pretraining
``scripts/pomp/xd_test*.sh``, ``dg_test*.sh``: ``--eval-only`` with the dataset's own names).

:func:`transfer_evaluation` does this for every dataset of ``TEST.TRANSFER_DATASETS`` found under
``TEST.TRANSFER_ROOT`` (CoOp's folder layout, :func:`fastprompt.data.load_dataset`; a dataset that
is not there is skipped with its reason logged), split over the ranks under torchrun, and writes
into ``<run>/transfer/``: ``eval_<dataset>.json`` per dataset (the format of ``fastprompt eval``),
and the two tables of the protocols (:mod:`fastprompt.protocols.tables`): cross-dataset (ImageNet,
the 10 targets and their average) and domain generalisation (ImageNet, the 4 variants and their
average) as CSV, Markdown and PNG, with POMP's published numbers beside them.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch.utils.data import DataLoader

from .. import distributed
from ..data.images import ImageDataset, skip_collate
from ..errors import DataError
from ..protocols.definitions import DG_TARGETS, SOURCE, XD_TARGETS
from ..protocols.tables import Cell, Row, Table, _attach_published, _average_row, _sorted
from ..train.evaluate import evaluate
from ..train.state import write_json

__all__ = ["transfer_evaluation", "transfer_tables", "TRANSFER_DIR"]

TRANSFER_DIR = "transfer"
KINDS = {"crossdataset": "cross-dataset", "dg": "domain generalization"}


def _loader(data: ImageDataset, batch_size: int, workers: int, device: torch.device) -> DataLoader:
    rank, world = distributed.world()
    subset = torch.utils.data.Subset(data, list(range(rank, len(data), world)))
    return DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=skip_collate,
                      pin_memory=device.type == "cuda")


def transfer_evaluation(learner, root: str, datasets: Sequence[str], *, test_transform, device: torch.device,
                        batch_size: int, num_workers: int = 0, autocast=None, seed: int = 1,
                        run_dir: Optional[str] = None, log=print) -> Dict[str, Dict[str, Any]]:
    """Accuracy of ``learner``'s prompts on each dataset's test split, with that dataset's class names.

    Args:
        learner: a trained learner (``set_classnames``, ``forward``); its class list is restored after.
        root: the folder holding the datasets (CoOp layout).
        datasets: CoOp folder names (``imagenet``, ``dtd``, ``imagenetv2``, ...).
        test_transform: the model's evaluation transform.
        run_dir: where ``transfer/`` is written (rank 0); ``None``: nothing is written.
        log: ``fn(text)`` for progress lines.

    Returns:
        ``{dataset: metrics}`` for the datasets that were found (accuracy, macro-F1, counts).
    """
    from ..data import load_dataset

    kwargs = {"autocast": autocast} if autocast is not None else {}
    original = list(learner.classnames)
    # the teacher (RPP) only shapes the training loss: testing must not encode its templates for every dataset
    teacher = getattr(learner, "teacher", None)
    if teacher is not None:
        learner.teacher = None
    results: Dict[str, Dict[str, Any]] = {}
    try:
        for name in datasets:
            try:
                data = load_dataset(name, root, shots=0, seed=seed, subsample="all")
            except (DataError, FileNotFoundError) as exc:
                log(f"transfer: {name} skipped ({str(exc).split('. ')[0]})")  # the first sentence: what is missing
                continue
            if not data.test:
                log(f"transfer: {name} skipped (its test split is empty)")
                continue
            learner.set_classnames(data.classnames)
            metrics = evaluate(learner, _loader(ImageDataset(data.test, test_transform), batch_size, num_workers,
                                                device), device, len(data.classnames),
                               gather=distributed.gather_cat, images=len(data.test), split=f"{data.name} test",
                               **kwargs)
            metrics.pop("per_class_accuracy", None)
            results[data.name] = metrics
            log(f"transfer: {data.name}: accuracy {metrics['accuracy']:.2f}% ({metrics['correct']}/{metrics['total']}, "
                f"{len(data.classnames)} classes)")
            if run_dir and distributed.is_main():
                write_json(os.path.join(run_dir, TRANSFER_DIR, f"eval_{data.name}.json"),
                           {"dataset": data.name, "subsample": "all", "split": "test", **metrics})
    finally:
        learner.set_classnames(original)
        if teacher is not None:
            learner.teacher = teacher
    return results


def _table(protocol: str, method: str, shots: int, targets: Sequence[str],
           results: Dict[str, Dict[str, Any]], seed: int) -> Optional[Table]:
    found = [t for t in _sorted(results) if t in targets]
    if not found:
        return None
    per = {name: {"accuracy": {seed: float(results[name]["accuracy"])}} for name in results}
    rows = [Row(name, {"accuracy": Cell.of(per[name]["accuracy"])}, {})
            for name in ([SOURCE] if SOURCE in results else []) + found]
    if len(found) > 1:
        rows.append(_average_row([r for r in rows if r.key != SOURCE], ["accuracy"], per, hm=False))
    table = Table(protocol, method, shots, [("accuracy", "Accuracy")], rows,
                  notes=["Prompts pretrained on ImageNet-21K, tested zero-shot with each dataset's class names; "
                         "Average: over the target datasets (not ImageNet)."],
                  heading=f"Zero-shot transfer of ImageNet-21K prompts ({KINDS[protocol]}): {method}")
    _attach_published(table, targets, found)
    return table


def transfer_tables(method: str, shots: int, results: Dict[str, Dict[str, Any]], seed: int) -> List[Table]:
    """The cross-dataset and domain-generalisation tables of one pretraining run's transfer results."""
    made = [_table("crossdataset", method, shots, XD_TARGETS, results, seed),
            _table("dg", method, shots, DG_TARGETS, results, seed)]
    return [t for t in made if t is not None]
