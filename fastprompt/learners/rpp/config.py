"""RPP's settings: every open design choice of the method is a field (see :mod:`fastprompt.learners.rpp.learner`).

Chen et al., "Revisiting Prompt Pretraining of Vision-Language Models" (arXiv 2409.06166).
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Union

from ...templates import resolve_templates
from ..base import LearnerConfig
from ..pomp.objective import check_pomp_args

BRANCHES = ("text", "vision", "both")
VARIANTS = ("pre", "post")
RESIDUAL_ROWS = ("value", "mean")
TEACHER_IMAGE_ENCODERS = ("teacher", "student")


@dataclasses.dataclass
class RPPConfig(LearnerConfig):
    """RPP settings. The paper's values are unpublished; the defaults follow its closest published
    relatives (IVLP / PromptSRC for depth and init, POMP for the text context), as listed per field.

    Attributes:
        branches: ``"both"`` (default; IVLP-style text and vision prompts, as the PromptSRC /
            PromptKD code base of the authors' lab), ``"text"`` (POMP-style) or ``"vision"``
            (text side frozen: ``"<ctx_init or 'a photo of a'> <class>."``).
        depth: ``J`` prompted layers per prompted tower, counting layer 0 (default 9, IVLP/
            PromptSRC); must not exceed a prompted tower's depth.
        n_ctx: text prompt rows ``M`` (default 4, POMP/PromptSRC); with ``ctx_init`` it is the
            phrase's word count (leave it ``None`` or equal).
        n_ctx_vision: vision prompt rows (default: ``n_ctx``).
        ctx_init: initialise the text layer-0 prompts from this phrase's token embeddings (all
            three of q/k/v; post-projection: their frozen layer-0 projections). Default ``""``:
            random init and ``"X X X X"`` placeholder text, as POMP.
        variant: ``"pre"`` (default) or ``"post"`` projection (module docstring).
        residual_row: ``"value"`` (default) or ``"mean"``: the residual row of surviving prompts.
        shared: tie q/k/v into one prompt per layer (ordinary deep prompts); needs ``variant="pre"``.
        init_std: std of the N(0, init_std) init of every prompt (default 0.02, as IVLP/POMP).
        kl_weight: λ of the soft-label KL (default 1, PromptSRC-style); 0 disables the teacher.
        temperature: T of the KL (default 1); the KL is scaled by T².
        teacher_templates: ``"simple"`` (default, CLIP's 7-template ImageNet subset), ``"openai"``
            (80), ``"single"`` (``"a photo of a {}."``) or a list of ``"{}"`` templates.
        teacher_image_encoder: ``"teacher"`` (default: a complete zero-shot CLIP) or
            ``"student"`` (the student's unprompted image tower scores the teacher's text
            features; needs equal embedding widths or ``teacher_projection``).
        teacher_cache: keep the teacher's class features on disk (:class:`CLIPTeacher` ``cache``;
            ``fastprompt pretrain`` turns it on for the 10K-21K ImageNet-21K classes).
        pomp: train with POMP's local contrast instead of the full softmax (default off).
        pomp_num_sampled_classes: POMP's ``K`` (default 1000, as POMP's scripts).
        pomp_local_correction: POMP's logit correction (default on, as POMP).
        pomp_log_base: ``"10"`` (default, as POMP's code) or ``"e"``.
        pomp_seed: seed of the negative sampler (default ``None``: global RNG, as POMP).
    """

    branches: str = "both"
    depth: int = 9
    n_ctx: Optional[int] = None
    n_ctx_vision: Optional[int] = None
    ctx_init: str = ""
    variant: str = "pre"
    residual_row: str = "value"
    shared: bool = False
    init_std: float = 0.02
    kl_weight: float = 1.0
    temperature: float = 1.0
    teacher_templates: Union[str, List[str]] = "simple"
    teacher_image_encoder: str = "teacher"
    teacher_cache: bool = False
    pomp: bool = False
    pomp_num_sampled_classes: int = 1000
    pomp_local_correction: bool = True
    pomp_log_base: str = "10"
    pomp_seed: Optional[int] = None

    def __post_init__(self):
        super().__post_init__()
        if self.branches not in BRANCHES:
            raise ValueError(f"branches must be one of {BRANCHES}, got {self.branches!r}")
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 1:
            raise ValueError(f"depth must be an int >= 1 (prompted layers, counting layer 0), got {self.depth!r}")
        for name in ("n_ctx", "n_ctx_vision"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an int >= 1 (or None for the default), got {value!r}")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.residual_row not in RESIDUAL_ROWS:
            raise ValueError(f"residual_row must be one of {RESIDUAL_ROWS}, got {self.residual_row!r}")
        if self.shared and self.variant != "pre":
            raise ValueError("shared=True (ordinary deep prompts) needs variant='pre': tied head-space vectors "
                             "are not deep prompts")
        if not self.init_std > 0:
            raise ValueError(f"init_std must be > 0, got {self.init_std!r}")
        if not self.kl_weight >= 0:
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if not isinstance(self.teacher_templates, str):
            if any(not isinstance(t, str) for t in self.teacher_templates):
                raise ValueError("teacher_templates must be a name or a list of '{}' strings (callables cannot be "
                                 "saved in a checkpoint config; build a CLIPTeacher for those)")
            self.teacher_templates = list(self.teacher_templates)
        resolve_templates(self.teacher_templates, "teacher_templates")
        if self.teacher_image_encoder not in TEACHER_IMAGE_ENCODERS:
            raise ValueError(f"teacher_image_encoder must be one of {TEACHER_IMAGE_ENCODERS}, "
                             f"got {self.teacher_image_encoder!r}")
        check_pomp_args(self.pomp_num_sampled_classes, "local", self.pomp_log_base, self.pomp_seed,
                        prefix="pomp_")
