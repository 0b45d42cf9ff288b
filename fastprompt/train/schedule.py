"""Optimizer and learning-rate schedule of Dassl (KaiyangZhou/Dassl.pytorch ``dassl/optim``).

The schedule is per epoch, as in Dassl (``update_lr()`` after the last batch of every epoch):
with ``WARMUP_EPOCH = W > 0`` and ``WARMUP_TYPE = constant`` (every CoOp-family config), epochs
``0 .. W-1`` run at ``WARMUP_CONS_LR`` and epoch ``e >= W`` at the successor's value for epoch
``e - W`` (``WARMUP_RECOUNT = True``: the successor restarts at 0). The cosine successor is
``CosineAnnealingLR(T_max = MAX_EPOCH)``, ``lr(t) = base * (1 + cos(pi * t / MAX_EPOCH)) / 2``,
so it never reaches 0 (``ConstantWarmupScheduler`` in ``lr_scheduler.py``; e.g. base 0.002,
50 epochs: epoch 0 at 1e-5, epoch 1 at 0.002, epoch 49 at 7.885e-6). ``linear`` warm-up starts at
``WARMUP_MIN_LR`` for epoch 0 and runs ``base * e / W`` after. ``single_step`` / ``multi_step``
are ``StepLR`` / ``MultiStepLR``.
"""
from __future__ import annotations

import bisect
import math
from typing import Any, Dict, Iterable, List, Sequence, Tuple

import torch

from ..errors import ConfigError

__all__ = ["EpochSchedule", "build_optimizer", "param_groups", "schedule_from_config"]

SCHEDULERS = ("cosine", "single_step", "multi_step")
OPTIMIZERS = ("sgd", "adam", "adamw")


class EpochSchedule:
    """``lr_at(epoch)`` for 0-based epochs; pure function of the epoch, so resuming needs no state."""

    def __init__(self, base_lr: float, max_epoch: int, scheduler: str = "cosine", *, warmup_epoch: int = -1,
                 warmup_type: str = "linear", warmup_cons_lr: float = 1e-5, warmup_min_lr: float = 1e-5,
                 warmup_recount: bool = True, stepsize: Sequence[int] = (-1,), gamma: float = 0.1):
        if scheduler not in SCHEDULERS:
            raise ConfigError(f"OPTIM.LR_SCHEDULER must be one of {SCHEDULERS}, got {scheduler!r}")
        if warmup_epoch > 0 and warmup_type not in ("constant", "linear"):
            raise ConfigError(f"OPTIM.WARMUP_TYPE must be constant or linear, got {warmup_type!r}")
        if warmup_epoch > 0 and not warmup_recount:
            raise ConfigError("OPTIM.WARMUP_RECOUNT False is not supported (every original config keeps True)")
        if max_epoch < 1:
            raise ConfigError(f"OPTIM.MAX_EPOCH must be >= 1, got {max_epoch}")
        self.base_lr, self.max_epoch, self.scheduler = float(base_lr), int(max_epoch), scheduler
        self.warmup_epoch, self.warmup_type = int(warmup_epoch), warmup_type
        self.warmup_cons_lr, self.warmup_min_lr = float(warmup_cons_lr), float(warmup_min_lr)
        self.stepsize, self.gamma = [int(s) for s in stepsize], float(gamma)

    def _successor(self, t: int) -> float:
        if self.scheduler == "cosine":
            return self.base_lr * (1 + math.cos(math.pi * t / self.max_epoch)) / 2
        if self.scheduler == "single_step":
            step = self.stepsize[-1] if self.stepsize[-1] > 0 else self.max_epoch
            return self.base_lr * self.gamma ** (t // step)
        return self.base_lr * self.gamma ** bisect.bisect_right(sorted(self.stepsize), t)

    def lr_at(self, epoch: int, lr_mult: float = 1.0) -> float:
        """The rate of ``epoch``; ``lr_mult`` scales the base rate of a staged parameter group (as
        each group's own ``base_lrs`` in Dassl's schedulers: the constant warm-up rate and the
        linear warm-up's first rate are the same for every group)."""
        w = self.warmup_epoch
        if w > 0 and epoch < w:
            if self.warmup_type == "constant":
                return self.warmup_cons_lr
            return self.warmup_min_lr if epoch == 0 else self.base_lr * lr_mult * epoch / w
        return self._successor(epoch - max(w, 0)) * lr_mult


def schedule_from_config(optim: Dict[str, Any]) -> EpochSchedule:
    """The schedule of a resolved ``OPTIM`` section."""
    return EpochSchedule(optim["LR"], optim["MAX_EPOCH"], optim["LR_SCHEDULER"],
                         warmup_epoch=optim["WARMUP_EPOCH"], warmup_type=optim["WARMUP_TYPE"],
                         warmup_cons_lr=optim["WARMUP_CONS_LR"], warmup_min_lr=optim["WARMUP_MIN_LR"],
                         warmup_recount=optim["WARMUP_RECOUNT"], stepsize=optim["STEPSIZE"], gamma=optim["GAMMA"])


def param_groups(named_params: Sequence[Tuple[str, torch.nn.Parameter]], optim: Dict[str, Any]) -> List[Any]:
    """The parameters, or with ``OPTIM.STAGED_LR`` (DePT) two groups as Koorye/DePT ``trainers/optim.py``
    builds them: a parameter whose top-level name contains one of ``NEW_LAYERS`` trains at
    ``LR * LR_EXP``, every other at ``LR * BASE_LR_MULT`` (``lr_mult`` of the group, read each epoch)."""
    if not optim.get("STAGED_LR"):
        return [p for _, p in named_params]
    layers = optim["NEW_LAYERS"]
    layers = [layers] if isinstance(layers, str) else list(layers)
    new = [p for n, p in named_params if any(layer in n.split(".")[0] for layer in layers)]
    base = [p for n, p in named_params if not any(layer in n.split(".")[0] for layer in layers)]
    groups = [{"params": base, "lr_mult": float(optim["BASE_LR_MULT"])},
              {"params": new, "lr_mult": float(optim.get("LR_EXP", 1.0))}]
    return [g for g in groups if g["params"]]


def build_optimizer(params: Iterable[torch.nn.Parameter], optim: Dict[str, Any]) -> torch.optim.Optimizer:
    """Dassl's ``build_optimizer`` for ``sgd`` / ``adam`` / ``adamw`` over ``params``: parameters, or the
    groups of :func:`param_groups` (``STAGED_LR``, DePT's head; every other method trains its prompt
    parameters at one rate)."""
    params = list(params)
    name = str(optim["NAME"]).lower()
    if not params:
        raise ConfigError("the learner has no trainable parameters")
    lr, wd = float(optim["LR"]), float(optim["WEIGHT_DECAY"])
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(optim["MOMENTUM"]), weight_decay=wd,
                               dampening=float(optim["SGD_DAMPNING"]), nesterov=bool(optim["SGD_NESTEROV"]))
    betas = (float(optim["ADAM_BETA1"]), float(optim["ADAM_BETA2"]))
    eps = float(optim.get("ADAM_EPS", 1e-8))  # fastprompt's key; TCP's README edits Dassl's to 1e-3
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, betas=betas, eps=eps)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, betas=betas, eps=eps)
    raise ConfigError(f"OPTIM.NAME must be one of {OPTIMIZERS}, got {optim['NAME']!r}")
