"""``fastprompt train`` and ``fastprompt eval``: argument parsing and handlers (hooked into fastprompt.cli).

In the spirit of the originals' ``train.py`` (KaiyangZhou/CoOp): a method config (``--recipe``
or ``--config``, the originals' YAML files accepted unchanged), an optional dataset config, the
usual options, and trailing ``KEY VALUE`` overrides in the originals' spelling::

    fastprompt train --recipe coop/vit_b16_ep50 --data $DATA --dataset dtd --output-dir runs/dtd \\
        --seed 1 TRAINER.COOP.N_CTX 4 DATASET.NUM_SHOTS 16
    fastprompt eval --checkpoint runs/dtd --data $DATA --dataset dtd --subsample new
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from ..cli_args import no_check, nonnegative_int
from ..errors import EXPECTED_ERRORS, report_failure

__all__ = ["add_train_parsers", "add_run_options", "resolve_args", "is_launch_main"]


def add_run_options(p, seed_help: str = "run seed (default 1)") -> None:
    """The options ``train`` and ``pretrain`` share: backbone, seed, precision, workers, device, resume or
    overwrite, progress, and the trailing ``KEY VALUE`` overrides."""
    p.add_argument("--model", metavar="NAME",
                   help="open_clip architecture (default: the recipe's backbone, e.g. ViT-B/16 -> ViT-B-16); "
                        "'tiny' = a few-layer random CLIP for smoke runs")
    p.add_argument("--pretrained", metavar="TAG",
                   help="open_clip pretrained tag or weights file (default openai); 'none' = random weights "
                        "drawn from --seed")
    p.add_argument("--seed", type=nonnegative_int, default=None, metavar="S", help=seed_help)
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None,
                   help="TRAIN.PRECISION (default: from the method's PREC; fp32 on CPU)")
    p.add_argument("--workers", type=nonnegative_int, default=None, metavar="N",
                   help="the original's DataLoader workers (DATALOADER.NUM_WORKERS): its worker streams decide the "
                        "augmentations; fastprompt loads with at most CPUs-1 processes")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run in --output-dir")
    mode.add_argument("--overwrite", action="store_true", help="delete the run in --output-dir and start again")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides")


def add_train_parsers(subparsers) -> None:
    """Add ``train`` and ``eval`` to a subparsers object."""
    train = subparsers.add_parser(
        "train", help="train a prompt learner on a dataset (recipes of the original papers)",
        description="Train a prompt learner with a recipe (--recipe coop/vit_b16_ep50; --list-recipes) or a config "
                    "file (fastprompt YAML or an original repository's configs/trainers/<Trainer>/*.yaml, unchanged), "
                    "then test it. Trailing KEY VALUE pairs override config keys in the originals' spelling "
                    "(TRAINER.COOP.N_CTX 4 DATASET.NUM_SHOTS 16 OPTIM.MAX_EPOCH 10).")
    src = train.add_mutually_exclusive_group()
    src.add_argument("--recipe", metavar="NAME", help="a shipped recipe, <method>/<original config name>")
    src.add_argument("--config", metavar="FILE", help="a config file (fastprompt or original Dassl YAML)")
    train.add_argument("--dataset-config", metavar="FILE",
                       help="an original configs/datasets/*.yaml (sets DATASET.NAME), merged before the method config")
    train.add_argument("--method", metavar="M", help="learner, when the config file does not say (coop, maple, ...)")
    train.add_argument("--list-recipes", action="store_true", help="print the recipe names and exit")
    train.add_argument("--data", metavar="ROOT", help="folder holding the dataset folders (DATASET.ROOT)")
    train.add_argument("--dataset", metavar="NAME", help="dataset (CoOp folder or class name, imagefolder/csv/json)")
    train.add_argument("--output-dir", metavar="DIR", help="the run directory")
    train.add_argument("--shots", type=nonnegative_int, default=None, metavar="K", help="images per class (DATASET.NUM_SHOTS)")
    train.add_argument("--subsample", choices=("all", "base", "new"), default=None,
                       help="base-to-novel class subset (DATASET.SUBSAMPLE_CLASSES)")
    add_run_options(train)
    train.set_defaults(func=_run_train, check=no_check, command_parser=train)

    ev = subparsers.add_parser(
        "eval", help="evaluate a trained run on a dataset's test split (accuracy, macro-F1)",
        description="Evaluate the prompts of a run directory on the test split of a dataset (another dataset for "
                    "cross-dataset transfer, --subsample new for novel classes). Prints and writes JSON.")
    ev.add_argument("--checkpoint", metavar="DIR", required=True, help="a run directory of fastprompt train")
    ev.add_argument("--data", metavar="ROOT", required=True, help="folder holding the dataset folders")
    ev.add_argument("--dataset", metavar="NAME", required=True, help="dataset to test on")
    ev.add_argument("--subsample", choices=("all", "base", "new"), default="all", help="class subset (default: all)")
    ev.add_argument("--batch-size", type=nonnegative_int, default=None, metavar="B", help="default: the run's test batch size")
    ev.add_argument("--workers", type=nonnegative_int, default=0, metavar="N", help="DataLoader workers (default 0)")
    ev.add_argument("--device", default="", help="torch device (default: cuda when available)")
    ev.add_argument("--out", metavar="FILE", help="JSON file (default: DIR/eval_<dataset>_<subsample>.json)")
    ev.set_defaults(func=_run_eval, check=no_check, command_parser=ev)


def _arguments(args) -> dict:
    out = {}
    for key, value in (("DATASET.ROOT", args.data), ("DATASET.NAME", args.dataset), ("SEED", args.seed),
                       ("MODEL.BACKBONE.NAME", args.model), ("MODEL.BACKBONE.TAG", args.pretrained),
                       ("DATASET.NUM_SHOTS", args.shots), ("DATASET.SUBSAMPLE_CLASSES", args.subsample),
                       ("TRAIN.PRECISION", args.precision), ("DATALOADER.NUM_WORKERS", args.workers),
                       ("TRAIN.DEVICE", args.device), ("OUTPUT_DIR", args.output_dir)):
        if value is not None:
            out[key] = value
    return out


def resolve_args(args, arguments: dict) -> dict:
    """The configuration of a command line: config files, ``arguments`` (key -> value), ``KEY VALUE`` overrides."""
    from ..errors import ConfigError
    from .config import read_yaml, resolve_config
    from .config import load_recipe, recipe_path

    files = []
    if getattr(args, "dataset_config", None):
        files.append((args.dataset_config, read_yaml(args.dataset_config)))
    if args.recipe:
        files.append((recipe_path(args.recipe), load_recipe(args.recipe)))
    elif args.config:
        files.append((args.config, read_yaml(args.config)))
    elif args.resume:
        saved = os.path.join(args.output_dir, "config.yaml")
        if not os.path.isfile(saved):
            raise ConfigError(f"--resume: {saved} not found (nothing to resume there)")
        files.append((saved, read_yaml(saved)))
    else:
        raise ConfigError("pass --recipe NAME (see --list-recipes) or --config FILE")
    if not (args.resume and not (args.recipe or args.config)):
        arguments.setdefault("SEED", 1)
    return resolve_config(files, method=getattr(args, "method", None), arguments=arguments, overrides=args.opts)


def is_launch_main() -> bool:
    """:func:`fastprompt.distributed.is_launch_main`, imported when called: the CLI's modules stay
    light (``--help`` imports no torch)."""
    from ..distributed import is_launch_main as launch_main

    return launch_main()


def _run_train(args) -> int:
    if args.list_recipes:
        from .config import list_recipes

        print("\n".join(list_recipes()))
        return 0
    if not args.output_dir:
        return report_failure("train", ValueError("--output-dir DIR is required"))
    from .run import train_run

    try:
        cfg = resolve_args(args, _arguments(args))
        result = train_run(cfg, args.output_dir, resume=args.resume, overwrite=args.overwrite,
                           progress=not args.no_progress)
    except EXPECTED_ERRORS as exc:
        return report_failure("train", exc)
    if result is not None and is_launch_main():
        print(f"{summary_line(result)}; run directory {args.output_dir}")
    return 0


def summary_line(result) -> str:
    """The final line of ``fastprompt train``. A multi-task run (SoftCPT) is reported by the average
    over its tasks of each task's own metric, the number the original reports and selects on; the
    accuracy pooled over every test image (large tasks weigh more) follows, named as such."""
    pooled = (f"accuracy {result['accuracy']:.2f}%, macro-F1 {result['macro_f1']:.2f}% "
              f"({result['correct']}/{result['total']})")
    if "task_average" not in result:
        return f"test {pooled}"
    return (f"test task average {result['task_average']:.2f}% over {len(result['tasks'])} tasks (each task's own "
            f"metric, averaged); pooled over all test images: {pooled}")


def _log_to_run(run_dir: str, exc: Exception) -> None:
    """The error line also goes to the run's ``log.txt`` (the CLI's contract), unless another job holds
    the run (its log is that job's to write) or the folder is no run."""
    from ..errors import FolderInUseError
    from .records import RunRecords

    if isinstance(exc, FolderInUseError) or not os.path.isfile(os.path.join(run_dir or "", "log.txt")):
        return
    try:
        records = RunRecords(run_dir, tensorboard=False, echo=False)
        try:
            records.log(f"fastprompt eval: error: {exc}")
        finally:
            records.close()
    except OSError:  # the line has reached stderr; a log that cannot take it changes nothing
        pass


def _run_eval(args) -> int:
    from .. import distributed
    from .evaluate import EVAL_ERRORS, evaluate_checkpoint

    try:
        # under torchrun every rank scores its share of the test set; rank 0 alone locks the run
        # directory, writes the JSON and prints the summary (below)
        _, _, device = distributed.init_from_env(args.device)
        result = evaluate_checkpoint(args.checkpoint, args.data, args.dataset, args.subsample, args.batch_size,
                                     args.workers, str(device), args.out)
    except EVAL_ERRORS as exc:
        # every rank fails together (evaluate_checkpoint agrees on failures) and says why before the
        # group ends: torchrun stops the ranks still running once the first one has exited
        status = report_failure("eval", exc)
        if is_launch_main():
            _log_to_run(args.checkpoint, exc)
        distributed.shutdown()
        return status
    distributed.shutdown()
    if not is_launch_main():
        return 0
    brief = {k: result[k] for k in ("dataset", "subsample", "accuracy", "error", "macro_f1", "correct", "total")}
    print(json.dumps(brief, indent=2))
    print(f"written to {result['written_to']}", file=sys.stderr)
    return 0
