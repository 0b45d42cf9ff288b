"""``fastprompt pretrain``: argument parsing and handler (hooked into fastprompt.cli).

    fastprompt pretrain --recipe pomp/vit_b16_ep5 --data $DATA --output-dir runs/pomp \\
        --transfer-data $DATA                      # ImageNet-21K-P tree under $DATA
    fastprompt pretrain --recipe rpp/vit_b16_ep5 --shards /shards/in21k-16shot --output-dir runs/rpp
    torchrun --nproc_per_node 8 -m fastprompt.cli pretrain --recipe pomp/vit_b16_ep5 --shards ... --output-dir ...

The run itself is :func:`fastprompt.pretrain.run.pretrain_run`.
"""
from __future__ import annotations

from ..cli_args import no_check, nonnegative_int

__all__ = ["add_pretrain_parser"]

DEFAULT_CHECKPOINT_STEPS = 500  # a long run loses at most this many steps to a crash


def add_pretrain_parser(subparsers) -> None:
    """Add ``pretrain`` to a subparsers object."""
    from ..data.names import UNIVERSES
    from ..train.cli import add_run_options

    p = subparsers.add_parser(
        "pretrain", help="pretrain POMP or RPP prompts on ImageNet-21K (folder tree or shards), then test transfer",
        description="Prompt pretraining on ImageNet-21K (POMP, RPP): the exact full-vocabulary softmax when the step "
                    "fits in memory (estimated before the first step), POMP's sampled local contrast otherwise; "
                    "resumable at any step; zero-shot transfer to ImageNet-1K, the cross-dataset sets and the "
                    "ImageNet variants at the end. Runs under torchrun unchanged. Trailing KEY VALUE pairs override "
                    "config keys (TRAINER.POMP.UPDATE_CLASS_NUM 1000 OPTIM.MAX_EPOCH 5).")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--recipe", metavar="NAME", help="pomp/<config> or rpp/<config> (fastprompt train --list-recipes)")
    src.add_argument("--config", metavar="FILE", help="a config file (fastprompt or original POMP YAML)")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--data", metavar="ROOT", help="ImageNet-21K-P: the folder holding imagenet21k_resized/ "
                                                     "(or that folder, or one split folder of <wnid>/ folders)")
    data.add_argument("--shards", metavar="DIR", help="a shard set of `fastprompt data pack` (or a brace pattern)")
    p.add_argument("--universe", choices=("folders",) + tuple(UNIVERSES), default=None,
                   help="class universe of a folder tree (default: its folders, as POMP)")
    p.add_argument("--shots", type=nonnegative_int, default=None, metavar="K",
                   help="images per class drawn from the tree (default 16, as POMP); 0 = all")
    p.add_argument("--objective", choices=("auto", "full", "local"), default=None,
                   help="full vocabulary, POMP's local contrast, or auto (default: full when it fits in memory)")
    p.add_argument("--transfer-data", metavar="ROOT",
                   help="folder holding ImageNet and the transfer test sets (CoOp layout) tested after training")
    p.add_argument("--output-dir", metavar="DIR", required=True, help="the run directory")
    p.add_argument("--checkpoint-steps", type=nonnegative_int, default=None, metavar="N",
                   help=f"write the resumable state every N optimizer steps (default {DEFAULT_CHECKPOINT_STEPS}; "
                        "0 = epoch ends only)")
    add_run_options(p, seed_help="run seed (default 1; POMP's scripts use 42)")
    p.set_defaults(func=_run_pretrain, check=no_check, command_parser=p)


def _arguments(args) -> dict:
    out = {}
    for key, value in (("DATASET.ROOT", args.data), ("DATASET.SHARDS", args.shards),
                       ("DATASET.UNIVERSE", args.universe), ("DATASET.NUM_SHOTS", args.shots),
                       ("TRAIN.OBJECTIVE", args.objective), ("TEST.TRANSFER_ROOT", args.transfer_data),
                       ("SEED", args.seed), ("MODEL.BACKBONE.NAME", args.model),
                       ("MODEL.BACKBONE.TAG", args.pretrained),
                       ("TRAIN.PRECISION", args.precision), ("DATALOADER.NUM_WORKERS", args.workers),
                       ("TRAIN.DEVICE", args.device), ("OUTPUT_DIR", args.output_dir),
                       ("TRAIN.CHECKPOINT_STEPS", args.checkpoint_steps)):
        if value is not None:
            out[key] = value
    if not args.resume:
        out.setdefault("DATASET.NAME", "imagenet21k")
        out.setdefault("TRAIN.CHECKPOINT_STEPS", DEFAULT_CHECKPOINT_STEPS)
    return out


def _with_teacher_cache(cfg: dict, opts) -> dict:
    """RPP's teacher encodes 10K-21K classes: keep them on disk unless the command line says otherwise."""
    if cfg.get("METHOD") == "rpp" and "TRAINER.RPP.TEACHER_CACHE" not in list(opts or ()):
        cfg["TRAINER"]["RPP"]["TEACHER_CACHE"] = True
    return cfg


def _run_pretrain(args) -> int:
    from ..errors import EXPECTED_ERRORS, report_failure
    from ..train.cli import is_launch_main, resolve_args
    from .run import pretrain_run

    try:
        cfg = _with_teacher_cache(resolve_args(args, _arguments(args)), args.opts)
        result = pretrain_run(cfg, args.output_dir, resume=args.resume, overwrite=args.overwrite,
                              progress=not args.no_progress)
    except EXPECTED_ERRORS as exc:
        return report_failure("pretrain", exc)
    if not is_launch_main():
        return 0
    transfer = result.get("transfer") or {}
    for name, metrics in transfer.items():
        print(f"transfer {name}: accuracy {metrics['accuracy']:.2f}%")
    print(f"pretraining done ({result.get('objective')} objective); run directory {args.output_dir}")
    return 0
