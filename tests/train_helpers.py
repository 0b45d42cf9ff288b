"""Helpers of the trainer tests (not a test module): a tiny CoOp learner and a Trainer on tensors."""
import torch
from torch.utils.data import TensorDataset

import fastprompt
from fastprompt import testing
from fastprompt.train import EpochSchedule, Trainer, TrainSettings
from fastprompt.train.records import RunRecords

CLASSES = [f"class {i}" for i in range(4)]
SGD = {"NAME": "sgd", "LR": 0.05, "MOMENTUM": 0.9, "WEIGHT_DECAY": 5e-4, "SGD_DAMPNING": 0, "SGD_NESTEROV": False}


def tiny_learner(seed: int = 0):
    """CoOp (4 context vectors) on the tiny random CLIP (32 px), prompts drawn from ``seed``."""
    model = testing.tiny_clip(0)
    torch.manual_seed(seed)
    return fastprompt.CoOpLearner.from_model(model, CLASSES, n_ctx=4)


def tensors(n: int, seed: int = 1):
    """``n`` random 32 px images and labels cycling over the 4 classes."""
    return testing.random_images(n, 32, seed=seed), torch.arange(n) % len(CLASSES)


def prompts(learner):
    return {name: p.detach().clone() for name, p in learner.trainable_named_parameters()}


def tensor_trainer(learner, images, labels, *, epochs: int = 1, lr: float = 0.05, run_dir=None, callbacks=(),
                   precision: str = "fp32", val=None, **settings):
    """A Trainer over in-memory tensors, SGD at a constant ``lr``, no test unless ``no_test=False``."""
    settings = {"batch_size": 4, "seed": 0, "no_test": True, "tensorboard": False, "progress": False, **settings}
    records = None if run_dir else RunRecords(None, enabled=False, echo=False)
    return Trainer(learner, TensorDataset(images, labels), TrainSettings(max_epoch=epochs, **settings),
                   {**SGD, "LR": lr}, EpochSchedule(lr, epochs, "single_step"), precision=precision,
                   run_dir=run_dir, callbacks=callbacks, records=records, val_data=val, test_data=val,
                   n_classes=len(CLASSES))
