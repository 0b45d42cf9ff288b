"""``fastprompt run`` (a protocol's grid of runs, then its results table) and ``fastprompt results``.

In the spirit of the originals' scripts (KaiyangZhou/CoOp ``scripts/cocoop/base2new_train.sh``,
``xd_train.sh``, ``scripts/coop/main.sh``; muzairkhattak/PromptSRC ``scripts/promptsrc/*.sh``) and
of ``parse_test_res.py``, in one command::

    fastprompt run --protocol base2new --method cocoop --data $DATA --output-dir runs
    fastprompt run --protocol fewshot --method coop --data $DATA --datasets dtd eurosat --shots 1 2 4
    fastprompt run --protocol multitask --method softcpt --data $DATA --datasets general10 plant6 fashion20
    fastprompt results runs
"""
from __future__ import annotations

import argparse
import re
import sys

__all__ = ["add_protocol_parsers"]


def add_protocol_parsers(subparsers) -> None:
    """Add ``run`` and ``results`` to a subparsers object."""
    from ..cli_args import no_check, nonnegative_int
    from .definitions import PROTOCOL_RECIPES, PROTOCOLS

    run = subparsers.add_parser(
        "run", help="run a protocol's grid (base2new, fewshot, crossdataset, dg, multitask) and write its results "
                    "table",
        description="Train and test a method over a protocol's datasets, seeds and shots with the recipes of the "
                    "original scripts, skipping finished runs and resuming unfinished ones, then write the results "
                    "table (mean ± std over seeds, the published numbers beside) as CSV, Markdown and PNG under "
                    "OUTPUT_DIR/results/. Trailing KEY VALUE pairs override every run's configuration.")
    run.add_argument("--protocol", required=True, choices=PROTOCOLS, help="evaluation protocol")
    run.add_argument("--method", required=True, metavar="M",
                     help=f"prompt learner: {', '.join(PROTOCOL_RECIPES)}")
    run.add_argument("--data", required=True, metavar="ROOT", help="folder holding the CoOp dataset folders")
    run.add_argument("--datasets", nargs="+", metavar="NAME",
                     help="datasets (base2new, fewshot: default the 11; crossdataset: targets, default the 10 "
                          "others; dg: targets, default imagenetv2 imagenet-sketch imagenet-adversarial "
                          "imagenet-rendition; multitask: default general10 plant6 fashion20). ImageNet is always "
                          "the crossdataset / dg source")
    run.add_argument("--seeds", nargs="+", default=["1", "2", "3"], metavar="S", help="seeds (default: 1 2 3)")
    run.add_argument("--shots", nargs="+", metavar="K",
                     help="shots per class (fewshot: default 1 2 4 8 16; others: one value, default 16)")
    run.add_argument("--variants", nargs="+", metavar="V",
                     help="multitask only: SoftCPT variants and hard-sharing baselines to run (default: NATA NATS "
                          "hard-shared hard-per-task hard-per-class; also CATA CSTA CATS CSTS)")
    run.add_argument("--config", metavar="CFG",
                     help="multitask only: the original's config (rn50_ep50 default, as its README; rn101_ep50, "
                          "vit_b32_ep50, vit_b16_ep50)")
    run.add_argument("--output-dir", default="output", metavar="DIR", help="grid directory (default: output)")
    run.add_argument("--model", metavar="NAME", help="open_clip architecture (default: the recipe's, ViT-B-16)")
    run.add_argument("--pretrained", metavar="TAG", help="pretrained tag or file (default openai); 'none' = random")
    run.add_argument("--workers", type=nonnegative_int, metavar="N", help="DataLoader workers")
    run.add_argument("--device", help="torch device (default: cuda when available)")
    run.add_argument("--progress", action="store_true", help="progress bars for each run")
    run.add_argument("--no-plot", action="store_true", help="no PNG plot")
    run.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides for every run")
    run.set_defaults(func=_run, check=_check_run, command_parser=run)

    res = subparsers.add_parser(
        "results", help="collect the results tables of the finished runs in a grid directory",
        description="Read every finished run under DIR (written by fastprompt run) and write its results tables "
                    "to DIR/results/ (CSV, Markdown, PNG); the Markdown is printed.")
    res.add_argument("directory", metavar="DIR", help="a fastprompt run output directory")
    res.add_argument("--protocol", choices=PROTOCOLS, action="append", help="only this protocol (repeatable)")
    res.add_argument("--method", help="only this method")
    res.add_argument("--no-plot", action="store_true", help="no PNG plot")
    res.set_defaults(func=_results, check=no_check, command_parser=res)


_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


def _check_run(args, parser) -> None:
    """Give back the ``KEY VALUE`` overrides that a list option (``--datasets a b``, ``--seeds``,
    ``--shots``) swallowed, and check the numbers (argparse errors: one line, status 2)."""
    from ..cli_args import nonnegative_int, positive_int

    for name in ("datasets", "seeds", "shots", "variants"):
        values = getattr(args, name)
        cut = next((i for i, v in enumerate(values or ()) if _KEY.match(v)), None)
        if cut is not None:
            args.opts = list(values[cut:]) + list(args.opts)
            setattr(args, name, values[:cut])
            if not values[:cut]:
                parser.error(f"--{name} needs at least one value before the KEY VALUE overrides")
    for name, convert in (("seeds", nonnegative_int), ("shots", positive_int)):
        try:
            setattr(args, name, None if getattr(args, name) is None else [convert(v) for v in getattr(args, name)])
        except argparse.ArgumentTypeError as exc:
            parser.error(f"argument --{name}: {exc}")


def _report(directory: str, protocols, method, plot: bool) -> int:
    import os

    from .report import table_markdown, write_tables
    from .results import collect_runs
    from .tables import build_tables

    tables = build_tables(collect_runs(directory, method=method), protocols)
    if not tables:
        what = f" of {'/'.join(protocols)}" if protocols else ""
        print(f"no finished runs{what}{' of ' + method if method else ''} in {directory}", file=sys.stderr)
        return 1
    out = write_tables(tables, os.path.join(directory, "results"), plot=plot)
    print("\n".join(table_markdown(t) for t in tables))
    for note in out["notes"]:
        print(f"note: {note}", file=sys.stderr)
    print("written: " + ", ".join(out["written"]), file=sys.stderr)
    return 0


def _run(args) -> int:
    from ..errors import EXPECTED_ERRORS, report_failure
    from ..train.cli import is_launch_main
    from .definitions import check_protocol
    from .grid import run_grid

    settings = {k: v for k, v in (("MODEL.BACKBONE.NAME", args.model), ("MODEL.BACKBONE.TAG", args.pretrained),
                                  ("DATALOADER.NUM_WORKERS", args.workers), ("TRAIN.DEVICE", args.device))
                if v is not None}
    try:
        check_protocol(args.protocol, args.method)
        counts = run_grid(args.protocol, args.method, args.data, args.output_dir, datasets=args.datasets,
                          seeds=args.seeds, shots=args.shots, arguments=settings, opts=args.opts,
                          progress=args.progress, variants=args.variants, config=args.config)
    except EXPECTED_ERRORS as exc:
        return report_failure("run", exc)
    if not is_launch_main():  # rank 0 alone prints and writes the results tables
        return 0
    print("fastprompt run: " + ", ".join(f"{n} {what}" for what, n in counts.items()), file=sys.stderr)
    return _report(args.output_dir, [args.protocol], args.method, not args.no_plot)


def _results(args) -> int:
    import os

    from ..errors import report_failure

    if not os.path.isdir(args.directory):
        return report_failure("results", FileNotFoundError(f"no such directory: {args.directory}"))
    return _report(args.directory, args.protocol, args.method, not args.no_plot)
