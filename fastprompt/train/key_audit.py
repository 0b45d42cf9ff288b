"""Every configuration key, and what a run does with it: read, refused unless at fastprompt's value, or no effect.

The originals' YAML files load unchanged (:mod:`fastprompt.train.defaults` keeps Dassl's keys), so
many keys exist that fastprompt does not implement. None may be silently ignored: :data:`BASE`
(Dassl's keys and fastprompt's own) and :func:`audit_table` (adding the method sections of
:mod:`fastprompt.train.methods`) give each key one :class:`Entry`:

* ``read``: honoured, by the module named in ``note``;
* ``fixed``: honoured only at the value(s) in ``allowed`` (what fastprompt implements); any other
  value is a ``ConfigError`` naming the key, the value, what fastprompt does and what to do;
* ``inert``: accepted with any value of its type, because it cannot change the result (``note``
  says why, e.g. it is read only by a Dassl transform that ``INPUT.TRANSFORMS`` refuses);
* ``model``: a property of the backbone (input size, normalisation, interpolation): fastprompt
  uses the model's own, so a value given is refused unless it is the model's
  (:mod:`fastprompt.train.model_keys`);
* ``foreign``: a key of another method's ``TRAINER`` section, which this run's learner never
  reads: refused unless at its default.

:func:`check_config` runs on every resolved configuration (:func:`~fastprompt.train.config.resolve_config`),
:func:`check_job` when a run starts (keys only ``fastprompt pretrain`` reads are refused in
``fastprompt train`` and the other way round). A key the table lacks is a bug, caught by the
tests (``tests/test_config_keys_honoured.py``) and, at run time, by :func:`check_config`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

from ..errors import ConfigError
from .defaults import base_defaults, flatten
from .methods import METHODS

__all__ = ["Entry", "BASE", "audit_table", "check_config", "check_job", "element_type", "same_value", "JOBS"]

JOBS = ("train", "pretrain")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One key's treatment. ``element``/``length``: the item type and count a sequence value must have
    (checked when the value is read from a file or the command line); ``jobs``: the commands that
    read a ``read`` key (elsewhere it must stay at its default)."""

    kind: str                          # read | fixed | inert | model | foreign
    note: str
    allowed: Tuple[Any, ...] = ()
    element: Optional[type] = None
    length: Optional[int] = None
    jobs: Tuple[str, ...] = JOBS


def _read(where: str, **kw) -> Entry:
    return Entry("read", f"read by {where}", **kw)


def _fixed(note: str, *allowed, **kw) -> Entry:
    return Entry("fixed", note, tuple(allowed), **kw)


def _inert(reason: str, **kw) -> Entry:
    return Entry("inert", reason, **kw)


_REFUSED_TRANSFORM = "read only by Dassl's {} transform, which INPUT.TRANSFORMS refuses"
_NO_UNLABELED = ("the unlabeled loader of semi-supervised training; fastprompt has no unlabeled set "
                 "(DATASET.NUM_LABELED and DATASET.ALL_AS_UNLABELED are refused)")
_NO_HEAD = "configures Dassl's MLP head, which fastprompt never builds (MODEL.HEAD.NAME is refused)"
_MODEL = "the model's own ({}): the transforms are built from the backbone's preprocessing"

BASE: Dict[str, Entry] = {
    "VERSION": _inert("Dassl's config format version; nothing reads it"),
    "OUTPUT_DIR": _inert("the run directory is --output-dir (train_run's run_dir); the key only records it"),
    "RESUME": _fixed("fastprompt resumes the run in --output-dir with --resume; pass that instead", ""),
    "SEED": _read("fastprompt.train.startup (global RNGs), the data's few-shot draw and random weights"),
    "USE_CUDA": _fixed("the device is TRAIN.DEVICE (--device); pass --device cpu instead", True),
    "VERBOSE": _inert("Dassl prints its model summary with it; fastprompt's log.txt does not depend on it"),
    "METHOD": _read("fastprompt.train.config (the learner)"),
    "TRAINER.NAME": _read("fastprompt.train.config (the learner, as the originals' trainer name)"),
    # the input side
    "INPUT.SIZE": Entry("model", _MODEL.format("input size"), element=int, length=2),
    "INPUT.INTERPOLATION": Entry("model", _MODEL.format("resize interpolation")),
    "INPUT.PIXEL_MEAN": Entry("model", _MODEL.format("normalisation mean"), element=float, length=3),
    "INPUT.PIXEL_STD": Entry("model", _MODEL.format("normalisation std"), element=float, length=3),
    "INPUT.TRANSFORMS": _read("fastprompt.train.build.build_transforms (unimplemented names are refused)",
                              element=str),
    "INPUT.NO_TRANSFORM": _fixed("images always go through the model's transform (resize, crop, normalise)",
                                 False),
    "INPUT.CROP_PADDING": _inert(_REFUSED_TRANSFORM.format("random_crop")),
    "INPUT.RRCROP_SCALE": _read("fastprompt.train.build.build_transforms (random_resized_crop)", element=float,
                                length=2),
    "INPUT.CUTOUT_N": _inert(_REFUSED_TRANSFORM.format("cutout")),
    "INPUT.CUTOUT_LEN": _inert(_REFUSED_TRANSFORM.format("cutout")),
    "INPUT.GN_MEAN": _inert(_REFUSED_TRANSFORM.format("gaussian_noise")),
    "INPUT.GN_STD": _inert(_REFUSED_TRANSFORM.format("gaussian_noise")),
    "INPUT.RANDAUGMENT_N": _read("fastprompt.train.views.with_randaugment2 (INPUT.TRANSFORMS randaugment2)"),
    "INPUT.RANDAUGMENT_M": _inert(_REFUSED_TRANSFORM.format("randaugment") + " (randaugment2 draws its own "
                                                                              "magnitudes)"),
    "INPUT.COLORJITTER_B": _inert(_REFUSED_TRANSFORM.format("colorjitter")),
    "INPUT.COLORJITTER_C": _inert(_REFUSED_TRANSFORM.format("colorjitter")),
    "INPUT.COLORJITTER_S": _inert(_REFUSED_TRANSFORM.format("colorjitter")),
    "INPUT.COLORJITTER_H": _inert(_REFUSED_TRANSFORM.format("colorjitter")),
    "INPUT.RGS_P": _inert(_REFUSED_TRANSFORM.format("random_gray_scale")),
    "INPUT.GB_P": _inert(_REFUSED_TRANSFORM.format("gaussian_blur")),
    "INPUT.GB_K": _inert(_REFUSED_TRANSFORM.format("gaussian_blur")),
    # the data
    "DATASET.ROOT": _read("fastprompt.train.build.load_split / fastprompt.pretrain.run"),
    "DATASET.NAME": _read("fastprompt.train.build.load_split (fastprompt pretrain: imagenet21k only)"),
    "DATASET.SOURCE_DOMAINS": _fixed("domain-adaptation datasets are not implemented: a run trains and tests on "
                                     "one dataset's splits", (), element=str),
    "DATASET.TARGET_DOMAINS": _fixed("domain-adaptation datasets are not implemented: a run trains and tests on "
                                     "one dataset's splits", (), element=str),
    "DATASET.NUM_LABELED": _fixed("semi-supervised splits are not implemented (use DATASET.NUM_SHOTS)", -1),
    "DATASET.NUM_SHOTS": _read("fastprompt.train.build.load_split / fastprompt.pretrain.run"),
    "DATASET.VAL_PERCENT": _fixed("the val split is the dataset's own (its split file, or the imagefolder "
                                  "layout's fixed split)", 0.1),
    "DATASET.STL10_FOLD": _fixed("Dassl's STL-10 dataset is not implemented", -1),
    "DATASET.CIFAR_C_TYPE": _fixed("Dassl's CIFAR-C datasets are not implemented", ""),
    "DATASET.CIFAR_C_LEVEL": _fixed("Dassl's CIFAR-C datasets are not implemented", 1),
    "DATASET.ALL_AS_UNLABELED": _fixed("semi-supervised training is not implemented", False),
    "DATASET.SUBSAMPLE_CLASSES": _read("fastprompt.train.build.load_split (base/new/all classes)", jobs=("train",)),
    "DATASET.SUBSAMPLE_TASKS": _read("fastprompt.train.build.load_split (a multi-task set's all/task<i>/base/new "
                                     "tasks; a single dataset refuses any other value than all)", jobs=("train",)),
    "DATASET.MAX_UNREADABLE": _read("fastprompt.train.trainer.TrainSettings (training on the original's streams, an "
                                    "unreadable training image is an error: skipping it would move every later draw)"),
    "DATASET.UNIVERSE": _read("fastprompt.pretrain.run", jobs=("pretrain",)),
    "DATASET.SHARDS": _read("fastprompt.pretrain.run", jobs=("pretrain",)),
    # the loaders
    "DATALOADER.NUM_WORKERS": _read("fastprompt.train.startup.run_settings (loader processes, at most the CPUs) and "
                                    "fastprompt.train.batches.training_batches (the original's worker streams)"),
    "DATALOADER.OWN_ORDER": _read("fastprompt.train.batches.training_batches"),
    "DATALOADER.TRAIN_X.TORCH_SAMPLER": _read("fastprompt.train.batches.training_batches"),
    "DATALOADER.K_TRANSFORMS": _read("fastprompt.train.build.build_transforms (views per image)"),
    "DATALOADER.RETURN_IMG0": _inert("adds the un-augmented image to Dassl's batches; no CoOp-family trainer "
                                     "reads it"),
    "DATALOADER.SHUFFLE_BUFFER": _read("fastprompt.pretrain.run (shard stream)", jobs=("pretrain",)),
    "DATALOADER.TRAIN_X.SAMPLER": _fixed("training batches come in a seeded random order, split among torchrun's "
                                         "processes", "RandomSampler", "DistributedSampler"),
    "DATALOADER.TRAIN_X.BATCH_SIZE": _read("fastprompt.train.startup.run_settings (the global batch)"),
    "DATALOADER.TRAIN_X.N_DOMAIN": _inert("read only by Dassl's domain samplers, which TRAIN_X.SAMPLER refuses"),
    "DATALOADER.TRAIN_X.N_INS": _inert("read only by Dassl's class/domain samplers, which TRAIN_X.SAMPLER refuses"),
    **{f"DATALOADER.TRAIN_U.{k}": _inert(_NO_UNLABELED) for k in ("SAME_AS_X", "SAMPLER", "BATCH_SIZE", "N_DOMAIN",
                                                                  "N_INS")},
    "DATALOADER.TEST.SAMPLER": _fixed("evaluation reads the split in order, split among torchrun's processes",
                                      "SequentialSampler", "SequentialDistributedSampler"),
    "DATALOADER.TEST.BATCH_SIZE": _read("fastprompt.train.startup.run_settings"),
    # the model
    "MODEL.INIT_WEIGHTS": _fixed("the weights are MODEL.BACKBONE.TAG (--pretrained: an open_clip tag or a weights "
                                 "file); pass that instead", ""),
    "MODEL.BACKBONE.NAME": _read("fastprompt.train.build.build_model"),
    "MODEL.BACKBONE.PRETRAINED": _fixed("the weights are MODEL.BACKBONE.TAG; pass --pretrained none for random "
                                        "weights", True),
    "MODEL.BACKBONE.TAG": _read("fastprompt.train.build.build_model"),
    "MODEL.HEAD.NAME": _fixed("the classifier is the prompted text features; Dassl's MLP head is not built", ""),
    "MODEL.HEAD.HIDDEN_LAYERS": _fixed("the classifier is the prompted text features; Dassl's MLP head is not "
                                       "built", (), element=int),
    "MODEL.HEAD.ACTIVATION": _inert(_NO_HEAD),
    "MODEL.HEAD.BN": _inert(_NO_HEAD),
    "MODEL.HEAD.DROPOUT": _inert(_NO_HEAD),
    # the optimizer and schedule
    "OPTIM.NAME": _read("fastprompt.train.schedule.build_optimizer (sgd, adam, adamw)"),
    "OPTIM.LR": _read("fastprompt.train.schedule"),
    "OPTIM.WEIGHT_DECAY": _read("fastprompt.train.schedule.build_optimizer"),
    "OPTIM.MOMENTUM": _read("fastprompt.train.schedule.build_optimizer (sgd)"),
    "OPTIM.SGD_DAMPNING": _read("fastprompt.train.schedule.build_optimizer (sgd)"),
    "OPTIM.SGD_NESTEROV": _read("fastprompt.train.schedule.build_optimizer (sgd)"),
    "OPTIM.RMSPROP_ALPHA": _inert("read only by OPTIM.NAME rmsprop, which is refused"),
    "OPTIM.ADAM_BETA1": _read("fastprompt.train.schedule.build_optimizer (adam, adamw)"),
    "OPTIM.ADAM_BETA2": _read("fastprompt.train.schedule.build_optimizer (adam, adamw)"),
    "OPTIM.ADAM_EPS": _read("fastprompt.train.schedule.build_optimizer (adam, adamw)"),
    "OPTIM.STAGED_LR": _fixed("only the prompt parameters train, with one learning rate (there are no new and "
                              "pretrained layers to stage)", False),
    "OPTIM.NEW_LAYERS": _inert("read only with OPTIM.STAGED_LR, which is refused", element=str),
    "OPTIM.BASE_LR_MULT": _inert("read only with OPTIM.STAGED_LR, which is refused"),
    "OPTIM.LR_SCHEDULER": _read("fastprompt.train.schedule.EpochSchedule"),
    "OPTIM.STEPSIZE": _read("fastprompt.train.schedule.EpochSchedule (single_step, multi_step)", element=int),
    "OPTIM.GAMMA": _read("fastprompt.train.schedule.EpochSchedule"),
    "OPTIM.MAX_EPOCH": _read("fastprompt.train.schedule / fastprompt.train.startup.run_settings"),
    "OPTIM.WARMUP_EPOCH": _read("fastprompt.train.schedule.EpochSchedule"),
    "OPTIM.WARMUP_TYPE": _read("fastprompt.train.schedule.EpochSchedule"),
    "OPTIM.WARMUP_CONS_LR": _read("fastprompt.train.schedule.EpochSchedule"),
    "OPTIM.WARMUP_MIN_LR": _read("fastprompt.train.schedule.EpochSchedule"),
    "OPTIM.WARMUP_RECOUNT": _read("fastprompt.train.schedule.EpochSchedule (False is refused)"),
    # the loop
    "TRAIN.CHECKPOINT_FREQ": _inert("Dassl writes model files every N epochs; fastprompt writes its resumable "
                                    "state at every epoch end (more often: TRAIN.CHECKPOINT_STEPS), and the trained "
                                    "prompts do not depend on when"),
    "TRAIN.PRINT_FREQ": _read("fastprompt.train.trainer (a log line every N batches)"),
    "TRAIN.COUNT_ITER": _fixed("an epoch is one pass over the labeled training set; there is no unlabeled set",
                               "train_x"),
    "TRAIN.PRECISION": _read("fastprompt.train.precision"),
    "TRAIN.GRAD_ACCUM_STEPS": _read("fastprompt.train.startup.run_settings"),
    "TRAIN.EVAL_FREQ": _read("fastprompt.train.startup.run_settings"),
    "TRAIN.CHECKPOINT_STEPS": _read("fastprompt.train.startup.run_settings"),
    "TRAIN.MAX_STEPS": _read("fastprompt.train.startup.run_settings"),
    "TRAIN.TENSORBOARD": _read("fastprompt.train.startup.run_settings"),
    "TRAIN.DEVICE": _read("fastprompt.train.startup (the process's device)"),
    "TRAIN.FEATURE_CACHE": _read("fastprompt.train.feature_setup", jobs=("train",)),
    "TRAIN.FEATURE_CACHE_DIR": _read("fastprompt.train.feature_setup", jobs=("train",)),
    "TRAIN.FEATURE_CACHE_VIEWS": _read("fastprompt.train.feature_setup", jobs=("train",)),
    "TRAIN.FROZEN_IMAGE_PRECISION": _read("fastprompt.train.build.build_learner"),
    "TRAIN.OBJECTIVE": _read("fastprompt.pretrain.run", jobs=("pretrain",)),
    # the test
    "TEST.EVALUATOR": _fixed("a run reports accuracy and macro-F1, and on a multi-task set (SoftCPT's general10, "
                             "...) each task's own metric and their average as ClassificationMT does "
                             "(fastprompt.train.task_eval); one dataset is one task", "Classification",
                             "ClassificationMT"),
    "TEST.PER_CLASS_RESULT": _inert("eval.json always holds the per-class accuracy"),
    "TEST.COMPUTE_CMAT": _fixed("no confusion matrix is written (eval.json holds the per-class accuracy)", False),
    "TEST.NO_TEST": _read("fastprompt.train.startup.run_settings"),
    "TEST.SPLIT": _fixed("the final test is on the test split (fastprompt eval tests other datasets)", "test"),
    "TEST.FINAL_MODEL": _read("fastprompt.train.trainer.TrainSettings"),
    "TEST.PER_TASK_RESULT": _inert("only prints: a multi-task run always logs and writes (eval.json) every task's "
                                   "metric beside their average"),
    "TEST.TRANSFER_ROOT": _read("fastprompt.pretrain.run (transfer evaluation)", jobs=("pretrain",)),
    "TEST.TRANSFER_DATASETS": _read("fastprompt.pretrain.run (transfer evaluation)", element=str, jobs=("pretrain",)),
    # ProGrad's train.py section (BeierZhu/Prompt-align): read by a prograd run (its audit_table), else no effect
    **{f"LOSS.{k}": Entry("foreign", "LOSS is ProGrad's section; only a prograd run reads it")
       for k in ("GM", "NAME", "ALPHA", "T", "LAMBDA")},
}

# Keys read by a method's learner or harness: their notes.
_HARNESS = {"PREC": "fastprompt.train.precision (when TRAIN.PRECISION is empty)"}


def _section_entries(method: str) -> Dict[str, Entry]:
    """``TRAINER.<SECTION>.<KEY>`` -> entry for ``method``'s own section."""
    spec = METHODS[method]
    out = {}
    for key in spec.defaults:
        name = f"TRAINER.{spec.section}.{key}"
        if key in spec.keys:
            out[name] = _read(f"{spec.learner} ({spec.keys[key][0]})")
        elif key in spec.harness:
            out[name] = _read(_HARNESS.get(key, "the trainer"))
        elif key in spec.fixed:
            out[name] = _fixed(f"fastprompt's {spec.learner} implements only this", spec.fixed[key])
        elif key in spec.inert:
            out[name] = _inert(spec.inert[key])
        else:  # a section key with no treatment: a bug in methods.py, reported by check_config
            continue
    return out


def audit_table(method: str) -> Dict[str, Entry]:
    """Every key of a ``method`` run's configuration -> its :class:`Entry` (the other methods' sections
    as ``foreign`` unless ``method`` names them in its ``foreign``)."""
    own = METHODS[method]
    table = dict(BASE)
    for other, spec in METHODS.items():
        if spec.section == own.section:
            continue
        for key in spec.defaults:
            name = f"TRAINER.{spec.section}.{key}"
            reason = own.foreign.get(f"{spec.section}.{key}")
            table.setdefault(name, _inert(reason) if reason else Entry(
                "foreign", f"{spec.section} is the section of {other}; this {method} run reads "
                           f"TRAINER.{own.section}"))
    table.update(_section_entries(method))
    table.update(_outside_entries(method))
    return table


def _outside_entries(method: str) -> Dict[str, Entry]:
    """The keys outside its section that ``method`` reads, fixes or declares (:attr:`MethodSpec.outside`:
    ProGrad's ``LOSS.*``, DePT's head and staged learning rates). A key only re-defaulted there
    (DePT's ``OPTIM.LR``) keeps its :data:`BASE` entry."""
    spec = METHODS[method]
    out = {}
    for key, entry in spec.outside.items():
        base = BASE.get(key)
        if entry.kwarg is not None:
            out[key] = _read(f"{spec.learner} ({entry.kwarg})")
        elif entry.read_by:
            out[key] = _read(entry.read_by, element=base.element if base else None)
        elif entry.allowed:
            out[key] = _fixed(entry.why or f"fastprompt's {spec.learner} implements only this", *entry.allowed)
        elif entry.why:
            out[key] = _inert(entry.why)
    return out


def element_type(key: str) -> Tuple[Optional[type], Optional[int]]:
    """``(item type, count)`` a sequence value of ``key`` must have (``None``: unchecked)."""
    entry = BASE.get(key)
    return (entry.element, entry.length) if entry is not None else (None, None)


def same_value(a: Any, b: Any) -> bool:
    """Config equality as YAML sees it: a list equals the tuple of the same items."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b or (isinstance(a, (int, float)) and isinstance(b, (int, float))
                                             and not isinstance(a, bool) and not isinstance(b, bool) and a == b)


def _plain(value: Any) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


def check_config(cfg: Dict[str, Any], flat: Dict[str, Any], defaults: Dict[str, Any]) -> None:
    """Refuse a resolved configuration that sets a value fastprompt would not honour.

    Args:
        cfg: the resolved configuration (its ``METHOD`` picks the table).
        flat: ``flatten(cfg)``; ``defaults``: ``flatten`` of the method's defaults (what ``foreign``
            keys must keep).
    """
    table = audit_table(cfg["METHOD"])
    missing = sorted(k for k in flat if k not in table)
    if missing:  # every key must be accounted for: a new key without an entry is a bug here
        raise RuntimeError(f"config keys without an entry in fastprompt.train.key_audit: {missing}")
    for key, value in flat.items():
        entry = table[key]
        if entry.kind == "fixed" and not any(same_value(value, a) for a in entry.allowed):
            shown = " or ".join(_plain(a) for a in entry.allowed)
            raise ConfigError(f"{key} {_plain(value)} is not supported: {entry.note}. Set {key} {shown} "
                              f"(or leave it out)")
        if entry.kind == "foreign" and not same_value(value, defaults[key]):
            raise ConfigError(f"{key} {_plain(value)} has no effect: {entry.note}. Remove it (or set the "
                              f"{cfg['METHOD']} setting under TRAINER.{METHODS[cfg['METHOD']].section})")


def check_job(cfg: Dict[str, Any], flat: Dict[str, Any], job: str) -> None:
    """Refuse keys that ``job`` (``train`` or ``pretrain``) never reads when they differ from their defaults."""
    base = flatten(base_defaults())
    for key, entry in BASE.items():
        if entry.kind == "read" and job not in entry.jobs and not same_value(flat[key], base[key]):
            other = " and ".join(f"fastprompt {j}" for j in entry.jobs)
            raise ConfigError(f"{key} {_plain(flat[key])} has no effect in fastprompt {job}: it is read by {other} "
                              f"only; remove it")
    if job == "pretrain" and str(flat["DATASET.NAME"]).lower() != "imagenet21k":
        raise ConfigError(f"DATASET.NAME {flat['DATASET.NAME']!r}: fastprompt pretrain trains on ImageNet-21K "
                          "(imagenet21k) only; remove it, or use fastprompt train for other datasets")
