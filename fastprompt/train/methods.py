"""Each method's original trainer section and how it maps onto the fastprompt learner.

Every CoOp-family repository reads its method's settings from one ``TRAINER.<SECTION>`` of the
Dassl config (added by the ``extend_cfg`` of its ``train.py``). :data:`METHODS` records, per
fastprompt method, the original trainer names (``--trainer``), that section with the defaults of
the method's own repository, and how each key becomes a learner keyword argument. Keys the
harness reads (``PREC``) and keys that are accepted but change nothing here are listed too, so an
original YAML file loads unchanged; a value this port cannot honour is an error naming the key.

Sources (``train.py`` ``extend_cfg``): KaiyangZhou/CoOp @ ff61507 (CoOp, CoCoOp), htyao89/KgCoOp
@ c43ccc3, htyao89/Textual-based_Class-aware_prompt_tuning @ bd97bec (TCP), muzairkhattak/multimodal-prompt-learning @ 69bce21 (MaPLe, VPT), muzairkhattak/PromptSRC
@ bb95c77, minhanh151/PRE @ 08be701, kding1225/softcpt @ 7cab4b9 (``MTCOOP``, and ``MTCOOPH`` of its
hard-sharing baselines), amazon-science/
prompt-pretraining @ 24bca56 (POMP), BeierZhu/Prompt-align @ 1b76203 (ProGrad: ``TRAINER.COOP`` and the
top-level ``LOSS`` section: its ``outside`` keys), Koorye/DePT @ d4ff416 (DePT on CoOp, KgCoOp, CoCoOp, MaPLe).
RPP (Chen et al., arXiv 2409.06166) has no public code: its ``TRAINER.RPP`` section is fastprompt's, one key per
``RPPConfig`` field.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple

from ..errors import ConfigError

__all__ = ["MethodSpec", "Outside", "METHODS", "method_of_trainer", "learner_kwargs", "DEEP_VISION",
           "MULTITASK_METHODS", "BASE_DEFAULT", "learner_reads", "run_reads", "fixed_at", "no_effect", "redefault"]

def _same(value):
    return value


def _kgcoop_ctx_init(value):
    # KgCoOp's PromptLearner uses the fixed phrase "a photo of a" whenever CTX_INIT is truthy.
    if isinstance(value, str) and value:
        return value
    return "a photo of a" if value else ""


class _BaseDefault:
    def __repr__(self) -> str:
        return "BASE_DEFAULT"


# An outside key's default when the method's train.py leaves it at Dassl's (or fastprompt's own).
BASE_DEFAULT: Any = _BaseDefault()


@dataclasses.dataclass(frozen=True)
class Outside:
    """One key outside the method's ``TRAINER.<SECTION>`` (dotted, e.g. ``LOSS.T``) and what a run of the
    method does with it; build it with :func:`learner_reads`, :func:`run_reads`, :func:`fixed_at`,
    :func:`no_effect` or :func:`redefault`.

    ``default``: the value the method's ``train.py`` gives it (its config starts there), or
    :data:`BASE_DEFAULT` (Dassl's or fastprompt's own, :mod:`fastprompt.train.defaults`). Then at
    most one treatment: ``kwarg`` (with ``convert``): the learner keyword argument it sets;
    ``read_by``: the module of the run that reads it; ``allowed``: accepted only at these values
    (``why``: what fastprompt implements); ``why`` alone: accepted with any value, and why it
    changes nothing. None of them: only re-defaulted, and treated as every other run treats it
    (:data:`fastprompt.train.key_audit.BASE`)."""

    default: Any = BASE_DEFAULT
    kwarg: Optional[str] = None
    convert: Callable = _same
    read_by: str = ""
    allowed: Tuple[Any, ...] = ()
    why: str = ""

    def __post_init__(self):
        treatments = [self.kwarg is not None, bool(self.read_by), bool(self.allowed or self.why)]
        if sum(treatments) > 1:
            raise ValueError(f"an outside key has one treatment (kwarg, read_by, allowed or why), got {self}")


def learner_reads(kwarg: str, convert: Callable = _same, default: Any = BASE_DEFAULT) -> Outside:
    """A key that sets the learner's ``kwarg`` (``convert``-ed)."""
    return Outside(default, kwarg=kwarg, convert=convert)


def run_reads(where: str, default: Any = BASE_DEFAULT) -> Outside:
    """A key that the run itself reads, in ``where`` (a module and what it does with the key)."""
    return Outside(default, read_by=where)


def fixed_at(*allowed: Any, why: str = "", default: Any = BASE_DEFAULT) -> Outside:
    """A key accepted only at one of ``allowed`` (``why``: what fastprompt implements; empty: the
    learner implements only these)."""
    return Outside(default, allowed=allowed, why=why)


def no_effect(why: str, default: Any = BASE_DEFAULT) -> Outside:
    """A key accepted with any value: ``why`` it changes nothing (e.g. declared, never read)."""
    return Outside(default, why=why)


def redefault(default: Any) -> Outside:
    """A key whose default the method's train.py changes and that every run treats alike (``OPTIM.LR``)."""
    return Outside(default)


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """``keys``: section key -> ``(learner kwarg, converter)``; ``harness``: section keys the trainer
    reads (``PREC``); ``inert``: keys accepted with any value (unused by the original as well) ->
    why; ``fixed``: keys accepted only at the value given (what this port implements); ``foreign``:
    ``SECTION.KEY`` of another method's section that the original's own config files set and its
    trainer never reads -> why (accepted with any value; other foreign keys must keep their
    defaults, :mod:`fastprompt.train.key_audit`); ``depths``: section -> ``{depth key: the towers
    it prompts}`` (``"text"``, ``"vision"``), each bounded by those towers' layer counts;
    ``outside``: the method's keys outside its section (:class:`Outside`)."""

    method: str
    learner: str
    trainer_names: Tuple[str, ...]
    section: str
    defaults: Dict[str, Any]
    keys: Dict[str, Tuple[str, Callable]]
    harness: Tuple[str, ...] = ("PREC",)
    inert: Dict[str, str] = dataclasses.field(default_factory=dict)
    fixed: Dict[str, Any] = dataclasses.field(default_factory=dict)
    foreign: Dict[str, str] = dataclasses.field(default_factory=dict)
    depths: Callable[[Dict[str, Any]], Dict[str, Tuple[str, ...]]] = lambda section: {}
    deep_vision: bool = False
    dataset_template: Optional[str] = None  # learner kwarg set from the dataset's class name
    # the keys outside TRAINER.<SECTION> that the method's train.py adds, re-defaults or reads (ProGrad's
    # LOSS.*, DePT's head and staged learning rates): dotted key -> its :class:`Outside`
    outside: Dict[str, "Outside"] = dataclasses.field(default_factory=dict)

    def section_defaults(self) -> Dict[str, Any]:
        return dict(self.defaults)


def _k(**pairs) -> Dict[str, Tuple[str, Callable]]:
    return {key: (value, _same) if isinstance(value, str) else value for key, value in pairs.items()}


_COOP_KEYS = _k(N_CTX="n_ctx", CSC="csc", CTX_INIT="ctx_init", CLASS_TOKEN_POSITION="class_token_position")
_COOP_DEFAULTS = dict(N_CTX=16, CSC=False, CTX_INIT="", PREC="fp16", CLASS_TOKEN_POSITION="end")

# The towers RPP's TRAINER.RPP.BRANCHES prompts (RPPConfig.branches); any other value prompts both
# here and is refused by RPPConfig itself.
_RPP_TOWERS = {"text": ("text",), "vision": ("vision",)}

METHODS: Dict[str, MethodSpec] = {s.method: s for s in [
    MethodSpec("coop", "CoOpLearner", ("CoOp",), "COOP", _COOP_DEFAULTS, _COOP_KEYS),
    MethodSpec("cocoop", "CoCoOpLearner", ("CoCoOp",), "COCOOP", dict(N_CTX=16, CTX_INIT="", PREC="fp16"),
               _k(N_CTX="n_ctx", CTX_INIT="ctx_init")),
    MethodSpec("kgcoop", "KgCoOpLearner", ("KgCoOp",), "COOP",
               dict(ALPHA=1.0, N_CTX=16, CSC=False, CTX_INIT=False, W=1.0, PREC="fp16", CLASS_TOKEN_POSITION="end"),
               {**_COOP_KEYS, "CTX_INIT": ("ctx_init", _kgcoop_ctx_init), "W": ("w", float)},
               inert={"ALPHA": "declared by KgCoOp's train.py, never read by its trainer (the loss weight is W)"},
               dataset_template="template"),
    # TCP reads TRAINER.COOP (its train.py extend_cfg: CoOp's keys plus W and ALPHA); INSERT_LAYER is
    # fastprompt's: the text block the class-aware tokens enter (8 written in the original's code; -1:
    # two thirds of the text depth, which is 8 on every CLIP text tower, 12 blocks).
    MethodSpec("tcp", "TCPLearner", ("TCP",), "COOP",
               dict(ALPHA=1.0, N_CTX=16, CSC=False, CTX_INIT=False, W=1.0, PREC="fp16", CLASS_TOKEN_POSITION="end",
                    INSERT_LAYER=-1),
               {**_k(N_CTX="n_ctx"), "CTX_INIT": ("ctx_init", _kgcoop_ctx_init),
                "INSERT_LAYER": ("insert_layer", lambda v: None if int(v) < 0 else int(v))},
               inert={"ALPHA": "declared by TCP's train.py, never read by its trainer",
                      "W": "handed to TCP's text encoder, whose insertion block overwrites it with 1.0 "
                           "(trainers/clip_text/model.py); the loss weight is the constant 8.0",
                      "CLASS_TOKEN_POSITION": "stored by TCP's PromptLearner, never read: the prompt is the "
                                              "dataset's template"},
               fixed={"CSC": False}, dataset_template="template"),
    MethodSpec("maple", "MaPLeLearner", ("MaPLe",), "MAPLE",
               dict(N_CTX=2, CTX_INIT="a photo of a", PREC="fp16", PROMPT_DEPTH=9),
               _k(N_CTX="n_ctx", CTX_INIT="ctx_init", PROMPT_DEPTH="prompt_depth"), deep_vision=True,
               depths=lambda section: {"PROMPT_DEPTH": ("text", "vision")}),
    MethodSpec("promptsrc", "PromptSRCLearner", ("PromptSRC",), "PROMPTSRC",
               dict(N_CTX_VISION=4, N_CTX_TEXT=4, CTX_INIT="a photo of a", PREC="fp16", PROMPT_DEPTH_VISION=9,
                    PROMPT_DEPTH_TEXT=9, TEXT_LOSS_WEIGHT=25, IMAGE_LOSS_WEIGHT=10, GPA_MEAN=15, GPA_STD=1),
               {**_k(N_CTX_VISION="n_ctx_vision", N_CTX_TEXT="n_ctx_text", CTX_INIT="ctx_init",
                     PROMPT_DEPTH_VISION="prompt_depth_vision", PROMPT_DEPTH_TEXT="prompt_depth_text"),
                "TEXT_LOSS_WEIGHT": ("text_loss_weight", float), "IMAGE_LOSS_WEIGHT": ("image_loss_weight", float),
                "GPA_MEAN": ("gpa_mean", float), "GPA_STD": ("gpa_std", float)}, deep_vision=True,
               depths=lambda section: {"PROMPT_DEPTH_TEXT": ("text",), "PROMPT_DEPTH_VISION": ("vision",)}),
    MethodSpec("vpt", "VPTLearner", ("VPT",), "VPT",
               dict(N_CTX_VISION=2, CTX_INIT="a photo of a", PREC="fp16", PROMPT_DEPTH_VISION=1),
               _k(N_CTX_VISION="n_ctx", PROMPT_DEPTH_VISION="prompt_depth"),
               fixed={"CTX_INIT": "a photo of a"}, deep_vision=True,
               depths=lambda section: {"PROMPT_DEPTH_VISION": ("vision",)}),
    MethodSpec("pre", "PRELearner", ("PRE",), "PRE",
               dict(N_CTX=16, CSC=False, CTX_INIT="", PREC="amp", CLASS_TOKEN_POSITION="end", ENCODER="MLP1",
                    RESIDUAL=True, SEPARATE=True),
               {**_COOP_KEYS, **_k(ENCODER="encoder", RESIDUAL="residual", SEPARATE="separate")},
               foreign={"COOP.CTX_INIT": "PRE's ctxv1 configs set it, and PRE's trainer reads TRAINER.PRE.CTX_INIT "
                                         "only (minhanh151/PRE trainers/pre.py)"}),
    MethodSpec("softcpt", "SoftCPTLearner", ("MTCoOp", "SoftCPT"), "MTCOOP",
               dict(PREC="fp16", CLASS_N_CTX=16, CLASS_CSC=False, CLASS_CTX_INIT="", CLASS_TOKEN_POSITION="end",
                    TASK_N_CTX=16, TASK_CTX_INIT="", TASK_CSC=False, TASK_TOKEN_POSITION="end", N_CTX=16,
                    CTX_INIT="", CSC=False, TOKEN_POSITION="end", PG_TYPE="", PG_RATIO=1, CLS_SAMPLE_RATE=0.0,
                    FREEZE_CLS_PROMPT=0),
               {**_k(N_CTX="n_ctx", TOKEN_POSITION="class_token_position", TASK_N_CTX="task_n_ctx",
                     TASK_CTX_INIT="task_ctx_init", TASK_CSC="task_csc", TASK_TOKEN_POSITION="task_token_position",
                     CSC="class_features", CLASS_N_CTX="class_n_ctx", CLASS_CTX_INIT="class_ctx_init",
                     CLASS_CSC="class_csc", CLASS_TOKEN_POSITION="class_feature_token_position"),
                "PG_TYPE": ("pg_type", lambda v: v or "lin"), "CLS_SAMPLE_RATE": ("cls_sample_rate", float)},
               inert={"PG_RATIO": "declared by SoftCPT's train.py, never read by its trainer"},
               fixed={"CTX_INIT": "", "FREEZE_CLS_PROMPT": 0}),
    MethodSpec("softcpt_hard", "SoftCPTHardLearner", ("MTCoOpHard",), "MTCOOPH",
               dict(PREC="fp16", N_CTX=16, CSC=False, CTX_INIT="", TOKEN_POSITION="end", TSC=False),
               _k(N_CTX="n_ctx", CSC="csc", CTX_INIT="ctx_init", TOKEN_POSITION="class_token_position",
                  TSC="task_specific")),
    MethodSpec("pomp", "POMPLearner", ("POMP",), "POMP",
               dict(N_CTX=4, CSC=False, CTX_INIT="", CLASS_TOKEN_POSITION="end", UPDATE_CLASS_NUM=128, PREC="fp16",
                    EPT=False, LOCAL_CORRECTION=True, NEG_SAMPLING_MODE="random"),
               {**_COOP_KEYS, "UPDATE_CLASS_NUM": ("num_sampled_classes", int),
                "EPT": ("mode", lambda v: "local" if v else "full"), "LOCAL_CORRECTION": ("local_correction", bool)},
               fixed={"NEG_SAMPLING_MODE": "random"}),
    MethodSpec("rpp", "RPPLearner", ("RPP",), "RPP",
               dict(BRANCHES="both", DEPTH=9, N_CTX=4, N_CTX_VISION=4, CTX_INIT="", VARIANT="pre",
                    RESIDUAL_ROW="value", SHARED=False, INIT_STD=0.02, KL_WEIGHT=1.0, TEMPERATURE=1.0,
                    TEACHER_TEMPLATES="simple", TEACHER_CACHE=False, POMP=False, POMP_NUM_SAMPLED_CLASSES=1000,
                    POMP_LOCAL_CORRECTION=True, PREC="fp16"),
               {**_k(BRANCHES="branches", DEPTH="depth", N_CTX="n_ctx", N_CTX_VISION="n_ctx_vision",
                     CTX_INIT="ctx_init", VARIANT="variant", RESIDUAL_ROW="residual_row", SHARED="shared",
                     TEACHER_TEMPLATES="teacher_templates", POMP="pomp",
                     POMP_NUM_SAMPLED_CLASSES="pomp_num_sampled_classes",
                     POMP_LOCAL_CORRECTION="pomp_local_correction"),
                "INIT_STD": ("init_std", float), "KL_WEIGHT": ("kl_weight", float),
                "TEACHER_CACHE": ("teacher_cache", bool),
                "TEMPERATURE": ("temperature", float)}, deep_vision=True,
               depths=lambda section: {"DEPTH": _RPP_TOWERS.get(str(section.get("BRANCHES", "")).lower(),
                                                                ("text", "vision"))}),
    MethodSpec("prograd", "ProGradLearner", ("ProGrad",), "COOP",
               dict(ALPHA=1.0, N_CTX=16, CSC=False, CTX_INIT=False, PREC="fp16", CLASS_TOKEN_POSITION="end"),
               {**_COOP_KEYS, "CTX_INIT": ("ctx_init", bool)},
               inert={"ALPHA": "declared by ProGrad's train.py, never read by its trainer"},
               dataset_template="template",
               outside={"LOSS.T": learner_reads("T", float), "LOSS.LAMBDA": learner_reads("lambda_", float),
                        "LOSS.NAME": fixed_at("prograd", ""),
                        **{k: no_effect("declared by ProGrad's train.py, never read by its trainer")
                           for k in ("LOSS.GM", "LOSS.ALPHA")}}),
]}

# DePT (Koorye/DePT train.py extend_cfg): its head's settings, and the staged learning rates of
# trainers/optim.py (the head at LR * LR_EXP, the prompt at LR * BASE_LR_MULT).
_STAGED = ("fastprompt.train.schedule.param_groups (staged learning rates, matched against the learner's parameter "
           "names: ctx, film_lp_*, linear_probe_proj)")
_DEPT_TRAINS = ["prompt_learner", "linear_probe", "film"]
_DEPT_OUTSIDE = {
    "TRAINER.LINEAR_PROBE.TYPE": learner_reads("lp_type", default="linear"),
    "TRAINER.LINEAR_PROBE.WEIGHT": learner_reads("lp_weight", default=0.7),
    "TRAINER.LINEAR_PROBE.TEST_TIME_FUSION": learner_reads("test_time_fusion", default=True),
    "TRAINER.FILM.LINEAR_PROBE": learner_reads("film", default=True),
    "TRAINER.NAMES_TO_UPDATE": fixed_at(_DEPT_TRAINS, default=_DEPT_TRAINS,
                                        why="fastprompt's DePT learners train exactly their prompt and head"),
    "OPTIM.LR": redefault(0.0035),
    "OPTIM.STAGED_LR": run_reads(_STAGED, default=True),
    "OPTIM.NEW_LAYERS": run_reads(_STAGED, default=["linear_probe", "film"]),
    "OPTIM.BASE_LR_MULT": run_reads(_STAGED, default=1.0),
    "OPTIM.LR_EXP": run_reads(_STAGED, default=6.5),
}
_DEPT_DEFAULTS = dict(N_CTX=16, CSC=False, CTX_INIT="", PREC="fp16", CLASS_TOKEN_POSITION="end", ALPHA=1.0, W=2.0)
METHODS.update({s.method: s for s in [
    MethodSpec("coop_dept", "CoOpDePTLearner", ("ExtrasLinearProbeCoOp",), "COOP", _DEPT_DEFAULTS, _COOP_KEYS,
               inert={"ALPHA": "declared by DePT's train.py for KgCoOp, never read",
                      "W": "KgCoOp's weight: ExtrasLinearProbeCoOp never reads it"},
               outside=_DEPT_OUTSIDE),
    MethodSpec("kgcoop_dept", "KgCoOpDePTLearner", ("ExtrasLinearProbeKgCoOp",), "COOP", _DEPT_DEFAULTS,
               {**_COOP_KEYS, "CTX_INIT": ("ctx_init", _kgcoop_ctx_init), "W": ("w", float)},
               inert={"ALPHA": "declared by DePT's train.py ('for KgCoOp but NOT USE'), never read"},
               outside=_DEPT_OUTSIDE, dataset_template="template"),
    MethodSpec("cocoop_dept", "CoCoOpDePTLearner", ("ExtrasLinearProbeCoCoOp",), "COCOOP",
               dict(N_CTX=4, CTX_INIT="a photo of a", PREC="fp16"), _k(N_CTX="n_ctx", CTX_INIT="ctx_init"),
               outside=_DEPT_OUTSIDE),
    MethodSpec("maple_dept", "MaPLeDePTLearner", ("ExtrasLinearProbeMaPLe",), "MAPLE",
               dict(N_CTX=2, CTX_INIT="a photo of a", PREC="fp16", PROMPT_DEPTH=9),
               _k(N_CTX="n_ctx", CTX_INIT="ctx_init", PROMPT_DEPTH="prompt_depth"), deep_vision=True,
               depths=lambda section: {"PROMPT_DEPTH": ("text", "vision")}, outside=_DEPT_OUTSIDE),
]})

# PromptKD (zhengli97/PromptKD train.py extend_cfg, trainers/promptkd.py): the student's settings, the
# distillation weight and temperature, the teacher's name; TEACHER_PRETRAINED, TEACHER_CHECKPOINT,
# TEACHER_PROMPT_DEPTH and TEACHER_N_CTX_VISION are fastprompt's (the original fixes the teacher's
# weights file, its PromptSRC checkpoint path and its 9-deep, 4-token prompts in code).
_TEACHER_NAMES = {"ViT-L/14": "ViT-L-14", "ViT-B/16": "ViT-B-16", "ViT-B/32": "ViT-B-32"}
METHODS.update({s.method: s for s in [
    MethodSpec("promptkd", "PromptKDLearner", ("PromptKD",), "PROMPTKD",
               dict(N_CTX_VISION=4, N_CTX_TEXT=4, CTX_INIT="a photo of a", PREC="fp16", PROMPT_DEPTH_VISION=9,
                    PROMPT_DEPTH_TEXT=9, PROJECT_LAYER=2, CE_WEIGHT=0.0, KD_WEIGHT=1.0, TEMPERATURE=1.0,
                    TEACHER_NAME="ViT-L/14", TEACHER_PRETRAINED="openai", TEACHER_CHECKPOINT="",
                    TEACHER_PROMPT_DEPTH=9, TEACHER_N_CTX_VISION=4),
               {**_k(N_CTX_VISION="n_ctx_vision", N_CTX_TEXT="n_ctx_text", CTX_INIT="ctx_init",
                     PROMPT_DEPTH_VISION="prompt_depth_vision", TEACHER_PRETRAINED="teacher_pretrained",
                     TEACHER_PROMPT_DEPTH="teacher_prompt_depth", TEACHER_N_CTX_VISION="teacher_n_ctx_vision"),
                "KD_WEIGHT": ("kd_weight", float), "TEMPERATURE": ("temperature", float),
                "TEACHER_NAME": ("teacher_model", lambda v: _TEACHER_NAMES.get(str(v), str(v))),
                "TEACHER_CHECKPOINT": ("teacher_checkpoint", lambda v: str(v) or None)},
               inert={"PROMPT_DEPTH_TEXT": "builds the student's text prompts, which its CustomCLIP never uses "
                                           "(the student classifies with the teacher's class features)",
                      "PROJECT_LAYER": "declared by PromptKD's train.py, never read (the projection has two layers)",
                      "CE_WEIGHT": "declared by PromptKD's train.py, never read: the loss ignores the labels"},
               deep_vision=True, depths=lambda section: {"PROMPT_DEPTH_VISION": ("vision",)},
               outside={"TRAINER.MODAL": fixed_at("base2novel", "cross", default="base2novel",
                                                  why="it only picks which class columns PromptKD's test reads; "
                                                      "fastprompt evaluates the class list of the split asked for")}),
]})

# Methods that train a multi-task dataset (SoftCPT's general10, plant6, fashion20): their learner
# takes tasks and its loss scores each image against its own task's classes only.
MULTITASK_METHODS = ("softcpt", "softcpt_hard")

# Learners whose prompts enter the vision transformer: they need a ViT image tower.
DEEP_VISION = tuple(m for m, s in METHODS.items() if s.deep_vision)


def method_of_trainer(name: str) -> Optional[str]:
    """fastprompt method for an original ``TRAINER.NAME`` / ``--trainer`` (any case), or a method name."""
    key = str(name).strip().lower()
    for method, spec in METHODS.items():
        if key == method or key in (t.lower() for t in spec.trainer_names):
            return method
    return None


def learner_kwargs(method: str, section: Dict[str, Any], dataset_class: Optional[str] = None,
                   outside: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Learner keyword arguments from the resolved ``TRAINER.<SECTION>`` of ``method`` and, from
    ``outside`` (the flattened configuration), its keys outside it (:attr:`MethodSpec.outside`
    with a ``kwarg``; one absent from ``outside``, e.g. in a run written before the key existed,
    keeps the learner's default)."""
    spec = METHODS[method]
    out: Dict[str, Any] = {}
    for key, entry in spec.outside.items():
        if entry.kwarg is not None and outside is not None and key in outside:
            try:
                out[entry.kwarg] = entry.convert(outside[key])
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{key}: cannot use {outside[key]!r} ({exc})") from None
    where = f"TRAINER.{spec.section}"
    for key, value in section.items():
        if key in spec.keys:
            name, convert = spec.keys[key]
            try:
                out[name] = convert(value)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{where}.{key}: cannot use {value!r} ({exc})") from None
        elif key in spec.fixed:
            if value != spec.fixed[key]:
                raise ConfigError(f"{where}.{key} = {value!r} is not supported by fastprompt's {spec.learner} "
                                  f"(only {spec.fixed[key]!r})")
        elif key not in spec.harness and key not in spec.inert:
            raise ConfigError(f"{where}.{key} is not a {spec.learner} setting (known: {sorted(spec.defaults)})")
    if spec.dataset_template and dataset_class:
        from ..templates import DATASET_TEMPLATES

        if dataset_class in DATASET_TEMPLATES:
            out[spec.dataset_template] = dataset_class
    return out
