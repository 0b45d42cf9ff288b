"""``fastprompt`` command line: parses, then hands each subcommand to its module.

Subcommands:

* ``demo``: train a prompt learner on the embedded synthetic shapes, no data and no weights
  (``fastprompt/demo.py``).
* ``data check ROOT`` / ``data fewshot NAME ROOT --shots K --seed S`` / ``data pack SRC OUT``:
  dataset folders, few-shot subsets, ImageNet-21K shards (``fastprompt/data/cli.py``).
* ``train`` / ``eval``: recipes, training runs with resume, evaluation (``fastprompt/train/cli.py``).
* ``run`` / ``results``: a protocol's grid of runs and its results table (``fastprompt/protocols/cli.py``).
* ``pretrain``: ImageNet-21K prompt pretraining (``fastprompt/pretrain/cli.py``).
* ``env``: versions, devices, toolchain and the attention backends, for bug reports; with
  ``--compile-check``, the Triton kernels compiled for a GPU architecture (``fastprompt/env.py``).

Building the parser imports no torch, open_clip, numpy or PIL: each subcommand module adds its
parser from light modules (choices from :mod:`fastprompt.data.names`, the packages' names loaded on
first use, :mod:`fastprompt.lazy`) and imports the heavy code inside its command, so ``--help``,
``--version`` and usage errors answer at once (tests/test_cli_startup.py).
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .cli_args import OneLineErrorParser, options_among_overrides
from .demo import DemoError, add_demo_parser

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    try:
        from .version import __version__
    except ImportError:  # pragma: no cover
        __version__ = "unknown"
    parser = OneLineErrorParser(
        prog="fastprompt", description="Fast, exact prompt learning (RPP, CoOp, CoCoOp, ...) on open_clip CLIP models.")
    parser.add_argument("--version", action="version", version=f"fastprompt {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    subparsers.required = True
    add_demo_parser(subparsers)  # fastprompt demo
    from .data.cli import add_data_parser

    add_data_parser(subparsers)  # fastprompt data check|fewshot
    from .train.cli import add_train_parsers

    add_train_parsers(subparsers)  # fastprompt train|eval
    from .pretrain.cli import add_pretrain_parser

    add_pretrain_parser(subparsers)  # fastprompt pretrain
    from .protocols.cli import add_protocol_parsers

    add_protocol_parsers(subparsers)  # fastprompt run|results
    from .env import add_env_parser

    add_env_parser(subparsers)  # fastprompt env
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``fastprompt`` command line; returns the exit status.

    Bad arguments exit with status 2 through argparse (``SystemExit``); runtime errors that the
    user can act on (weights not available offline, ...) are printed as one line and return 2.
    """
    parser = build_parser()
    args = parser.parse_args(None if argv is None else list(argv))
    options_among_overrides(args, args.command_parser)
    args.check(args, args.command_parser)
    try:
        return args.func(args)
    except DemoError as exc:
        print(f"fastprompt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        run_dir = getattr(args, "output_dir", None) if args.command in ("train", "pretrain") else None
        resume = (f"; {run_dir} keeps its last checkpoint: rerun the same command with --resume to go on from it"
                  if run_dir else "")
        print(f"fastprompt {args.command}: interrupted{resume}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
