"""``fastprompt data pack SRC OUT``: argument parsing and handler (hooked into ``fastprompt data``)."""
from __future__ import annotations

import sys

__all__ = ["add_pack_parser"]


def add_pack_parser(sub) -> None:
    """Add ``pack`` to the ``fastprompt data`` subparsers."""
    from ..cli_args import nonnegative_int, positive_int
    from .names import NAME_STYLES, UNIVERSES

    pack = sub.add_parser(
        "pack", help="write an ImageNet-21K-P folder tree as WebDataset shards plus its class table",
        description="Pack the POMP training subset (--shots per class drawn with --seed, as amazon-science/"
                    "prompt-pretraining draws it) of an ImageNet-21K-P tree (imagenet21k_resized/imagenet21k_train/"
                    "<wnid>/) into WebDataset tar shards of --shard-size samples, with classes.json and "
                    "classnames.txt. Rerunning the same command resumes after the last complete shard; images "
                    "that do not decode are skipped and counted.")
    pack.add_argument("src", metavar="SRC", help="data root, imagenet21k_resized/, or one split folder of <wnid>/")
    pack.add_argument("out", metavar="OUT", help="output folder for the shards")
    pack.add_argument("--shots", type=nonnegative_int, default=16, metavar="K", help="images per class (0 = all; default 16)")
    pack.add_argument("--seed", type=nonnegative_int, default=1, metavar="S", help="seed of the few-shot draw (default 1)")
    pack.add_argument("--shard-size", type=positive_int, default=1000, metavar="N", help="samples per shard (default 1000)")
    pack.add_argument("--split", choices=("train", "val"), default="train", help="which split folder (default train)")
    pack.add_argument("--universe", choices=("folders",) + tuple(UNIVERSES), default="folders",
                      help="class universe the labels index: the folders present (POMP), winter21 (10,450), "
                           "fall11 (11,221) or full (21,841)")
    pack.add_argument("--names", choices=NAME_STYLES, default="lemmas",
                      help="class names from timm's WordNet table: all lemmas or the first one (default lemmas)")
    pack.add_argument("--classnames", metavar="FILE", help="'<wnid> <name>' lines overriding timm's names")
    pack.add_argument("--workers", type=positive_int, default=4, metavar="W", help="reader/decoder threads (default 4)")
    pack.add_argument("--overwrite", action="store_true", help="discard a pack of other arguments in OUT")
    pack.add_argument("--no-progress", action="store_true", help="no progress bar")
    pack.set_defaults(func=_run_pack, check=lambda args, parser: None, command_parser=pack)


def _run_pack(args) -> int:
    from ..errors import DataError, FolderInUseError
    from .pack import pack_folder

    try:
        summary = pack_folder(args.src, args.out, args.shots, args.seed, args.shard_size, split=args.split,
                              universe=args.universe, names=args.names, classnames_file=args.classnames,
                              workers=args.workers, overwrite=args.overwrite, progress=not args.no_progress)
    except (DataError, FolderInUseError, OSError) as exc:
        print(f"fastprompt data pack: error: {exc}", file=sys.stderr)
        return 2
    resumed = f", {summary.resumed_shards} already done before this run" if summary.resumed_shards else ""
    print(f"packed {summary.samples} images into {summary.shards} shards in {summary.out}{resumed}; "
          f"{summary.corrupt} unreadable image(s) skipped")
    for line in summary.corrupt_files[:10]:
        print(f"  skipped {line}")
    if summary.corrupt > 10:
        print(f"  ... and {summary.corrupt - 10} more (pack_state.json lists them all)")
    return 0
