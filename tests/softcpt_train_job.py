"""A SoftCPT multi-task training run in its own process, for the multi-task resume tests (not a test module).

    python softcpt_train_job.py DATA_ROOT RUN_DIR [--resume] [--kill-at-step N] [--set KEY VALUE ...]

SoftCPT (recipe softcpt/vit_b16_ep50, the tiny random CLIP) on a generated General-10 tree, 2
shots, batches of 16, 2 epochs, the resumable state every 2 steps; the options and the
``--kill-at-step`` SIGKILL are those of ``train_job.py``, whose ``main`` runs it.
"""
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_job  # noqa: E402

OVERRIDES = ["OPTIM.MAX_EPOCH", "2", "DATALOADER.TRAIN_X.BATCH_SIZE", "16", "DATALOADER.NUM_WORKERS", "0",
             "DATASET.NUM_SHOTS", "2", "TRAINER.MTCOOP.N_CTX", "4", "TRAIN.PRINT_FREQ", "1",
             "TRAIN.CHECKPOINT_STEPS", "2", "OPTIM.LR", "0.05", "OPTIM.WARMUP_EPOCH", "0"]

config = functools.partial(train_job.config, recipe="softcpt/vit_b16_ep50", dataset="general10", seed=2,
                           overrides=OVERRIDES)

if __name__ == "__main__":
    train_job.main(config)
