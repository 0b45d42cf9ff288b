"""A training run in its own process, for the resume tests (not a test module).

    python train_job.py DATA_ROOT RUN_DIR [--resume] [--kill-at-step N | --kill-after-epoch N]
                        [--nan-at-call N]    (with torchrun: NaN loss on rank 1's N-th batch)
                        [--set KEY VALUE ...] (more config overrides)

CoOp on the generated ``dtd`` tree with the tiny random CLIP, 2 epochs of 6 batches, the
resumable state every 2 steps. ``--kill-*`` makes the process SIGKILL itself right after that
step's (or epoch's) checkpoint, with no clean-up, as ``kill -9`` from outside would.
"""
import argparse
import os
import signal

from fastprompt.train.config import resolve_config
from fastprompt.train.config import load_recipe
from fastprompt.train.run import train_run

OVERRIDES = ["OPTIM.MAX_EPOCH", "2", "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.NUM_WORKERS", "0",
             "TRAINER.COOP.N_CTX", "4", "TRAIN.PRINT_FREQ", "1", "TRAIN.CHECKPOINT_STEPS", "2",
             "OPTIM.LR", "0.05", "OPTIM.WARMUP_EPOCH", "0"]


def config(data_root, extra=(), *, recipe="coop/vit_b16_ep50", dataset="dtd", seed=3, overrides=OVERRIDES):
    return resolve_config([(recipe, load_recipe(recipe))],
                          arguments={"DATASET.ROOT": data_root, "DATASET.NAME": dataset, "SEED": seed,
                                     "MODEL.BACKBONE.NAME": "tiny", "MODEL.BACKBONE.TAG": "none",
                                     "TRAIN.TENSORBOARD": False},
                          overrides=list(overrides) + list(extra))


def main(make_config=config):
    """The job; ``make_config(data_root, overrides)``: its configuration (another job passes its own)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("run_dir")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--kill-at-step", type=int)
    ap.add_argument("--kill-after-epoch", type=int)
    ap.add_argument("--nan-at-call", type=int)
    ap.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"))
    a = ap.parse_args()
    if a.nan_at_call and os.environ.get("RANK") == "1":
        import fastprompt

        calls, original = [0], fastprompt.CoOpLearner.loss

        def loss(self, images, labels):
            calls[0] += 1
            value = original(self, images, labels)
            return value * float("nan") if calls[0] == a.nan_at_call else value

        fastprompt.CoOpLearner.loss = loss

    def killer(event, trainer, info):
        if (event == "step" and info["step"] == a.kill_at_step) or \
                (event == "epoch" and info["epoch"] + 1 == a.kill_after_epoch):
            os.kill(os.getpid(), signal.SIGKILL)

    extra = [token for pair in a.set for token in pair]
    train_run(make_config(a.data, extra), a.run_dir, resume=a.resume, callbacks=[killer], progress=False)


if __name__ == "__main__":
    main()
