"""DePT: a decoupled, channel-adjusted transfer head on a prompt learner (CoOp, KgCoOp, CoCoOp, MaPLe).

Zhang et al., "DePT: Decoupled Prompt Tuning" (CVPR 2024); semantics follow Koorye/DePT @ d4ff416
``trainers/elp_coop.py`` (``ExtrasLinearProbeCoOp``), ``trainers/elp_kgcoop.py``
(``ExtrasLinearProbeKgCoOp``), ``trainers/elp_cocoop.py`` (``ExtrasLinearProbeCoCoOp``),
``trainers/elp_maple.py`` (``ExtrasLinearProbeMaPLe``), ``trainers/elp_maple.py`` (``FiLM``), ``trainers/optim.py`` and
``train.py`` (literal version: :class:`fastprompt.reference.ReferenceDePTCoOp` /
:class:`~fastprompt.reference.ReferenceDePTKgCoOp`). What the original does, checked in its code:

* **Head.** Two FiLM modules ("cwT", channel-wise transform) ``x -> scale * x + bias`` (``scale``
  ones, ``bias`` zeros: no random draw) on the text and on the image features, then
  ``linear_probe_proj = nn.Linear(E, C)`` over the training ("base") classes, built after the base
  learner (its default init is the next draw of the torch stream). FiLM acts on the
  **unnormalised** features (the text tower's EOT feature, the image tower's output), so this
  learner needs the image features before their normalisation: the frozen-feature cache (which
  keeps normalised ones) does not serve it (``frozen_image_side`` is off).
* **Training** (``LINEAR_PROBE.TYPE`` "linear"): the head is trained on the FiLM'd text features of
  the batch's labels *and* the FiLM'd image features, ``[film_t(text[y]); film_i(img)]`` with labels
  ``[y; y]``; loss ``(1 - w) * CE(cos logits, y) + w * CE(head, [y; y])`` with ``w =
  LINEAR_PROBE.WEIGHT = 0.7``; KgCoOp adds ``W * (1 - mean_c cos(text_c, clip_c))`` (``TRAINER.COOP.W``
  = 2.0 in DePT's config, its ``text`` unnormalised). "similarity": the head is CLIP's cosine logits
  of the FiLM'd features instead.
* **Evaluation.** On the training classes (the original: ``SUBSAMPLE_CLASSES`` "base", or "all" on a
  dataset whose name holds ``ImageNet``) ``(1 - w) * cos + w * head(film_i(img))`` with the same
  fixed ``w`` (``TEST_TIME_FUSION``; without it the head alone); any other class list (new
  classes, other datasets) uses the cosine logits only. The original trims the head's rows to
  the classes of ImageNet-A/R when it loads a checkpoint for them; here the head is used whenever
  every current class is one of the head's classes (rows picked by name), so ImageNet-A/R/V2/Sketch
  take the fused path as there. Training on classes that are not all head classes is refused
  (the original's ``assert not self.prompt_learner.training``).
* **Learning rates** (``trainers/optim.py`` with ``train.py``'s ``STAGED_LR = True``, ``LR_EXP = 6.5``,
  ``NEW_LAYERS = ['linear_probe', 'film']``, ``BASE_LR_MULT = 1.0``): the head's parameters (the
  original's module names ``film_lp_*``, ``linear_probe_proj`` are kept, so ``NEW_LAYERS`` matches them)
  train at ``6.5 * LR``, the prompt at ``LR`` (:func:`fastprompt.train.schedule.param_groups`; the
  warm-up's constant rate is the same for both, Dassl's ``ConstantWarmupScheduler``).
* **KgCoOp's leftovers.** DePT's ``NAMES_TO_UPDATE = ['prompt_learner', 'linear_probe', 'film']``
  also marks KgCoOp's unused ``prompt_learner.bias_vectors`` and ``prompt_learner.meta_net`` as
  trainable; they never get a gradient (SGD skips them, weight decay included), so they are not
  parameters here; their keys in an original checkpoint are ignored, as are the frozen towers
  (``image_encoder.*``, ``text_encoder.*``, ``logit_scale``) and KgCoOp's unused ``adapter``: DePT
  saves the whole ``CustomCLIP``.
* **Precision.** DePT's configs leave ``PREC`` at ``train.py``'s "fp16" (the run layer's precision);
  the head's parameters are fp32 here, as the prompt's.

The text side is the base learner's packed, prefix-shared, EOT-truncated path (the head reads only
the ``[C, E]`` class features); the image tower runs without autograd.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .cocoop import CoCoOpConfig, CoCoOpLearner
from .coop import CoOpConfig, CoOpLearner
from .kgcoop import KgCoOpConfig, KgCoOpLearner
from .maple import MaPLeConfig, MaPLeLearner
from .prompts import clean_classnames

__all__ = ["FiLM", "CoOpDePTConfig", "CoOpDePTLearner", "KgCoOpDePTConfig", "KgCoOpDePTLearner", "CoCoOpDePTConfig",
           "CoCoOpDePTLearner", "MaPLeDePTConfig", "MaPLeDePTLearner"]

LP_TYPES = ("linear", "similarity")
# Keys of an original DePT checkpoint (the whole CustomCLIP) that hold no trained tensor.
_FROZEN_ORIGINAL = ("image_encoder.", "text_encoder.", "logit_scale")


class FiLM(nn.Module):
    """Channel-wise ``scale * x + bias`` (DePT's ``FiLM``), ``scale`` ones and ``bias`` zeros at init."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale.to(x.dtype) * x + self.bias.to(x.dtype)


@dataclasses.dataclass
class _DePTFields:
    """DePT's settings (``TRAINER.LINEAR_PROBE`` and ``TRAINER.FILM`` of its ``train.py``).

    Attributes:
        lp_type: "linear" (a linear head over the training classes) or "similarity" (cosine logits
            of the FiLM'd features).
        lp_weight: ``w`` of ``(1 - w) * cosine + w * head``, in the loss and in the fused logits (0.7).
        test_time_fusion: fuse both heads on the training classes (else the head's logits alone).
        film: the FiLM (channel-wise) transforms before the head.
        head_classnames: the classes of the linear head; default (None): the class list the learner
            is built with (recorded in checkpoints).
    """

    lp_type: str = "linear"
    lp_weight: float = 0.7
    test_time_fusion: bool = True
    film: bool = True
    head_classnames: Optional[List[str]] = None

    def __post_init__(self):
        super().__post_init__()
        if self.lp_type not in LP_TYPES:
            raise ValueError(f"lp_type must be one of {LP_TYPES}, got {self.lp_type!r}")
        if not 0.0 <= self.lp_weight <= 1.0:
            raise ValueError(f"lp_weight must be in [0, 1], got {self.lp_weight}")


@dataclasses.dataclass
class CoOpDePTConfig(_DePTFields, CoOpConfig):
    """CoOp + DePT (defaults: DePT's ``ExtrasLinearProbeCoOp/vit_b16_ep10_bs4_lr35``: CoOp's 16 random
    context vectors). Recipe (not the learner's): SGD lr 0.0035 (head 6.5x), batch 4, 10 epochs."""


@dataclasses.dataclass
class KgCoOpDePTConfig(_DePTFields, KgCoOpConfig):
    """KgCoOp + DePT (defaults: DePT's ``ExtrasLinearProbeKgCoOp/vit_b16_ep10_ctxv1_bs4_lr35``:
    "a photo of a", ``w = 2.0``)."""

    w: float = 2.0


@dataclasses.dataclass
class CoCoOpDePTConfig(_DePTFields, CoCoOpConfig):
    """CoCoOp + DePT (defaults: DePT's ``ExtrasLinearProbeCoCoOp/vit_b16_c4_ep10_batch1_ctxv1``: 4 context
    vectors from "a photo of a"). Only ``lp_type="linear"``: with "similarity" the original's
    ``elp_cocoop.py`` returns the head's logits without labels and its caller fails to unpack them."""

    n_ctx: int = 4
    ctx_init: str = "a photo of a"

    def __post_init__(self):
        super().__post_init__()
        if self.lp_type != "linear":
            raise ValueError(f"lp_type must be 'linear' for CoCoOp + DePT (the original fails with 'similarity'), "
                             f"got {self.lp_type!r}")


@dataclasses.dataclass
class MaPLeDePTConfig(_DePTFields, MaPLeConfig):
    """MaPLe + DePT (defaults: DePT's ``ExtrasLinearProbeMaPLe/vit_b16_c2_ep10_batch4_2ctx``: 2 context
    vectors, depth 9, as MaPLe's)."""


class _DePTHead:
    """The DePT head over a learner with one classifier per class list (``text_features() [C, E]``)."""

    frozen_image_side = False  # the head reads unnormalised image features (see the module docstring)

    def _build_head(self) -> None:
        config = self.config
        names = config.head_classnames if config.head_classnames is not None else self._classnames
        self.head_classnames = clean_classnames(names)
        config.head_classnames = list(self.head_classnames)
        dim = self.text_tower.embed_dim
        if config.film:
            self.film_lp_img = FiLM(dim)
            self.film_lp_text = FiLM(dim)
        self.linear_probe_proj = nn.Linear(dim, len(self.head_classnames)) if config.lp_type == "linear" else None
        device = self.text_tower.device
        self.to(device)

    def head_rows(self) -> Optional[torch.Tensor]:
        """Rows of the head for the current classes (``[C]`` int64), or None when some current class
        is not a head class (then only the cosine logits apply)."""
        index = {name: i for i, name in enumerate(self.head_classnames)}
        if any(name not in index for name in self._classnames):
            return None
        return torch.tensor([index[name] for name in self._classnames], dtype=torch.long,
                            device=self.text_tower.device)

    def _film(self, text: torch.Tensor, image: torch.Tensor):
        if self.config.film:
            return self.film_lp_text(text), self.film_lp_img(image)
        return text, image

    def _class_features(self, image: torch.Tensor) -> torch.Tensor:
        """Unnormalised class features: ``[C, E]``, or ``[B, C, E]`` where they depend on the image."""
        return self.text_features()

    def _cosine(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        text = text / text.norm(dim=-1, keepdim=True)
        image = image / image.norm(dim=-1, keepdim=True)
        if text.dim() == 3:  # one class set per image (CoCoOp)
            return self.logit_scale * torch.einsum("be,bce->bc", image, text.to(image.dtype))
        return self.logit_scale * image @ text.to(image.dtype).t()

    def _linear(self, features: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        weight, bias = self.linear_probe_proj.weight, self.linear_probe_proj.bias
        if rows.numel() != weight.shape[0] or not torch.equal(rows, torch.arange(weight.shape[0], device=rows.device)):
            weight, bias = weight[rows], bias[rows]
        return F.linear(features, weight.to(features.dtype), bias.to(features.dtype))

    def _raw_image(self, images: torch.Tensor) -> torch.Tensor:
        self._refuse_features(images)
        return self.frozen_image_forward(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Evaluation logits ``[B, C]``: fused on the head's classes, cosine otherwise."""
        image = self._raw_image(images)
        text = self._class_features(image)
        cosine = self._cosine(text, image)
        rows = self.head_rows()
        if rows is None:
            return cosine
        film_text, film_image = self._film(text, image)
        if self.config.lp_type == "similarity":
            head = self._cosine(film_text, film_image)
        else:
            head = self._linear(film_image, rows)
        if not self.config.test_time_fusion:
            return head
        w = self.config.lp_weight
        return (1 - w) * cosine + w * head

    def _dept_terms(self, images: torch.Tensor, labels: torch.Tensor):
        self.check_labels(images, labels)
        rows = self.head_rows()
        if rows is None:
            raise ValueError(f"{type(self).__name__} trains its head on the head's classes; the current classes "
                             f"are not all among them ({len(self.head_classnames)} head classes): set_classnames "
                             "back to the training classes (DePT evaluates other classes with the cosine head "
                             "only)")
        image = self._raw_image(images)
        text = self._class_features(image)
        ce = F.cross_entropy(self._cosine(text, image), labels)
        film_text, film_image = self._film(text, image)
        if self.config.lp_type == "similarity":
            ce_head = F.cross_entropy(self._cosine(film_text, film_image), labels)
        else:
            picked = film_text[torch.arange(labels.shape[0], device=labels.device), labels] if film_text.dim() == 3 \
                else film_text[labels]
            features = torch.cat([picked, film_image.to(film_text.dtype)])
            ce_head = F.cross_entropy(self._linear(features, rows), torch.cat([labels, labels]))
        w = self.config.lp_weight
        return text, {"ce": ce, "ce_head": ce_head, "total": (1 - w) * ce + w * ce_head}

    def loss_terms(self, images: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``{"ce", "ce_head", "total"}``: cosine CE, the head's CE, ``(1 - w) * ce + w * ce_head``."""
        return self._dept_terms(images, labels)[1]

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """DePT's training objective (``loss_terms(...)["total"]``)."""
        return self.loss_terms(images, labels)["total"]

    def _map_original_names(self, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        # DePT saves the whole CustomCLIP: drop the frozen towers, then the base learner's own mapping
        return super()._map_original_names({k: v for k, v in state.items() if not k.startswith(_FROZEN_ORIGINAL)})


class CoOpDePTLearner(_DePTHead, CoOpLearner):
    """CoOp + DePT. Trainable: ``ctx``, ``film_lp_{img,text}.{scale,bias}`` ``[E]``,
    ``linear_probe_proj.{weight,bias}`` ``[C_head, E]`` / ``[C_head]``."""

    method = "coop_dept"
    config_class = CoOpDePTConfig

    def __init__(self, model: nn.Module, classnames, config: CoOpDePTConfig, **kwargs):
        super().__init__(model, classnames, config, **kwargs)
        self._build_head()


class KgCoOpDePTLearner(_DePTHead, KgCoOpLearner):
    """KgCoOp + DePT; trainable as :class:`CoOpDePTLearner`, the frozen ``clip_text_features`` as KgCoOp."""

    method = "kgcoop_dept"
    config_class = KgCoOpDePTConfig

    def __init__(self, model: nn.Module, classnames, config: KgCoOpDePTConfig, **kwargs):
        super().__init__(model, classnames, config, **kwargs)
        self._build_head()

    def loss_terms(self, images: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``{"ce", "ce_head", "consistency", "total"}``; ``total`` adds ``w * consistency`` (KgCoOp's term
        on the unnormalised text features, as DePT's ``_loss``)."""
        text, terms = self._dept_terms(images, labels)
        clip = self.clip_text_features.to(text.dtype)
        consistency = 1.0 - torch.mean(F.cosine_similarity(text, clip / clip.norm(dim=-1, keepdim=True), dim=1,
                                                           eps=1e-7))
        return {**terms, "consistency": consistency, "total": terms["total"] + self.config.w * consistency}

    def _map_original_names(self, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        # the frozen towers and KgCoOp's leftovers (bias_vectors, meta_net), then its CustomCLIP's unused adapter
        return {k: v for k, v in super()._map_original_names(state).items() if not k.startswith("adapter.")}


class CoCoOpDePTLearner(_DePTHead, CoCoOpLearner):
    """CoCoOp + DePT: the class features depend on the image (CoCoOp's meta-net bias on the context), so
    the head's text batch is each image's own label row ``film_t(text[b, y_b])``; trainable: CoCoOp's
    ``ctx`` and ``meta_net`` (``NAMES_TO_UPDATE`` holds ``prompt_learner``) plus the head. The text side
    is CoCoOp's per-image prefix-shared path (one class set per image, as the method requires)."""

    method = "cocoop_dept"
    config_class = CoCoOpDePTConfig

    def __init__(self, model: nn.Module, classnames, config: CoCoOpDePTConfig, **kwargs):
        super().__init__(model, classnames, config, **kwargs)
        self._build_head()

    def _class_features(self, image: torch.Tensor) -> torch.Tensor:
        return self.conditional_text_features(image / image.norm(dim=-1, keepdim=True))


class MaPLeDePTLearner(_DePTHead, MaPLeLearner):
    """MaPLe + DePT: the head reads MaPLe's prompted, unnormalised image features (with autograd into the
    vision prompts, as MaPLe's own loss); trainable: MaPLe's prompts and projections plus the head."""

    method = "maple_dept"
    config_class = MaPLeDePTConfig

    def __init__(self, model: nn.Module, classnames, config: MaPLeDePTConfig, **kwargs):
        super().__init__(model, classnames, config, **kwargs)
        self._build_head()

    def _raw_image(self, images: torch.Tensor) -> torch.Tensor:
        self._refuse_features(images)
        return self.vision_tower(images, self.vision_prompts())
