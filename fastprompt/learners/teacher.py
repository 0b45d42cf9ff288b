"""A frozen zero-shot CLIP teacher: hand-crafted prompt ensembles scored against frozen images.

RPP (Chen et al. 2024) supervises prompts with the soft labels of a pretrained CLIP: its
zero-shot probabilities over the classes the student is scoring. :class:`CLIPTeacher` provides

* class features: for every class, each template ``t`` is filled in (``t.format(name)``),
  encoded by the teacher's frozen text tower (fastprompt's packed path, equal to
  ``encode_text``), L2-normalised, averaged over templates and renormalised — CLIP's own
  zero-shot ensembling. Computed **once per class list** (cached; switching back to a list seen
  before costs nothing); with ``cache=True`` also kept on disk through
  :func:`fastprompt.zero_shot_classifier` (the 10K-21K ImageNet-21K classes of a pretraining run
  are encoded once per model, weights, class table and templates, not once per run or resume);
* image features: the teacher's own frozen image tower (a complete zero-shot CLIP, any
  embedding width), or, with ``image_model``, another model's frozen image tower (the student's
  unprompted CLIP: the teacher then only contributes text features). Image and text features
  must then share a space: the widths must agree or ``projection`` maps the teacher's text
  features into the image model's space;
* logits ``exp(logit_scale) * img @ W[class_indices]^T`` over exactly the classes asked for.

Everything runs without autograd; the teacher holds no trainable parameter.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..templates import TemplateSpec, resolve_templates
from ..towers import image_tower
from ..towers.text_tower_for import text_tower
from .prompts import clean_classnames
from .template_features import mean_template_features
from .zero_shot import zero_shot_classifier

TEXT_CHUNK = 4096  # prompts per text-tower call when building class features (bounds memory)
CACHE_LISTS = 4    # class lists whose features are kept


class CLIPTeacher(nn.Module):
    """Frozen zero-shot CLIP (see the module docstring).

    Args:
        model: the teacher's open_clip CLIP (its text tower always; its image tower unless
            ``image_model`` is given). Frozen in place.
        templates: a template name (``"simple"``, ``"openai"``, ``"single"``) or a list of
            ``"{}"`` strings / callables.
        tokenizer: the teacher's tokenizer (default: CLIP BPE at the model's context length).
        backend: ``prompt_attention`` backend of the teacher's towers.
        image_model: score against this model's frozen image tower instead of the teacher's own.
        projection: ``[E_teacher, E_image]`` tensor (or a module) applied to the teacher's class
            features before normalisation; needed when ``image_model``'s embedding width differs.
        cache: keep the class features on disk (:mod:`fastprompt.learners.zero_shot_cache`), with a
            progress bar while they are computed. The cached entry is CLIP's zero-shot head
            (template mean, renormalised); a tensor ``projection`` is applied after it, which only
            rescales each row before the final normalisation (the same features up to fp32
            rounding). Not used with a module ``projection`` (it need not be linear).

    Raises:
        ValueError: bad templates, or an embedding-width mismatch between the image features and
            the teacher's text features without a (fitting) ``projection``.
    """

    def __init__(self, model: nn.Module, templates: TemplateSpec = "simple", *, tokenizer=None, backend: str = "auto",
                 image_model: Optional[nn.Module] = None,
                 projection: Optional[Union[torch.Tensor, nn.Module]] = None, cache: bool = False):
        super().__init__()
        from .base import default_tokenizer

        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.clip = model
        self.templates = resolve_templates(templates)
        self.tokenizer = tokenizer if tokenizer is not None else default_tokenizer(model)
        self.text_tower = text_tower(model, backend, self.tokenizer)
        visual = (image_model if image_model is not None else model).visual
        self.vision_tower = image_tower(visual, backend=backend)
        self.uses_own_images = image_model is None
        text_dim, image_dim = self.text_tower.embed_dim, self.vision_tower.output_dim
        if projection is not None and self.uses_own_images:
            raise ValueError("projection is only used with image_model (the teacher's own towers share one "
                             "embedding space)")
        if isinstance(projection, torch.Tensor):
            if tuple(projection.shape) != (text_dim, image_dim):
                raise ValueError(f"projection must have shape [E_teacher={text_dim}, E_image={image_dim}], "
                                 f"got {tuple(projection.shape)}")
            projection = projection.detach()
        elif projection is None and text_dim != image_dim:
            raise ValueError(f"the teacher's text embedding width ({text_dim}) differs from the image features' "
                             f"({image_dim}); pass projection=[{text_dim}, {image_dim}] tensor (or module) mapping "
                             "teacher text features into the image space, or use the teacher's own image tower")
        if isinstance(projection, nn.Module):
            for p in projection.parameters():
                p.requires_grad_(False)
            self.projection = projection
        else:
            self.register_buffer("projection", projection, persistent=False)
        self._cache: "OrderedDict[Tuple[str, ...], torch.Tensor]" = OrderedDict()
        self._classnames: Optional[List[str]] = None
        self.n_text_builds = 0  # how many class lists were encoded (for tests / logging)
        self.cache = bool(cache) and not isinstance(projection, nn.Module)

    def train(self, mode: bool = True) -> "CLIPTeacher":
        """The teacher is frozen: its CLIP (and image model) stay in eval mode whatever ``mode``."""
        super().train(mode)
        self.clip.eval()
        self.vision_tower.visual.eval()
        return self

    # ---- class features ------------------------------------------------------------------------
    @property
    def embed_dim(self) -> int:
        return self.vision_tower.output_dim

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp()

    @property
    def classnames(self) -> Optional[List[str]]:
        return None if self._classnames is None else list(self._classnames)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        """Make ``classnames`` the current class list (encoded once, then cached)."""
        names = clean_classnames(classnames)
        key = tuple(names)
        if key not in self._cache:
            self._cache[key] = self._encode_classes(names)
            self.n_text_builds += 1
            while len(self._cache) > CACHE_LISTS:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        self._classnames = names

    @property
    def class_features(self) -> torch.Tensor:
        """L2-normalised class features ``[C, E]`` of the current class list."""
        if self._classnames is None:
            raise ValueError("the teacher has no class list yet: call set_classnames(classnames) first")
        key = tuple(self._classnames)
        features = self._cache[key]
        if features.device != self.text_tower.device:  # the module was moved after encoding: move once
            features = self._cache[key] = features.to(self.text_tower.device)
        return features

    @torch.no_grad()
    def _encode_classes(self, names: List[str]) -> torch.Tensor:
        if self.cache:
            mean = zero_shot_classifier(self.clip, names, self.templates, tokenizer=self.tokenizer,
                                        batch_size=TEXT_CHUNK, progress=True, cache=True,
                                        backend=self.text_tower.backend).t()
        else:
            mean = mean_template_features(self.text_tower, self.tokenizer, names, self.templates, TEXT_CHUNK)
        if self.projection is not None:
            mean = self.projection(mean) if isinstance(self.projection, nn.Module) else mean @ self.projection.float()
        return mean / mean.norm(dim=-1, keepdim=True)

    # ---- images and logits ---------------------------------------------------------------------
    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised frozen image features ``[B, E]``."""
        f = self.vision_tower(images)
        return f / f.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def logits(self, images: Optional[torch.Tensor] = None, *, image_features: Optional[torch.Tensor] = None,
               class_indices: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Zero-shot logits ``[B, C]`` (or ``[B, K]`` over ``class_indices [K]``).

        ``image_features`` (normalised, from :meth:`image_features`) skips the image forward.
        """
        if image_features is None:
            if images is None:
                raise ValueError("pass images or image_features")
            image_features = self.image_features(images)
        w = self.class_features
        if class_indices is not None:
            w = w[class_indices.to(w.device)]
        return self.logit_scale * image_features.float() @ w.t()


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    temperature: float = 1.0) -> torch.Tensor:
    """``T^2 * KL(softmax(z_t / T) || softmax(z_s / T))``, summed over classes, averaged over the batch.

    ``student_logits``/``teacher_logits``: ``[B, C]`` over the same columns. Columns masked with a
    huge negative logit on both sides (POMP's rejected negatives) contribute exactly 0.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} must match the student's "
                         f"{tuple(student_logits.shape)} (same classes, same order)")
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.to(student_logits.dtype) / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    return temperature * temperature * kl
