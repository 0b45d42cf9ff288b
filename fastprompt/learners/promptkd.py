"""PromptKD: a prompted CLIP student distilled from a large prompted teacher on unlabeled images.

Li et al., "PromptKD: Unsupervised Prompt Distillation for Vision-Language Models" (CVPR 2024);
semantics follow zhengli97/PromptKD ``trainers/promptkd.py`` (``Feature_Trans_Module_two_layer``,
``CustomCLIP``, ``CustomCLIP_teacher``, ``PromptKD.forward_backward`` / ``test``), its
``configs/trainers/PromptKD/*.yaml``, ``train.py``'s defaults and ``scripts/promptkd/*.sh``
(literal version: :class:`fastprompt.reference.ReferencePromptKD`).

The teacher is a PromptSRC-prompted CLIP (IVLP: text and vision deep prompts; in the original a
ViT-L/14 whose prompts come from a PromptSRC checkpoint). The student is a second CLIP (ViT-B/16)
with IVLP *vision* prompts only and a trainable projection of its image features into the
teacher's embedding space. The student never encodes text: it classifies with the teacher's class
features. Objective (:meth:`PromptKDLearner.loss_terms`)::

    t_c   = norm(teacher prompted text_c)                      [C, E_t]   (no grad, once per class list)
    z_tea = s_tea * norm(teacher prompted image) t^T           [B, C]     (no grad)
    z_stu = s_stu * norm(P(student prompted image)) t^T        [B, C]
    L = kd_weight * T^2 * sum KL(softmax(z_tea / T) || softmax(z_stu / T)) / (B * C)

Quirks of the original kept here (checked in ``trainers/promptkd.py``):

* **labels are ignored**: the loss reads only the images (the original trains on the whole
  unlabeled training set, ``DATASET.NUM_SHOTS 0``); ``CE_WEIGHT`` is read nowhere;
* ``P`` is ``Conv1x1(E_s -> E_t), BatchNorm2d(E_t), ReLU, Conv1x1(E_t -> E_t)`` applied to the
  **unnormalised** image-tower output reshaped to ``[B, E_s, 1, 1]``. The original fixes its widths
  in code (``Feature_Trans_Module_two_layer(512, 768)``: a ViT-B/16 student, a ViT-L/14 teacher);
  here they are read from the two models (the same numbers for that pair). Conv weights start with
  PyTorch's default (Kaiming-uniform) init;
* the BatchNorm runs in **training mode** during training: batch statistics and running-statistics
  updates (momentum 0.1), the running statistics at evaluation. So a batch of one image is refused
  in training (as the original's BatchNorm refuses it), and the running statistics are part of the
  checkpoint (:meth:`prompt_state_dict` holds them beside the parameters);
* the student's logit scale is the *student* CLIP's, the teacher's logits use the teacher's;
* ``KD_WEIGHT`` is 1 in the yaml but 1000 in both training scripts (``scripts/promptkd/*.sh``;
  their comment asks 200 for FGVC-Aircraft, Flowers102 and DTD); ``TEMPERATURE`` 1.0;
* the teacher's prompt design is fixed in code (``load_clip_to_cpu_teacher``: vision and text depth
  9, 4 vision and 4 text tokens) whatever the student's depths (9 base-to-novel, 3 cross-dataset);
  its text context takes ``N_CTX_TEXT`` and ``CTX_INIT`` ("a photo of a") from the same config;
* base-to-novel: the teacher scores *all* classes (its prompt learner concatenates the base and new
  halves back in order); evaluation reads the first ``ceil(C/2)`` columns on ``val`` and the rest on
  ``test`` (``PromptKD.test``);
* the student's text deep prompts (``PROMPT_DEPTH_TEXT``) are built by its ``clip.build_model`` and
  consume the random stream but are never used (the student's ``CustomCLIP`` has no text encoder);
* precision: ``PREC: "fp16"`` in both yamls; the projection is converted to fp16 after the CLIP is
  cast to fp32, so the original's ``fp32`` setting fails at the first convolution. fastprompt
  computes in the models' dtype (fp32 in the parity tests).

Speed: the teacher's class features are computed once per class list (the original re-encodes all
C prompts through the 77-token ViT-L/14 text tower at every step and every test batch), on the
prefix-shared, EOT-truncated text path; the teacher's image forward runs once per image without
autograd. The student's vision prompts enter as a batch-shared prompt block. Both image towers
run per image (the method needs the prompted image features of each image): that pass bounds
a step.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import LearnerConfig, PromptLearner, PromptLoadResult
from .deep_prompts import deep_prompt_list, map_ivlp_original_names
from .pretrained import load_open_clip, recorded_pretrained, resolve_tokenizer
from .promptsrc import PromptSRCLearner
from ..towers.frozen_image import output_dim_of

#: Buffers of the projection that a checkpoint carries beside the trainable parameters.
_PROJECTOR_STATS = ("projector.conv1.1.running_mean", "projector.conv1.1.running_var")
#: Frozen per-class buffers of the original teacher's prompt learner (rebuilt from the class names).
_TEACHER_BUFFERS = ("token_prefix2", "token_suffix2")


class FeatureProjector(nn.Module):
    """The original's ``Feature_Trans_Module_two_layer``: 1x1 conv, BatchNorm2d, ReLU, 1x1 conv."""

    def __init__(self, input_dim: int, out_dim: int):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(input_dim, out_dim, 1), nn.BatchNorm2d(out_dim), nn.ReLU(inplace=True),
                                   nn.Conv2d(out_dim, out_dim, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.conv1(features.unsqueeze(-1).unsqueeze(-1)).squeeze(-1).squeeze(-1)


@dataclasses.dataclass
class PromptKDConfig(LearnerConfig):
    """PromptKD settings (defaults: ``vit_b16_c2_ep20_batch8_4+4ctx``, base-to-novel).

    Attributes:
        n_ctx_vision: student vision prompt tokens per layer (``N_CTX_VISION``, 4).
        prompt_depth_vision: student vision layers with prompts (``PROMPT_DEPTH_VISION``: 9; 3 cross-dataset).
        n_ctx_text: the teacher's text context tokens (``N_CTX_TEXT``, 4).
        ctx_init: the teacher's text context phrase (``CTX_INIT``, "a photo of a").
        teacher_prompt_depth: the teacher's text and vision prompt depth (9, fixed in the original's code).
        teacher_n_ctx_vision: the teacher's vision prompt tokens (4, fixed in the original's code).
        temperature: distillation temperature ``T`` (``TEMPERATURE``, 1.0).
        kd_weight: weight of the distillation term (``KD_WEIGHT``: 1.0 in the yaml, 1000 in the scripts).
        teacher_model, teacher_pretrained: open_clip name and weights of the teacher, used when no
            ``teacher`` is passed (``"ViT-L-14"``, ``"openai"`` in the original).
        teacher_checkpoint: the teacher's prompts: a PromptSRC checkpoint as the original saves it
            (``model-best.pth.tar``) or a fastprompt ``save_pretrained`` directory of a PromptSRC learner.
        init_std: std of the N(0, std) vision prompt init.
    """

    n_ctx_vision: int = 4
    prompt_depth_vision: int = 9
    n_ctx_text: int = 4
    ctx_init: str = "a photo of a"
    teacher_prompt_depth: int = 9
    teacher_n_ctx_vision: int = 4
    temperature: float = 1.0
    kd_weight: float = 1.0
    teacher_model: Optional[str] = None
    teacher_pretrained: Optional[str] = None
    teacher_checkpoint: Optional[str] = None
    init_std: float = 0.02

    def __post_init__(self):
        super().__post_init__()
        self._require_at_least(1, "n_ctx_vision", "n_ctx_text", "teacher_prompt_depth", "teacher_n_ctx_vision")
        self._require_at_least(0, "prompt_depth_vision", "kd_weight")
        self._require_positive("temperature", "init_std")


class PromptKDLearner(PromptLearner):
    """PromptKD student. Trainable: ``vision_prompts.<j> [M_v, W]`` (student vision prompts) and
    ``projector.*`` (the projection into the teacher's space). ``teacher``: a frozen
    :class:`PromptSRCLearner` on the teacher CLIP (not trained, not in the prompt checkpoint)."""

    method = "promptkd"
    config_class = PromptKDConfig

    def __init__(self, model: nn.Module, classnames, config: PromptKDConfig, teacher: Optional[nn.Module] = None,
                 **kwargs):
        super().__init__(model, classnames, config, **kwargs)
        self._require_prompted_image_tower()
        if config.prompt_depth_vision > self.vision_tower.layers:
            raise ValueError(f"prompt_depth_vision={config.prompt_depth_vision} exceeds the vision tower's "
                             f"{self.vision_tower.layers} layers")
        # the original's order of draws: the student's prompts (its CLIP build), the teacher, the projection
        self.vision_prompts = deep_prompt_list(config.prompt_depth_vision, config.n_ctx_vision,
                                               self.vision_tower.width, config.init_std, self.text_tower.device)
        self.teacher = self._build_teacher(teacher, config)
        self.projector = FeatureProjector(output_dim_of(model.visual), output_dim_of(self.teacher.clip.visual)
                                          ).to(self.text_tower.device, self.vision_tower.dtype)
        self._rebuild_plan()

    def _build_teacher(self, teacher, config: PromptKDConfig) -> PromptSRCLearner:
        settings = dict(n_ctx_text=config.n_ctx_text, n_ctx_vision=config.teacher_n_ctx_vision,
                        ctx_init=config.ctx_init, prompt_depth_text=config.teacher_prompt_depth,
                        prompt_depth_vision=config.teacher_prompt_depth, backend=config.backend,
                        templates=["{}"])  # PromptSRC's frozen targets are not used: one template, not 60
        if teacher is None:
            if not config.teacher_model:
                raise ValueError("PromptKD needs its teacher: pass teacher=<open_clip model or PromptSRCLearner> "
                                 "or set teacher_model (e.g. 'ViT-L-14') and teacher_checkpoint")
            teacher = PromptSRCLearner.from_open_clip(config.teacher_model, config.teacher_pretrained,
                                                      self._classnames, **settings)
        elif not isinstance(teacher, PromptSRCLearner):
            teacher = PromptSRCLearner.from_model(teacher, self._classnames, **settings)
        if config.teacher_checkpoint:
            load_teacher_prompts(teacher, config.teacher_checkpoint)
        teacher.requires_grad_(False)
        return teacher.eval()

    @classmethod
    def from_model(cls, model: nn.Module, classnames: Sequence[str], *, tokenizer=None, teacher=None, **cfg):
        """``PromptLearner.from_model`` plus ``teacher``: the teacher's open_clip model (wrapped in a
        :class:`PromptSRCLearner` with the teacher settings of ``cfg``) or a built ``PromptSRCLearner``;
        default: built from ``teacher_model`` / ``teacher_pretrained``."""
        return cls(model, classnames, cls.config_class(**cfg), teacher=teacher, tokenizer=tokenizer)

    @classmethod
    def from_open_clip(cls, name: str, pretrained: Optional[str], classnames: Sequence[str], *, device=None,
                       precision: str = "fp32", cache_dir: Optional[str] = None, tokenizer=None, teacher=None,
                       **cfg):
        """``PromptLearner.from_open_clip`` plus ``teacher`` (see :meth:`from_model`)."""
        config = cls.config_class(**cfg)
        if tokenizer is None:
            tokenizer = resolve_tokenizer(name, cache_dir=cache_dir)
        model = load_open_clip(name, pretrained, device=device, precision=precision, cache_dir=cache_dir,
                               check_tokenizer=False)
        return cls(model, classnames, config, teacher=teacher, tokenizer=tokenizer, model_name=name,
                   pretrained=recorded_pretrained(pretrained))

    def train(self, mode: bool = True) -> "PromptKDLearner":
        """Train/eval for the student's projection (its BatchNorm); the teacher always stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def _rebuild_plan(self) -> None:
        if hasattr(self, "teacher"):
            self.teacher.set_classnames(self._classnames)
            self.refresh_teacher()

    def load_teacher(self, checkpoint) -> None:
        """Load the teacher's prompts (see :func:`load_teacher_prompts`) and recompute its class features."""
        load_teacher_prompts(self.teacher, checkpoint)
        self.refresh_teacher()

    @torch.no_grad()
    def refresh_teacher(self) -> None:
        """Recompute the teacher's L2-normalised class features (after changing the teacher's prompts)."""
        text = self.teacher.text_features()
        self.register_buffer("teacher_text_features", text / text.norm(dim=-1, keepdim=True), persistent=False)

    # ---- features ----------------------------------------------------------------------------
    def text_features(self) -> torch.Tensor:
        """The teacher's L2-normalised class features ``[C, E_t]`` (the student's classifier)."""
        return self.teacher_text_features

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised projected student image features ``[B, E_t]``."""
        self._refuse_features(images)
        features = self.projector(self.vision_tower(images, list(self.vision_prompts) or None))
        return features / features.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's logits ``[B, C]`` (prompted image features against its class features)."""
        image = self.teacher.image_features(images)
        return self.teacher.logit_scale * image @ self.teacher_text_features.to(image.dtype).t()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Student logits ``[B, C]``: ``s_student * norm(P(image)) @ teacher_text^T``."""
        image = self.image_features(images)
        return self.logit_scale * image @ self.teacher_text_features.to(image.dtype).t()

    # ---- objective ---------------------------------------------------------------------------
    def loss_terms(self, images: torch.Tensor, labels: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """``{"kd", "total"}``; ``labels`` do not enter (PromptKD distils on unlabeled images), but
        labels given are checked as every learner checks them."""
        if labels is not None:
            self.check_labels(images, labels)
        t = self.config.temperature
        tea_logits = self.teacher_logits(images)
        stu_logits = self(images)
        kd = F.kl_div(F.log_softmax(stu_logits / t, dim=1), F.softmax(tea_logits / t, dim=1),
                      reduction="sum") * (t * t) / stu_logits.numel()
        kd = self.config.kd_weight * kd
        return {"kd": kd, "total": kd}

    def loss(self, images: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """PromptKD's distillation loss (see the module docstring); ``labels`` are ignored."""
        return self.loss_terms(images, labels)["total"]

    # ---- checkpoints -------------------------------------------------------------------------
    def prompt_state_dict(self) -> Dict[str, torch.Tensor]:
        """The trainable tensors plus the projection's BatchNorm running statistics."""
        state = super().prompt_state_dict()
        buffers = dict(self.named_buffers())
        state.update({name: buffers[name].detach() for name in _PROJECTOR_STATS})
        return state

    def load_prompt_state(self, tensors: Mapping[str, torch.Tensor], source: str = "state dict",
                          strict: bool = True) -> PromptLoadResult:
        """The base loader, plus the projection's running statistics where ``tensors`` hold them
        (a checkpoint does; without them the current statistics stay)."""
        if not isinstance(tensors, Mapping):  # the base loader names the error
            return super().load_prompt_state(tensors, source=source, strict=strict)
        tensors = dict(tensors)
        stats = {name: tensors.pop(name) for name in _PROJECTOR_STATS if name in tensors}
        result = super().load_prompt_state(tensors, source=source, strict=strict)
        # running statistics absent (the trainer's snapshots hold the trainable parameters only): kept as they are
        buffers = dict(self.named_buffers())
        for name, value in stats.items():
            if tuple(value.shape) != tuple(buffers[name].shape) or not bool(torch.isfinite(value).all()):
                raise ValueError(f"{source}: {name!r} must be finite of shape {tuple(buffers[name].shape)}")
            with torch.no_grad():
                buffers[name].copy_(value.to(buffers[name].dtype))
        return result

    def _map_original_names(self, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The student ``CustomCLIP``'s checkpoint: ``image_encoder.VPT`` / ``...VPT_shallow`` and
        ``VPT_image_trans.conv1.*`` (its BatchNorm's ``num_batches_tracked`` is not used: momentum 0.1)."""
        state = {("projector." + k[len("VPT_image_trans."):] if k.startswith("VPT_image_trans.") else k): v
                 for k, v in state.items() if not k.endswith("num_batches_tracked")}
        return map_ivlp_original_names(state, vision_name="vision_prompts")


def load_teacher_prompts(teacher: PromptSRCLearner, checkpoint) -> None:
    """Load the teacher's prompts: a fastprompt PromptSRC ``save_pretrained`` directory, or the
    original's ``CustomCLIP_teacher`` / PromptSRC checkpoint (path or state dict); the teacher's
    per-class buffers (``token_prefix2``, ``token_suffix2``) are dropped as the original drops them.
    The teacher stays frozen."""
    from .checkpoint import original_prompt_state, read_prompt_checkpoint

    prompts = [p for name, p in teacher.named_parameters() if not name.startswith("clip.")]
    for p in prompts:  # the learner's loaders read its trainable parameters
        p.requires_grad_(True)
    try:
        if isinstance(checkpoint, (str, os.PathLike)) and os.path.isdir(checkpoint):
            _, tensors = read_prompt_checkpoint(os.fspath(checkpoint))
            teacher.load_prompt_state(tensors, source=os.fspath(checkpoint))
        else:
            state = {k: v for k, v in original_prompt_state(checkpoint).items() if k not in _TEACHER_BUFFERS}
            teacher.load_original_state_dict(state)
    finally:
        for p in prompts:
            p.requires_grad_(False)
