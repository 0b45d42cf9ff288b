"""The evaluation protocols of the CoOp family and the recipe each method uses in each.

* ``base2new`` — base-to-novel generalisation (Zhou et al., CoCoOp, CVPR 2022, §4.1): per dataset
  and seed, train on the base half of the classes with 16 shots (``DATASET.SUBSAMPLE_CLASSES
  base``), test on the base classes, then test the same prompts on the novel half (KaiyangZhou/CoOp
  ``scripts/cocoop/base2new_train.sh`` / ``base2new_test.sh``).
* ``fewshot`` — few-shot learning (Zhou et al., CoOp, IJCV 2022): per dataset, K = 1, 2, 4, 8, 16
  shots of every class, tested on every class (KaiyangZhou/CoOp ``scripts/coop/main.sh``).
* ``crossdataset`` — cross-dataset transfer (CoCoOp §4.2): train on ImageNet (all 1,000 classes,
  16 shots) per seed, test on ImageNet and on the 10 other datasets (``scripts/cocoop/xd_train.sh``
  / ``xd_test.sh``).
* ``dg`` — domain generalisation (CoOp §4.3, CoCoOp §4.3): the same ImageNet-trained prompts,
  tested on ImageNet-V2, -Sketch, -A and -R.
* ``multitask`` — SoftCPT's multi-task few-shot learning (Ding et al., Neurocomputing 2024;
  kding1225/softcpt README): per multi-task dataset (General-10, Plant-6, Fashion-20), K = 1, 2,
  4, 8, 16 shots of every class of every task, all tasks trained together, each test image scored
  within its own task and every task by its own metric; for each SoftCPT variant and hard-sharing
  baseline of :data:`MULTITASK_VARIANTS` (``fastprompt.train.softcpt_variants``), with the
  README's config ``rn50_ep50`` by default. Method ``softcpt`` only.

Cross-dataset and DG share their training runs (one ImageNet run per seed), as in the originals.

:data:`PROTOCOL_RECIPES` gives, per method and protocol, the recipe (``fastprompt train
--recipe``) and the ``KEY VALUE`` settings the original scripts pass, with the script they come
from; ``original=False`` marks a protocol the method's repository has no script for (the method's
main recipe is used). The ResNet recipes (``rn50_*``) are not used: the learners read ViT image
towers only (:func:`fastprompt.train.build.check_backbone`).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import ConfigError

__all__ = ["PROTOCOLS", "DATASETS_11", "XD_TARGETS", "DG_TARGETS", "SOURCE", "DEFAULT_SHOTS", "METHOD_SHOTS",
           "ProtocolRecipe", "PROTOCOL_RECIPES", "recipe_for", "check_protocol", "MULTITASK_DATASETS",
           "MULTITASK_VARIANTS", "MULTITASK_CONFIG", "multitask_variants", "multitask_recipe"]

PROTOCOLS = ("base2new", "fewshot", "crossdataset", "dg", "multitask")
SOURCE = "imagenet"
# CoOp's 11 datasets in the column order of the CoCoOp / MaPLe / PromptSRC tables (CoOp folder names).
DATASETS_11 = ("imagenet", "caltech-101", "oxford_pets", "stanford_cars", "oxford_flowers", "food-101",
               "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101")
XD_TARGETS = DATASETS_11[1:]
DG_TARGETS = ("imagenetv2", "imagenet-sketch", "imagenet-adversarial", "imagenet-rendition")
DEFAULT_SHOTS = {"base2new": (16,), "fewshot": (1, 2, 4, 8, 16), "crossdataset": (16,), "dg": (16,),
                 "multitask": (1, 2, 4, 8, 16)}
# SoftCPT's multi-task sets (fastprompt.data.softcpt) and what the multitask protocol runs on each:
# SoftCPT-NATA and -NATS (the README figure's SoftCPT rows) and the three hard-sharing baselines
# (fastprompt.train.softcpt_variants.VARIANTS names them; --variants picks others, CATA etc.).
MULTITASK_DATASETS = ("general10", "plant6", "fashion20")
MULTITASK_VARIANTS = ("NATA", "NATS", "hard-shared", "hard-per-task", "hard-per-class")
MULTITASK_CONFIG = "rn50_ep50"  # the config of every script call in kding1225/softcpt's README
# (method, protocol) -> shots, where the method's own scripts train another count than the papers' 16:
# ProGrad's base2new_train_prograd.sh and eval.sh (the ImageNet model of its robustness table) use SHOTS=4.
METHOD_SHOTS = {("prograd", "base2new"): (4,), ("prograd", "crossdataset"): (4,), ("prograd", "dg"): (4,)}

# PromptSRC's few-shot GPA (muzairkhattak/PromptSRC configs/trainers/PromptSRC/
# vit_b16_c2_ep50_batch4_4+4ctx_few_shot.yaml, comment): mean/std 30/30 or 45/5 by dataset.
_PROMPTSRC_GPA_45_5 = ("stanford_cars", "oxford_flowers", "fgvc_aircraft", "dtd", "eurosat")


@dataclasses.dataclass(frozen=True)
class ProtocolRecipe:
    """``recipe`` with ``overrides`` (``KEY VALUE`` of the original script); ``source`` names the script."""

    recipe: str
    overrides: Tuple[Tuple[str, object], ...] = ()
    source: str = ""
    original: bool = True


def _r(recipe, source, *overrides, original=True) -> ProtocolRecipe:
    return ProtocolRecipe(recipe, tuple(overrides), source, original)


_COOP_FEWSHOT = "KaiyangZhou/CoOp scripts/coop/main.sh (N_CTX 16, CSC False, end) and COOP.md's epochs per shot"
_MAIN = "no original script for this protocol: the method's main recipe"
_PROGRAD = "BeierZhu/Prompt-align ProGrad.public"
_PROGRAD_SETTINGS = (("TRAINER.COOP.N_CTX", 16), ("TRAINER.COOP.CSC", False),
                     ("TRAINER.COOP.CLASS_TOKEN_POSITION", "end"), ("LOSS.LAMBDA", 1.0))
_PROGRAD_LAMBDA_08 = ("oxford_flowers", "dtd", "eurosat")  # README: 8 and 16 shots with LAMBDA 0.8

# method -> protocol -> ProtocolRecipe ("xd" = the ImageNet source run of crossdataset and dg)
PROTOCOL_RECIPES: Dict[str, Dict[str, ProtocolRecipe]] = {
    "coop": {
        # CoCoOp's CoOp baseline: M = 4 initialised with "a photo of a", 200 epochs (ImageNet 50)
        "base2new": _r("coop/vit_b16_ctxv1", "CoCoOp paper §4.1 (CoOp baseline: 4 tokens 'a photo of a')",
                       ("TRAINER.COOP.N_CTX", 4)),
        "fewshot": _r("coop/vit_b16", _COOP_FEWSHOT, ("TRAINER.COOP.N_CTX", 16), ("TRAINER.COOP.CSC", False),
                      ("TRAINER.COOP.CLASS_TOKEN_POSITION", "end")),
        "xd": _r("coop/vit_b16_ep50", "KaiyangZhou/CoOp scripts/coop/main.sh on ImageNet (16 shots, 50 epochs)"),
    },
    "cocoop": {
        "base2new": _r("cocoop/vit_b16_c4_ep10_batch1_ctxv1", "KaiyangZhou/CoOp scripts/cocoop/base2new_train.sh"),
        "fewshot": _r("cocoop/vit_b16_c4_ep10_batch1_ctxv1", "the base-to-novel config (CoCoOp's few-shot numbers "
                      "are PromptSRC's runs of it)", original=False),
        "xd": _r("cocoop/vit_b16_c4_ep10_batch1_ctxv1", "KaiyangZhou/CoOp scripts/cocoop/xd_train.sh"),
    },
    "kgcoop": {
        "base2new": _r("kgcoop/vit_b16_ep100_ctxv1", "htyao89/KgCoOp KgCoOp/scripts/base2new_train.sh (ViT-B/16 "
                       "config of the paper's tables)", ("TRAINER.COOP.N_CTX", 4), ("TRAINER.COOP.W", 8.0)),
        "fewshot": _r("kgcoop/vit_b16_ep100_ctxv1", "htyao89/KgCoOp KgCoOp/scripts/run.sh",
                      ("TRAINER.COOP.N_CTX", 4), ("TRAINER.COOP.W", 8.0)),
        "xd": _r("kgcoop/vit_b16_ep100_ctxv1", "htyao89/KgCoOp KgCoOp/scripts/xd_train.sh (16 shots, CoCoOp's protocol)",
                 ("TRAINER.COOP.N_CTX", 4), ("TRAINER.COOP.W", 8.0)),
    },
    "tcp": {
        # the script's test step loads epoch 25 for SUN397 and ImageNet, which the 50-epoch config never writes
        "base2new": _r("tcp/vit_b16_ep100_ctxv1", "htyao89/Textual-based_Class-aware_prompt_tuning "
                       "scripts/base2new_train.sh", ("TRAINER.COOP.N_CTX", 4), ("TRAINER.COOP.W", 1.0)),
        "fewshot": _r("tcp/vit_b16_ep100_ctxv1", _MAIN, original=False),
        "xd": _r("tcp/vit_b16_ep100_ctxv1", _MAIN, original=False),
    },
    "maple": {
        "base2new": _r("maple/vit_b16_c2_ep5_batch4_2ctx",
                       "muzairkhattak/multimodal-prompt-learning scripts/maple/base2new_train_maple.sh"),
        "fewshot": _r("maple/vit_b16_c2_ep5_batch4_2ctx", "muzairkhattak/multimodal-prompt-learning (the "
                      "base-to-novel config with DATASET.NUM_SHOTS K)"),
        "xd": _r("maple/vit_b16_c2_ep5_batch4_2ctx_cross_datasets",
                 "muzairkhattak/multimodal-prompt-learning scripts/maple/xd_train_maple.sh"),
    },
    "promptsrc": {
        "base2new": _r("promptsrc/vit_b16_c2_ep20_batch4_4+4ctx", "muzairkhattak/PromptSRC scripts/promptsrc/"
                       "base2new_train.sh"),
        "fewshot": _r("promptsrc/vit_b16_c2_ep50_batch4_4+4ctx_few_shot", "muzairkhattak/PromptSRC "
                      "scripts/promptsrc/few_shot.sh (GPA 30/30, or 45/5 on Cars, Flowers, Aircraft, DTD, EuroSAT)"),
        "xd": _r("promptsrc/vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets", "muzairkhattak/PromptSRC "
                 "scripts/promptsrc/xd_train.sh (it names an ..._ep5_... file; the repository's cross-dataset "
                 "config is this one)"),
    },
    "vpt": {
        "base2new": _r("vpt/vit_b16_c2_ep5_batch4_4", "muzairkhattak/multimodal-prompt-learning scripts/vpt/"
                       "base2new_train_vpt.sh"),
        "fewshot": _r("vpt/vit_b16_c2_ep5_batch4_4", _MAIN, original=False),
        "xd": _r("vpt/vit_b16_c2_ep5_batch4_4", "muzairkhattak/multimodal-prompt-learning scripts/vpt/xd_train_vpt.sh"),
    },
    "pre": {
        "base2new": _r("pre/vit_b16_ep50_ctxv1", "minhanh151/PRE scripts/base2new_train.sh"),
        "fewshot": _r("pre/vit_b16_ep50_ctxv1", _MAIN, original=False),
        "xd": _r("pre/vit_b16_ep50_ctxv1", _MAIN, original=False),
    },
    "softcpt": {
        "base2new": _r("softcpt/vit_b16_ep50", _MAIN, original=False),
        "fewshot": _r("softcpt/vit_b16_ep50", "kding1225/softcpt README (main_mtcoop.sh, 1-16 shots, 50 epochs)"),
        "xd": _r("softcpt/vit_b16_ep50", _MAIN, original=False),
        # each variant's recipe comes from fastprompt.train.softcpt_variants (multitask_recipe below)
        "multitask": _r(f"softcpt/{MULTITASK_CONFIG}", "kding1225/softcpt README (main_mtcoop.sh, "
                        "main_mtcoop_cls_sample.sh, main_mtcoop_hard.sh; 1-16 shots, rn50_ep50)"),
    },
    "pomp": {
        "base2new": _r("pomp/vit_b16_ep5", _MAIN, original=False),
        "fewshot": _r("pomp/vit_b16_ep5", _MAIN, original=False),
        # POMP's own source is ImageNet-21K (scripts/pomp/main.sh); here the CoCoOp protocol's ImageNet-1K
        "xd": _r("pomp/vit_b16_ep5", "amazon-science/prompt-pretraining configs (trained on ImageNet-1K here, "
                 "on ImageNet-21K in the paper)", original=False),
    },
    "prograd": {  # ProGrad ships RN50 configs only (a text-prompt method: any image tower serves)
        "base2new": _r("prograd/rn50_ep100", f"{_PROGRAD}/scripts/base2new_train_prograd.sh (4 shots; ImageNet "
                       "rn50_ep50, README)", *_PROGRAD_SETTINGS),
        "fewshot": _r("prograd/rn50", f"{_PROGRAD}/scripts/prograd.sh and README (1 shot rn50_ep50, 2 and 4 shots "
                      "rn50_ep100, 8 and 16 rn50; LAMBDA 0.8 for 8 and 16 shots on Flowers102, DTD, EuroSAT)",
                      *_PROGRAD_SETTINGS),
        "xd": _r("prograd/rn50_ep50", f"{_PROGRAD}/README (robustness: the 4-shot ImageNet model, --load-epoch 50, "
                 "tested with scripts/eval.sh; the repository has no cross-dataset script)", *_PROGRAD_SETTINGS),
    },
    "rpp": {
        "base2new": _r("rpp/vit_b16_ep5", "fastprompt's RPP recipe (RPP has no public code)", original=False),
        "fewshot": _r("rpp/vit_b16_ep5", "fastprompt's RPP recipe (RPP has no public code)", original=False),
        "xd": _r("rpp/vit_b16_ep5", "fastprompt's RPP recipe (RPP has no public code)", original=False),
    },
}

# DePT (Koorye/DePT configs.py coop_dept / kgcoop_dept, mode 'b2n' or 'xd', run by parallel_runner.py: 16 shots,
# seeds 1-3, the xd source ImageNet with SUBSAMPLE_CLASSES all). Its head trains only on base classes or
# ImageNet (elsewhere its forward asserts), so it has no few-shot script: the main recipe on all classes.
_DEPT_RUNNER = "Koorye/DePT configs.py {} with parallel_runner.py (mode {})"
for _method, _recipe in (("coop_dept", "coop_dept/vit_b16_ep10_bs4_lr35"),
                         ("kgcoop_dept", "kgcoop_dept/vit_b16_ep10_ctxv1_bs4_lr35"),
                         ("cocoop_dept", "cocoop_dept/vit_b16_c4_ep10_batch1_ctxv1"),
                         ("maple_dept", "maple_dept/vit_b16_c2_ep10_batch4_2ctx")):
    PROTOCOL_RECIPES[_method] = {
        "base2new": _r(_recipe, _DEPT_RUNNER.format(_method, "b2n")),
        "fewshot": _r(_recipe, _MAIN, original=False),
        "xd": _r(_recipe, _DEPT_RUNNER.format(_method, "xd")),
    }


def check_protocol(protocol: str, method: str) -> None:
    """A ``ConfigError`` naming the choices for an unknown protocol or method."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r} (known: {', '.join(PROTOCOLS)})")
    if method not in PROTOCOL_RECIPES:
        raise ConfigError(f"unknown method {method!r} for fastprompt run (known: {', '.join(PROTOCOL_RECIPES)})")
    key = lambda p: "xd" if p in ("crossdataset", "dg") else p  # noqa: E731  (their shared source run)
    if key(protocol) not in PROTOCOL_RECIPES[method]:
        have = [p for p in PROTOCOLS if key(p) in PROTOCOL_RECIPES[method]]
        with_it = [m for m, r in PROTOCOL_RECIPES.items() if protocol in r]
        raise ConfigError(f"method {method!r} has no {protocol} protocol (its protocols: {', '.join(have)}; "
                          f"{protocol} runs {', '.join(with_it)})")


def recipe_for(method: str, protocol: str, dataset: str, shots: int) -> ProtocolRecipe:
    """The recipe and settings of ``method`` for one run of ``protocol`` (``dataset``: a CoOp folder name)."""
    check_protocol(protocol, method)
    if protocol == "multitask":
        raise ConfigError("the multitask protocol's recipe depends on the variant: use multitask_recipe")
    key = "xd" if protocol in ("crossdataset", "dg") else protocol
    base = PROTOCOL_RECIPES[method][key]
    if method == "coop" and protocol == "fewshot":
        # COOP.md: 1 shot 50 epochs, 2/4 shots 100, 8/16 shots 200; ImageNet 50 for every K
        name = "coop/vit_b16_ep50" if dataset == SOURCE or shots <= 1 else (
            "coop/vit_b16_ep100" if shots <= 4 else "coop/vit_b16")
        return dataclasses.replace(base, recipe=name)
    if method == "coop" and protocol == "base2new" and dataset == SOURCE:
        return dataclasses.replace(base, recipe="coop/vit_b16_ep50_ctxv1")
    if method == "prograd" and protocol == "base2new" and dataset == SOURCE:
        return dataclasses.replace(base, recipe="prograd/rn50_ep50")
    if method == "prograd" and protocol == "fewshot":
        name = "prograd/rn50_ep50" if shots <= 1 else ("prograd/rn50_ep100" if shots <= 4 else "prograd/rn50")
        lam = 0.8 if shots >= 8 and dataset in _PROGRAD_LAMBDA_08 else 1.0
        return dataclasses.replace(base, recipe=name, overrides=base.overrides[:-1] + (("LOSS.LAMBDA", lam),))
    if method == "promptsrc" and protocol == "fewshot":
        gpa = (45, 5) if dataset in _PROMPTSRC_GPA_45_5 else (30, 30)
        return dataclasses.replace(base, overrides=base.overrides + (("TRAINER.PROMPTSRC.GPA_MEAN", gpa[0]),
                                                                     ("TRAINER.PROMPTSRC.GPA_STD", gpa[1])))
    return base


def multitask_variants(names: Optional[Sequence[str]]) -> List[str]:
    """The variants a multitask grid runs (default :data:`MULTITASK_VARIANTS`), checked."""
    from ..train.softcpt_variants import VARIANTS

    out: List[str] = []
    for name in names or MULTITASK_VARIANTS:
        if name not in VARIANTS:
            raise ConfigError(f"--variants: unknown SoftCPT variant {name!r} (known: {', '.join(VARIANTS)})")
        if name not in out:
            out.append(name)
    return out


def multitask_recipe(variant: str, dataset: str, config: str = MULTITASK_CONFIG) -> ProtocolRecipe:
    """The recipe and settings of one multitask run: ``variant`` on ``dataset`` with the original's
    config ``config`` (:func:`fastprompt.train.softcpt_variants.variant_run`)."""
    from ..train.softcpt_variants import variant_run

    recipe, tokens = variant_run(variant, dataset, config)
    pairs = tuple(zip(tokens[::2], tokens[1::2]))
    return _r(recipe, f"kding1225/softcpt README: SoftCPT-{variant}" if not variant.startswith("hard") else
              f"kding1225/softcpt README: main_mtcoop_hard.sh ({variant})", *pairs)


def default_datasets(protocol: str) -> Tuple[str, ...]:
    """The datasets a protocol covers by default (targets for crossdataset / dg)."""
    return {"base2new": DATASETS_11, "fewshot": DATASETS_11, "crossdataset": XD_TARGETS,
            "dg": DG_TARGETS, "multitask": MULTITASK_DATASETS}[protocol]


def _multitask_datasets(names: Optional[Sequence[str]]) -> List[str]:
    from ..data.softcpt.sources import is_multitask, resolve_multitask

    out: List[str] = []
    for name in names or MULTITASK_DATASETS:
        if not is_multitask(name):
            raise ConfigError(f"--datasets: {name!r} is not a multi-task dataset; the multitask protocol runs "
                              f"{', '.join(MULTITASK_DATASETS)} (a CoOp dataset: --protocol fewshot)")
        folder = resolve_multitask(name).name
        if folder not in out:
            out.append(folder)
    return out


def normalise_datasets(names: Optional[Sequence[str]], protocol: str) -> List[str]:
    """CoOp folder names for ``names`` (class names and aliases accepted); custom kinds refused.
    The multitask protocol: fastprompt's names of the multi-task sets (``general10``, ...)."""
    from ..data.registry import resolve
    from ..errors import DataError

    if protocol == "multitask":
        return _multitask_datasets(names)
    out: List[str] = []
    for name in names or default_datasets(protocol):
        try:
            spec = resolve(name)
        except DataError as exc:
            raise ConfigError(f"--datasets: {exc}") from None
        if spec is None:
            raise ConfigError(f"--datasets: {name!r} is custom data; fastprompt run runs the CoOp datasets "
                              "(train custom data with fastprompt train --dataset)")
        if protocol in ("crossdataset", "dg") and spec.folder == SOURCE:
            continue  # the source is always trained and tested
        if spec.folder not in out:
            out.append(spec.folder)
    if not out:
        raise ConfigError(f"--datasets: no {protocol} target left (ImageNet is the source)")
    return out
