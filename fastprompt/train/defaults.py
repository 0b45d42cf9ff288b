"""The configuration keys a run understands, with their defaults, in Dassl's spelling.

The base is Dassl's ``get_cfg_default()`` (KaiyangZhou/Dassl.pytorch ``dassl/config/defaults.py``)
restricted to the sections the CoOp family reads, so that the original repositories' YAML files
(which only set keys that exist there, as YACS requires) load unchanged. The trainer sections
(``TRAINER.COOP``, ``TRAINER.MAPLE``, ...) and their defaults come from each method's entry in
:mod:`fastprompt.train.methods` (the ``extend_cfg`` of the method's own ``train.py``).

fastprompt's own keys (not in Dassl) are marked ``# fastprompt`` below, as are the four keys whose
default is the model's own (:data:`MODEL_KEYS`). What a run does with each key (read, refused
unless at fastprompt's value, or no effect and why) is :mod:`fastprompt.train.key_audit`.
"""
from __future__ import annotations

import copy
from typing import Any, Dict

__all__ = ["base_defaults", "FASTPROMPT_KEYS", "flatten", "MODEL_KEYS"]

_DASSL: Dict[str, Any] = {
    "VERSION": 1,
    "OUTPUT_DIR": "",
    "RESUME": "",
    "SEED": -1,
    "USE_CUDA": True,
    "VERBOSE": True,
    "INPUT": {
        # fastprompt: SIZE, INTERPOLATION, PIXEL_MEAN and PIXEL_STD default to the model's own (empty here,
        # see MODEL_KEYS); Dassl's (224, 224), bilinear and ImageNet statistics never apply to a CLIP backbone
        "SIZE": (), "INTERPOLATION": "", "TRANSFORMS": (), "NO_TRANSFORM": False,
        "PIXEL_MEAN": [], "PIXEL_STD": [], "CROP_PADDING": 4,
        "RRCROP_SCALE": (0.08, 1.0), "CUTOUT_N": 1, "CUTOUT_LEN": 16, "GN_MEAN": 0.0, "GN_STD": 0.15,
        "RANDAUGMENT_N": 2, "RANDAUGMENT_M": 10, "COLORJITTER_B": 0.4, "COLORJITTER_C": 0.4,
        "COLORJITTER_S": 0.4, "COLORJITTER_H": 0.1, "RGS_P": 0.2, "GB_P": 0.5, "GB_K": 21,
    },
    "DATASET": {
        "ROOT": "", "NAME": "", "SOURCE_DOMAINS": (), "TARGET_DOMAINS": (), "NUM_LABELED": -1,
        "NUM_SHOTS": -1, "VAL_PERCENT": 0.1, "STL10_FOLD": -1, "CIFAR_C_TYPE": "", "CIFAR_C_LEVEL": 1,
        "ALL_AS_UNLABELED": False,
        "SUBSAMPLE_CLASSES": "all",  # every CoOp-family train.py adds it
        "SUBSAMPLE_TASKS": "all",  # kding1225/softcpt train.py: all, task<i>, base, new (multi-task sets)
    },
    "DATALOADER": {
        "NUM_WORKERS": 4, "K_TRANSFORMS": 1, "RETURN_IMG0": False,
        "TRAIN_X": {"SAMPLER": "RandomSampler", "BATCH_SIZE": 32, "N_DOMAIN": 0, "N_INS": 16},
        "TRAIN_U": {"SAME_AS_X": True, "SAMPLER": "RandomSampler", "BATCH_SIZE": 32, "N_DOMAIN": 0, "N_INS": 16},
        "TEST": {"SAMPLER": "SequentialSampler", "BATCH_SIZE": 32},
    },
    "MODEL": {
        "INIT_WEIGHTS": "",
        "BACKBONE": {"NAME": "", "PRETRAINED": True},
        "HEAD": {"NAME": "", "HIDDEN_LAYERS": (), "ACTIVATION": "relu", "BN": True, "DROPOUT": 0.0},
    },
    "OPTIM": {
        "NAME": "adam", "LR": 0.0003, "WEIGHT_DECAY": 5e-4, "MOMENTUM": 0.9, "SGD_DAMPNING": 0,
        "SGD_NESTEROV": False, "RMSPROP_ALPHA": 0.99, "ADAM_BETA1": 0.9, "ADAM_BETA2": 0.999,
        "STAGED_LR": False, "NEW_LAYERS": (), "BASE_LR_MULT": 0.1, "LR_SCHEDULER": "single_step",
        "STEPSIZE": (-1,), "GAMMA": 0.1, "MAX_EPOCH": 10, "WARMUP_EPOCH": -1, "WARMUP_TYPE": "linear",
        "WARMUP_CONS_LR": 1e-5, "WARMUP_MIN_LR": 1e-5, "WARMUP_RECOUNT": True,
    },
    "TRAIN": {"CHECKPOINT_FREQ": 0, "PRINT_FREQ": 10, "COUNT_ITER": "train_x"},
    # BeierZhu/Prompt-align ProGrad.public/train.py extend_cfg (also copied into TCP's and PRE's train.py);
    # read by ProGrad only (fastprompt.train.methods: its MethodSpec.outside keys)
    "LOSS": {"GM": False, "NAME": "", "ALPHA": 0.0, "T": 1.0, "LAMBDA": 1.0},
    "TEST": {
        "EVALUATOR": "Classification", "PER_CLASS_RESULT": False, "COMPUTE_CMAT": False, "NO_TEST": False,
        "SPLIT": "test", "FINAL_MODEL": "last_step",
        "PER_TASK_RESULT": False,  # kding1225/softcpt train.py
    },
}

# fastprompt's own keys, with their defaults and meaning (they appear in the resolved config.yaml).
FASTPROMPT_KEYS: Dict[str, Any] = {
    "METHOD": ("", "learner: coop, cocoop, kgcoop, maple, promptsrc, vpt, pre, softcpt, pomp, rpp, prograd, tcp"),
    "MODEL.BACKBONE.TAG": ("openai", "open_clip pretrained tag or weights file; 'none' = random weights drawn "
                                     "from SEED"),
    "TRAIN.PRECISION": ("", "fp32, bf16, fp16 (autocast + GradScaler); empty = from the method's PREC"),
    "OPTIM.ADAM_EPS": (1e-8, "Adam/AdamW eps (Dassl passes none: torch's 1e-8); TCP's README sets 1e-3 in Dassl's "
                             "optimizer.py"),
    "TRAIN.GRAD_ACCUM_STEPS": (1, "batches accumulated per optimizer step"),
    "TRAIN.EVAL_FREQ": (0, "evaluate on the val split every N epochs (0 = only TEST.FINAL_MODEL's needs)"),
    "TRAIN.CHECKPOINT_STEPS": (0, "also write the resumable state every N optimizer steps (0 = epoch ends)"),
    "TRAIN.MAX_STEPS": (0, "stop after N optimizer steps (0 = run every epoch); for smoke runs"),
    "TRAIN.TENSORBOARD": (True, "write TensorBoard events when the tensorboard package is installed"),
    "TRAIN.DEVICE": ("", "torch device; empty = cuda when available, else cpu"),
    # the training order (fastprompt.train.batches.training_batches)
    "DATALOADER.OWN_ORDER": (False, "True: fastprompt's own per-(seed, epoch) batch order and augmentation instead of "
                                    "the original's streams (which a run starting from the original's initial "
                                    "prompts replays; unreadable images may then be skipped, DATASET.MAX_UNREADABLE)"),
    "DATALOADER.TRAIN_X.TORCH_SAMPLER": ("torch>=1.9", "whose RandomSampler the original ran on: torch>=1.9 (seed "
                                                       "from the global stream, its own permutation) or torch1.7-1.8 "
                                                       "(the permutation from the global stream, pytorch #52568)"),
    "DATASET.MAX_UNREADABLE": (0.1, "the largest fraction of a split's (or an epoch's) images that may be unreadable "
                                    "and skipped; more is an error (a split with none readable always is)"),
    # the image side (fastprompt.train.feature_setup)
    "TRAIN.FEATURE_CACHE": ("", "frozen image features computed once and reused (text-prompt methods): 'all' = "
                                "training and evaluation (needs a deterministic training view: INPUT.TRANSFORMS "
                                "['normalize'] or TRAIN.FEATURE_CACHE_VIEWS), 'eval' = the val/test splits only, "
                                "'' = off"),
    "TRAIN.FEATURE_CACHE_DIR": ("", "also keep cached features on disk in this folder ('default': <fastprompt "
                                    "cache>/image_features), reused by later runs; empty = memory only"),
    "TRAIN.FEATURE_CACHE_VIEWS": (0, "V >= 1: train on V seeded augmented views per image drawn once, each epoch "
                                     "picking one (cacheable); 0 = the training transform as it is"),
    "TRAIN.FROZEN_IMAGE_PRECISION": ("fp32", "the frozen image tower: fp32, or bf16 autocast (about 1% feature "
                                             "error, 2-3x faster where the hardware has bf16 matrix units)"),
    # fastprompt pretrain (ImageNet-21K prompt pretraining, fastprompt.pretrain.run)
    "TRAIN.OBJECTIVE": ("auto", "pomp/rpp pretraining: full (exact softmax over every class), local (POMP's "
                                "sampled local contrast), auto (full when the step fits in memory)"),
    "DATASET.UNIVERSE": ("folders", "ImageNet-21K class universe: folders (the tree's), winter21, fall11, full"),
    "DATASET.SHARDS": ("", "WebDataset shard set (folder or brace pattern) streamed instead of DATASET.ROOT's tree"),
    "DATALOADER.SHUFFLE_BUFFER": (2000, "samples in the shard stream's seeded shuffle buffer (0: shard order)"),
    "TEST.TRANSFER_ROOT": ("", "data root of the zero-shot transfer datasets tested after pretraining"),
    "TEST.TRANSFER_DATASETS": (["imagenet", "caltech-101", "oxford_pets", "stanford_cars", "oxford_flowers",
                                "food-101", "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101", "imagenetv2",
                                "imagenet-sketch", "imagenet-adversarial", "imagenet-rendition"],
                               "datasets of the transfer evaluation (those found under TEST.TRANSFER_ROOT)"),
}


# Properties of the backbone: the image transform is built from the model's own preprocessing, so
# these keys are either empty (= the model's) or must equal the model's value
# (fastprompt.train.model_keys).
MODEL_KEYS = ("INPUT.SIZE", "INPUT.INTERPOLATION", "INPUT.PIXEL_MEAN", "INPUT.PIXEL_STD")


def flatten(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """``{"A": {"B": 1}}`` -> ``{"A.B": 1}``."""
    out: Dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _set(tree: Dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


def base_defaults() -> Dict[str, Any]:
    """A fresh copy of Dassl's defaults plus fastprompt's own keys (no trainer sections yet)."""
    tree = copy.deepcopy(_DASSL)
    tree["TRAINER"] = {"NAME": ""}
    for key, (value, _) in FASTPROMPT_KEYS.items():
        _set(tree, key, value)
    return tree
