"""``fastprompt data check|fewshot|pack``: argument parsing and handlers (hooked into fastprompt.cli)."""
from __future__ import annotations

import json
import os
import sys

from ..cli_args import no_check, nonnegative_int

__all__ = ["add_data_parser"]


def add_data_parser(subparsers) -> None:
    """Add ``data`` with its ``check`` and ``fewshot`` subcommands to a subparsers object."""
    data = subparsers.add_parser("data", help="check dataset folders; inspect few-shot subsets",
                                 description="Dataset tools for the CoOp folder layout.")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", title="subcommands")
    sub.required = True

    check = sub.add_parser(
        "check", help="list the datasets under ROOT and what each one is missing",
        description="List every CoOp dataset folder under ROOT with its image count, or, for an incomplete "
                    "one, each missing file or folder and what to download. Exit status 1 when something "
                    "is missing.")
    check.add_argument("root", metavar="ROOT", help="folder holding the dataset folders (Dassl's DATASET.ROOT)")
    check.add_argument("--dataset", metavar="NAME", help="check only this dataset (folder or class name; or "
                       "general10, plant6, fashion20: SoftCPT's multi-task sets, source by source)")
    check.add_argument("--no-cache", action="store_true", help="do not use the listing cache")
    check.set_defaults(func=_run_check, check=no_check, command_parser=check)

    few = sub.add_parser(
        "fewshot", help="print or write the few-shot subset of (shots, seed) as JSON",
        description="The items a CoOp run with --seed S and K shots trains and validates on, as JSON "
                    "(rows [path relative to image_dir, label, classname]).")
    few.add_argument("name", metavar="NAME", help="dataset (CoOp folder or class name, general10/plant6/fashion20, "
                     "or imagefolder/csv/json)")
    few.add_argument("root", metavar="ROOT", help="data root (for custom data: the tree or list file)")
    few.add_argument("--shots", type=nonnegative_int, required=True, metavar="K", help="images per class (0 = all)")
    few.add_argument("--seed", type=nonnegative_int, default=1, metavar="S", help="run seed (default: 1)")
    few.add_argument("--subsample", choices=("all", "base", "new"), default="all",
                     help="class subset of the base-to-novel protocol (default: all)")
    few.add_argument("--subsample-tasks", metavar="WHICH", default=None,
                     help="multi-task sets: all, base, new or taskN (SoftCPT's SUBSAMPLE_TASKS; default: all)")
    few.add_argument("--no-original-cache", action="store_true",
                     help="draw the subset even when the folder holds split_fewshot/shot_K-seed_S.pkl "
                          "(split_fewshot_mt/ for the multi-task sets)")
    few.add_argument("--out", metavar="FILE", help="write the JSON here instead of printing it")
    few.set_defaults(func=_run_fewshot, check=no_check, command_parser=few)

    from .pack_cli import add_pack_parser

    add_pack_parser(sub)  # fastprompt data pack SRC OUT (ImageNet-21K-P to WebDataset shards)


def _error(command: str, exc: Exception) -> int:
    print(f"fastprompt data {command}: error: {exc}", file=sys.stderr)
    return 2


def _run_check(args) -> int:
    from ..errors import DataError
    from .check import check_multitask, check_root, format_check
    from .softcpt.sources import is_multitask

    if args.dataset and is_multitask(args.dataset):
        try:
            report, ok = check_multitask(args.root, args.dataset, cache=not args.no_cache)
        except DataError as exc:
            return _error("check", exc)
        print(report)
        return 0 if ok else 1
    try:
        results = check_root(args.root, args.dataset, cache=not args.no_cache)
    except DataError as exc:
        return _error("check", exc)
    print(format_check(results, args.root, explicit=args.dataset is not None))
    found = [r for r in results if r.status != "absent"]
    bad = any(r.status != "ok" for r in (results if args.dataset else found))
    return 1 if bad or not found else 0


def _run_fewshot(args) -> int:
    from ..errors import DataError
    from .check import fewshot_record
    from .listing import atomic_write_text

    try:
        record = fewshot_record(args.name, args.root, args.shots, args.seed, args.subsample,
                                original_caches=not args.no_original_cache, subsample_tasks=args.subsample_tasks)
    except DataError as exc:
        return _error("fewshot", exc)
    text = json.dumps(record, indent=1)
    if args.out:
        try:
            atomic_write_text(os.path.abspath(args.out), text + "\n")
        except OSError as exc:
            return _error("fewshot", f"cannot write {args.out}: {exc.strerror or exc}")
        print(f"wrote {len(record['train'])} train and {len(record['val'])} val items "
              f"({len(record['classnames'])} classes) to {args.out}")
    else:
        print(text)
    return 0
