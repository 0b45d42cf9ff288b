"""The SoftCPT variants and hard-sharing baselines the paper compares, as recipe + overrides.

kding1225/softcpt @ 7cab4b9 README runs them with its scripts (``scripts/main_mtcoop.sh``,
``main_mtcoop_cls_sample.sh``, ``main_mtcoop_hard.sh``), whose positional arguments become
``TRAINER.MTCOOP.*`` / ``TRAINER.MTCOOPH.*`` on top of ``configs/trainers/MTCoOp*/<cfg>.yaml``:

* SoftCPT-NATA ``0 False 4 False 16 False lin 1`` (CLASS_N_CTX, CLASS_CSC, TASK_N_CTX, TASK_CSC,
  N_CTX, CSC, PG_TYPE, PG_RATIO) — the values of the ``softcpt/*`` recipes; NATS ``TASK_CSC True``;
* CATA ``4 False 4 False 16 True lin 1``; CSTA ``CLASS_CSC True``; CATS ``TASK_CSC True``; CSTS both;
  on General-10 the class-feature variants run ``main_mtcoop_cls_sample.sh`` with
  ``CLS_SAMPLE_RATE 0.1`` (on Plant-6 and Fashion-20 ``main_mtcoop.sh``, every class);
* the hard-sharing baselines ``main_mtcoop_hard.sh ... 16 CSC TSC``: one prompt for all tasks
  ``False False``, one per task ``False True``, one per class ``True False``.

:func:`variant_run` turns a name and a dataset into ``(recipe, overrides)`` for ``fastprompt train``.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

from ..errors import ConfigError

__all__ = ["VARIANTS", "CONFIGS", "variant_run"]

# configs/trainers/MTCoOp/ and MTCoOpHard/ of the original: one recipe of each in softcpt/ and softcpt_hard/
CONFIGS = ("rn50_ep50", "rn101_ep50", "vit_b32_ep50", "vit_b16_ep50")

_CLASS_FEATURES = {"TRAINER.MTCOOP.CSC": "True", "TRAINER.MTCOOP.CLASS_N_CTX": "4"}

# name -> (recipe method folder, overrides on top of its recipe)
VARIANTS: Dict[str, Tuple[str, Dict[str, str]]] = {
    "NATA": ("softcpt", {}),
    "NATS": ("softcpt", {"TRAINER.MTCOOP.TASK_CSC": "True"}),
    "CATA": ("softcpt", dict(_CLASS_FEATURES)),
    "CSTA": ("softcpt", {**_CLASS_FEATURES, "TRAINER.MTCOOP.CLASS_CSC": "True"}),
    "CATS": ("softcpt", {**_CLASS_FEATURES, "TRAINER.MTCOOP.TASK_CSC": "True"}),
    "CSTS": ("softcpt", {**_CLASS_FEATURES, "TRAINER.MTCOOP.CLASS_CSC": "True", "TRAINER.MTCOOP.TASK_CSC": "True"}),
    "hard-shared": ("softcpt_hard", {}),
    "hard-per-task": ("softcpt_hard", {"TRAINER.MTCOOPH.TSC": "True"}),
    "hard-per-class": ("softcpt_hard", {"TRAINER.MTCOOPH.CSC": "True"}),
}

# The README's General-10 runs of the class-feature variants sample 10% of the negative classes.
_SAMPLED_ON = {"general10": "0.1"}


def variant_run(name: str, dataset: str, config: str = "rn50_ep50") -> Tuple[str, List[str]]:
    """``(recipe, overrides)`` of variant ``name`` (:data:`VARIANTS`) on ``dataset`` with the
    original config ``config`` (``rn50_ep50``, ``rn101_ep50``, ``vit_b32_ep50``, ``vit_b16_ep50``)."""
    if name not in VARIANTS:
        raise ConfigError(f"unknown SoftCPT variant {name!r}; known: {', '.join(VARIANTS)}")
    if config not in CONFIGS:
        raise ConfigError(f"unknown SoftCPT config {config!r}; the original's configs: {', '.join(CONFIGS)}")
    method, overrides = VARIANTS[name]
    overrides = dict(overrides)
    rate = _SAMPLED_ON.get(str(dataset).lower().replace("-", ""))
    if rate and overrides.get("TRAINER.MTCOOP.CSC") == "True":
        overrides["TRAINER.MTCOOP.CLS_SAMPLE_RATE"] = rate
    return f"{method}/{config}", [token for pair in overrides.items() for token in pair]
