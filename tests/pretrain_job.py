"""A pretraining run in its own process, for the torchrun tests (not a test module).

    python pretrain_job.py {data|shards} SOURCE RUN_DIR [--resume] [--kill-at-step N] [KEY VALUE ...]

POMP on the tiny random CLIP (tests/test_pretrain.py's settings): ``data`` reads an ImageNet-21K-P
tree, ``shards`` a shard set. ``--kill-at-step`` makes every rank SIGKILL itself right after
that step's checkpoint, with no clean-up, as ``kill -9`` would.
"""
import argparse
import os
import signal

from fastprompt.train.config import resolve_config
from fastprompt.pretrain.run import pretrain_run
from fastprompt.train.config import load_recipe, recipe_path

# tiny random CLIP, small batches, K = 8 sampled classes for the local objective; no IN-21K val test
_COMMON = ["OPTIM.MAX_EPOCH", "2", "DATALOADER.TRAIN_X.BATCH_SIZE", "8", "TEST.NO_TEST", "True",
           "DATALOADER.SHUFFLE_BUFFER", "16", "TRAIN.TENSORBOARD", "False", "INPUT.TRANSFORMS", "['normalize']",
           "TRAIN.PRINT_FREQ", "1"]
# each method's own section only: another method's settings are refused (fastprompt.train.key_audit)
_OWN = {"pomp": ["TRAINER.POMP.UPDATE_CLASS_NUM", "8"],
        "rpp": ["TRAINER.RPP.POMP_NUM_SAMPLED_CLASSES", "8", "TRAINER.RPP.DEPTH", "2"]}
SMALL = _COMMON + _OWN["pomp"]  # for the pomp recipes


N_CLASSES = 30


def make_data(base: str, transfer: bool = False) -> dict:
    """A 30-class x 4-image ImageNet-21K-P tree, its shards (120 samples in 5 shards) and, with
    ``transfer``, a folder of transfer test sets (ImageNet, ImageNet-V2, DTD)."""
    from fastprompt.data import pack_folder, universe_wnids
    from fastprompt.testing.fake_imagenet21k import make_imagenet21k
    from fastprompt.testing.fake_trees import make_imagenet, make_split_dataset, make_variant

    root, shards = os.path.join(base, "in21k"), os.path.join(base, "shards")
    make_imagenet21k(root, N_CLASSES, 4, wnids=list(universe_wnids("winter21")[:N_CLASSES]))
    pack_folder(root, shards, shots=4, seed=1, shard_size=24, progress=False)
    out = {"root": root, "shards": shards}
    if transfer:
        out["transfer"] = os.path.join(base, "transfer")
        wnids = make_imagenet(out["transfer"], 5, 1, val_per_class=2)
        make_variant(out["transfer"], "imagenetv2", wnids, [str(i) for i in range(5)])
        make_split_dataset(out["transfer"], "dtd", [(1, 1, 2)] * 4)
    return out


def config(recipe, *opts, **arguments):
    base = {"MODEL.BACKBONE.NAME": "tiny", "MODEL.BACKBONE.TAG": "none", "SEED": 1, "DATASET.NAME": "imagenet21k",
            "DATALOADER.NUM_WORKERS": 0, **arguments}
    small = _COMMON + _OWN.get(recipe.split("/")[0], [])
    return resolve_config([(recipe_path(recipe), load_recipe(recipe))], arguments=base, overrides=small + list(opts))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=("data", "shards"))
    ap.add_argument("source")
    ap.add_argument("run_dir")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--kill-at-step", type=int)
    ap.add_argument("opts", nargs="*")
    a = ap.parse_args()
    key = "DATASET.ROOT" if a.kind == "data" else "DATASET.SHARDS"

    def killer(event, trainer, info):
        if event == "step" and info["step"] == a.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)

    cfg = config("pomp/vit_b16_ep5", "TRAIN.CHECKPOINT_STEPS", "1", *a.opts, **{key: a.source})
    pretrain_run(cfg, a.run_dir, resume=a.resume, callbacks=[killer], progress=False)


if __name__ == "__main__":
    main()
