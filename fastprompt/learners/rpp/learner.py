"""RPP: unshared query/key/value prompts with soft-label supervision from a frozen CLIP teacher.

Chen et al., "Revisiting Prompt Pretraining of Vision-Language Models" (arXiv 2409.06166). The
paper's code is unreleased; this is a configurable design built from the paper's description
(unshared query/key/value prompts, soft labels from a frozen CLIP teacher), every open choice a
config field (defaults in :class:`RPPConfig`).

**Prompt structure.** Ordinary deep prompts (VPT-deep / IVLP / MaPLe) learn one vector per prompt
token and layer; the frozen block derives its query, key and value from it. RPP learns the
three separately: for prompted layer ``j < J`` and prompt row ``i``, ``P^q_j[i]``, ``P^k_j[i]``,
``P^v_j[i]``.

* ``variant="pre"`` (pre-projection, default): the three live in the residual stream (``[M, D]``)
  and pass through the frozen ``ln_1`` and *their own* projection (``W_q``, ``W_k``, ``W_v``) — once
  per layer, not once per image or class. At layer 0, vision rows enter through ``ln_pre`` and
  text rows get the positional embedding of their positions, like ordinary layer-0 prompts.
* ``variant="post"`` (post-projection, prefix-tuning style): learned directly in head space
  (``[M, H, d]``), skipping LayerNorm and projections.
* Layout and semantics are IVLP's "replace, then propagate": text prompt rows sit right after SOT
  (positions ``1..M``, replacing the context slots; SOT does not see them under the causal mask,
  class tokens and EOT see all of them); vision prompt rows sit after the image tokens. Before
  every prompted layer the rows are replaced; the outputs of layer ``J-1`` propagate through
  layers ``J..L-1`` as ordinary tokens.
* Consequently a prompt row's **query** only matters where its output survives: at layer
  ``J-1`` (when it is not the tower's last layer). ``P^q_j`` for ``j < J-1`` receives exactly zero
  gradient (kept so the parameter structure is the paper's ``3 x M x D`` per layer; the fast
  path never computes those queries). Keys and values act at every prompted layer, as the op's
  batch-shared (vision) or class-shared (text prefix) prompt block.
* ``residual_row``: the residual-stream row a surviving prompt output is added to: ``"value"``
  (``P^v``, default) or ``"mean"`` (of ``P^q, P^k, P^v``); in the post-projection variant the
  head-space vectors are flattened to width ``D = H*d``.
* ``shared=True`` ties the three (one ``P_j`` per layer): ordinary IVLP/VPT-deep prompts, run
  through the towers' deep-prompt path (pre-projection only).

**Loss.** ``CE(z_s, y) + kl_weight * T^2 * KL(softmax(z_t/T) || softmax(z_s/T))`` (KL summed over
classes, averaged over the batch), ``z_t`` the frozen teacher's zero-shot logits over exactly
the classes in ``z_s``. With ``pomp=True`` the CE is POMP's local-contrast loss
(:mod:`fastprompt.learners.pomp.learner`), and the teacher's logits over the same ``K`` columns get **the
same** rejection masks and local-correction offsets as the student's, so the KL compares the
two corrected sampled softmaxes (each an estimate of its full-vocabulary softmax); rejected
columns carry zero probability on both sides.

**Teacher.** By default the student's own frozen CLIP with CLIP's 7 "simple" ImageNet templates
(:class:`~fastprompt.learners.teacher.CLIPTeacher`); any other open_clip model can be passed
(``teacher=model``, or ``teacher=("ViT-L-14", "openai")`` in ``from_open_clip``). Its class
features are computed once per class list. When the teacher is the student's model and the
student's image side is unprompted, the frozen image features are shared, not recomputed.
"""
from __future__ import annotations

import warnings
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...towers import QKVPrompt
from ..base import PromptLearner
from ..class_sharding import full_text_features
from ..pomp.objective import POMPObjective
from ..pretrained import load_open_clip, recorded_pretrained
from ..prompts import context_template, context_word_embeddings, coop_plan, text_tokens, tokenize_prompts
from ..teacher import CLIPTeacher, distillation_kl
from .config import RPPConfig

DEFAULT_N_CTX = 4
FROZEN_TEXT_PHRASE = "a photo of a"  # text side of branches="vision" when ctx_init is empty


class RPPLearner(PromptLearner):
    """RPP prompt learner (see the module docstring for the semantics).

    Trainable parameters (J = depth, M / M_v = text / vision prompt rows, D / W = tower widths,
    H / d = heads / head width):

    * unshared, pre-projection: ``text_q``, ``text_k``, ``text_v`` ``[J, M, D]``; ``vision_q``,
      ``vision_k``, ``vision_v`` ``[J, M_v, W]``;
    * unshared, post-projection: the same names, ``[J, M, H, d]`` / ``[J, M_v, H_v, d_v]``;
    * shared: ``text_prompts [J, M, D]``, ``vision_prompts [J, M_v, W]``.

    Extra constructor arguments: ``teacher`` (an open_clip model, a :class:`CLIPTeacher`, or in
    ``from_open_clip`` a ``(name, pretrained)`` pair; default: the student's own model),
    ``teacher_projection`` and ``teacher_tokenizer``.
    """

    method = "rpp"
    config_class = RPPConfig

    @property
    def frozen_image_side(self) -> bool:
        """Images enter only through the frozen tower: no vision prompts, and a teacher (if any)
        that shares the student's image tower (so it reads the student's features)."""
        return not self.prompt_vision and (self.teacher is None
                                           or self.teacher.vision_tower.visual is self.vision_tower.visual)

    def __init__(self, model: nn.Module, classnames, config: RPPConfig, *, teacher=None,
                 teacher_projection=None, teacher_tokenizer=None, **kwargs):
        super().__init__(model, classnames, config, **kwargs)
        self.prompt_text = config.branches in ("text", "both")
        self.prompt_vision = config.branches in ("vision", "both")
        if self.prompt_vision:
            self._require_prompted_image_tower()
        for name, tower, used in (("text", self.text_tower, self.prompt_text),
                                  ("vision", self.vision_tower, self.prompt_vision)):
            if used and config.depth > tower.layers:
                raise ValueError(f"depth={config.depth} exceeds the {name} tower's {tower.layers} layers")
        self.template = self._context_template()
        self.n_ctx = self.template.n_ctx
        self.n_ctx_vision = config.n_ctx_vision or self.n_ctx
        self._init_prompts()
        self.teacher = self._build_teacher(teacher, teacher_projection, teacher_tokenizer)
        self.objective = None
        if config.pomp:
            self.objective = POMPObjective(config.pomp_num_sampled_classes, mode="local",
                                           local_correction=config.pomp_local_correction,
                                           log_base=config.pomp_log_base, seed=config.pomp_seed)
        self._frozen_text = None
        self._rebuild_plan()
        if self.prompt_text:  # the q/k/v prompts' rows must exist, unpooled, in every prompt
            self.text_tower.check_deep_prompts(self.plan, self.n_ctx, qkv=not self.config.shared)

    # ---- construction --------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: nn.Module, classnames: Sequence[str], *, tokenizer=None, teacher=None,
                   teacher_projection=None, teacher_tokenizer=None, **cfg):
        """Wrap an open_clip model; ``teacher`` etc. as in the class docstring."""
        return cls(model, classnames, cls.config_class(**cfg), tokenizer=tokenizer, teacher=teacher,
                   teacher_projection=teacher_projection, teacher_tokenizer=teacher_tokenizer)

    @classmethod
    def from_open_clip(cls, name: str, pretrained: Optional[str], classnames: Sequence[str], *, device=None,
                       precision: str = "fp32", cache_dir: Optional[str] = None, tokenizer=None, teacher=None,
                       teacher_projection=None, teacher_tokenizer=None, **cfg):
        """Build the open_clip model ``name``; ``teacher=("ViT-L-14", "openai")`` loads another teacher."""
        import open_clip

        config = cls.config_class(**cfg)
        model = load_open_clip(name, pretrained, device=device, precision=precision, cache_dir=cache_dir)
        if tokenizer is None:
            tokenizer = open_clip.get_tokenizer(name)
        if isinstance(teacher, (tuple, list)):
            if len(teacher) != 2:
                raise ValueError(f"teacher must be a (name, pretrained) pair, got {teacher!r}")
            if teacher_tokenizer is None:
                teacher_tokenizer = open_clip.get_tokenizer(teacher[0])
            teacher = load_open_clip(teacher[0], teacher[1], device=device, precision=precision, cache_dir=cache_dir)
        return cls(model, classnames, config, tokenizer=tokenizer, model_name=name,
                   pretrained=recorded_pretrained(pretrained),
                   teacher=teacher, teacher_projection=teacher_projection, teacher_tokenizer=teacher_tokenizer)

    def _context_template(self):
        cfg = self.config
        if cfg.ctx_init:
            n_tokens = len(text_tokens(self.tokenizer, cfg.ctx_init.replace("_", " ")))
            limit = self.text_tower.context_length - 3  # SOT, at least one class token, EOT
            if n_tokens > limit:
                raise ValueError(f"ctx_init has {n_tokens} tokens; at most {limit} fit in the text tower's context "
                                 f"length {self.text_tower.context_length} with SOT, a class name and EOT")
            template = context_template(self.tokenizer, 0, cfg.ctx_init)
            if cfg.n_ctx is not None and cfg.n_ctx != template.n_ctx:
                raise ValueError(f"n_ctx={cfg.n_ctx} disagrees with ctx_init {cfg.ctx_init!r} ({template.n_ctx} words, "
                                 "which set the prompt length); leave n_ctx=None")
            return template
        return context_template(self.tokenizer, cfg.n_ctx or DEFAULT_N_CTX, "")

    def _init_prompts(self) -> None:
        cfg = self.config
        depth, std = cfg.depth, cfg.init_std
        device = self.text_tower.device

        def param(*shape):
            return nn.Parameter(torch.empty(shape, device=device).normal_(0.0, std))

        for side, used, tower, m in (("text", self.prompt_text, self.text_tower, self.n_ctx),
                                     ("vision", self.prompt_vision, self.vision_tower, self.n_ctx_vision)):
            if not used:
                continue
            if cfg.shared:
                setattr(self, f"{side}_prompts", param(depth, m, tower.width))
                continue
            row_shape = (tower.width,) if cfg.variant == "pre" else (tower.heads, tower.width // tower.heads)
            for part in ("q", "k", "v"):
                setattr(self, f"{side}_{part}", param(depth, m, *row_shape))
        if self.prompt_text and self.template.init_ids is not None:
            self._init_text_from_words()

    @torch.no_grad()
    def _init_text_from_words(self) -> None:
        words = context_word_embeddings(self.text_tower, self.template)
        if self.config.shared:
            self.text_prompts[0].copy_(words)
            return
        if self.config.variant == "pre":
            for part in ("q", "k", "v"):
                getattr(self, f"text_{part}")[0].copy_(words)
            return
        # the words sit where the tokenizer puts text (after [SOT] for CLIP, at 0 without a start token)
        q, k, v = self.text_tower.input_heads(words, start=self.template.start)
        for part, t in (("q", q), ("k", k), ("v", v)):
            getattr(self, f"text_{part}")[0].copy_(t)

    def _build_teacher(self, teacher, projection, tokenizer) -> Optional[CLIPTeacher]:
        cfg = self.config
        if cfg.kl_weight == 0:
            if teacher is not None or projection is not None:
                warnings.warn("kl_weight=0: the teacher is not used", stacklevel=4)
            return None
        if isinstance(teacher, CLIPTeacher):
            if projection is not None or tokenizer is not None:
                raise ValueError("teacher_projection / teacher_tokenizer are set on a CLIPTeacher itself, not here")
        else:
            if teacher is not None and not isinstance(teacher, nn.Module):
                raise ValueError("teacher must be an open_clip model, a CLIPTeacher or None, got "
                                 f"{type(teacher).__name__}")
            teacher_model = self.clip if teacher is None else teacher
            image_model = None
            if cfg.teacher_image_encoder == "student" and teacher_model is not self.clip:
                image_model = self.clip
            if tokenizer is None and teacher_model is self.clip:
                tokenizer = self.tokenizer
            try:
                teacher = CLIPTeacher(teacher_model, cfg.teacher_templates, tokenizer=tokenizer, backend=cfg.backend,
                                      image_model=image_model, projection=projection, cache=cfg.teacher_cache)
            except ValueError as err:
                raise ValueError(f"teacher: {err} (teacher_projection)") from None
        if teacher.uses_own_images:
            own, mine = teacher.vision_tower.image_size, self.vision_tower.image_size
            if own != mine:
                raise ValueError(f"teacher: its image tower expects {own} images but the student's expects {mine}; "
                                 "use teacher_image_encoder='student' or a teacher with the same input size")
        return teacher

    def _rebuild_plan(self) -> None:
        if self.prompt_text:
            self.plan = coop_plan(self.tokenizer, self._classnames, self.template, position="end",
                                  context_length=self.text_tower.context_length)
        self._frozen_text = None
        if self.teacher is not None:
            self.teacher.set_classnames(self._classnames)

    # ---- prompts per layer -----------------------------------------------------------------------
    def _layer_prompts(self, side: str, residual_layers: Sequence[int]) -> List[QKVPrompt]:
        """``QKVPrompt`` per prompted layer; residual rows only for ``residual_layers``."""
        q, k, v = (getattr(self, f"{side}_{part}") for part in ("q", "k", "v"))
        out = []
        for j in range(self.config.depth):
            res = None
            if j in residual_layers:
                res = v[j] if self.config.residual_row == "value" else (q[j] + k[j] + v[j]) / 3
                if self.config.variant == "post":
                    res = res.flatten(-2)
            out.append(QKVPrompt(k=k[j], v=v[j], q=q[j], residual=res))
        return out

    # ---- features ------------------------------------------------------------------------------
    def text_features(self, class_indices=None) -> torch.Tensor:
        """Unnormalised class text features ``[C, E]`` (``[K, E]`` for ``class_indices [K]``)."""
        if not self.prompt_text:
            frozen = self._frozen_text_features()
            return frozen if class_indices is None else frozen[torch.as_tensor(class_indices, device=frozen.device)]
        plan = self.plan if class_indices is None else self.plan.select(class_indices)
        depth = self.config.depth
        if self.config.shared:
            overrides = [None] + [self.text_prompts[j] for j in range(1, depth)]
            return self.text_tower.encode(plan, self.text_prompts[0], prefix_overrides=overrides)
        prompts = self._layer_prompts("text", (0, depth - 1))
        return self.text_tower.encode(plan, prompts[0].residual, prefix_prompts=prompts)

    def _frozen_text_features(self) -> torch.Tensor:
        """Frozen features of ``"<phrase> <class>."`` (branches="vision"), computed once per class list."""
        device = self.text_tower.device
        if self._frozen_text is None or self._frozen_text.device != device:
            phrase = self.config.ctx_init.replace("_", " ") or FROZEN_TEXT_PHRASE
            ids = tokenize_prompts(self.tokenizer, [f"{phrase} {name}." for name in self._classnames],
                                   self._classnames).to(device)
            with torch.no_grad():
                self._frozen_text = self.text_tower.encode_token_ids(ids)
        return self._frozen_text

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image features ``[B, E]`` (prompted when the vision branch is on)."""
        if not self.prompt_vision:
            return self.encode_image(images)
        self._refuse_features(images)
        if self.config.shared:
            features = self.vision_tower(images, deep_prompts=list(self.vision_prompts.unbind(0)))
        else:
            prompts = self._layer_prompts("vision", (self.config.depth - 1,))
            features = self.vision_tower(images, qkv_prompts=prompts)
        return features / features.norm(dim=-1, keepdim=True)

    # ---- loss ----------------------------------------------------------------------------------
    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``CE`` (or POMP's loss) ``+ kl_weight * T^2 * KL(teacher || student)`` for ``labels [B]``."""
        self.check_labels(images, labels)
        image = self.image_features(images)
        sample = None
        if self.objective is not None:
            sample = self.objective.sample(labels, self.n_classes)
            text = self.text_features(sample.classes)
            text = text / text.norm(dim=-1, keepdim=True)
            logits = self.objective.logits(image, text, sample, self.logit_scale)
            loss = self.objective.loss_from_logits(logits, sample)
        else:
            text = full_text_features(self)  # this rank's class slice, all-gathered, when shard_classes is on
            text = text / text.norm(dim=-1, keepdim=True)
            logits = self.logit_scale * image @ text.to(image.dtype).t()
            loss = F.cross_entropy(logits, labels)
        if self.teacher is None:
            return loss
        teacher_logits = self.teacher_logits(images, sample, student_image_features=image)
        return loss + self.config.kl_weight * distillation_kl(logits, teacher_logits, self.config.temperature)

    @torch.no_grad()
    def teacher_logits(self, images: torch.Tensor, sample=None, student_image_features=None) -> torch.Tensor:
        """The teacher's zero-shot logits over the classes the student scores: ``[B, C]``, or the
        ``[B, K]`` POMP columns of ``sample`` with the same masks and offsets."""
        if self.teacher is None:
            raise ValueError("this learner has no teacher (kl_weight=0)")
        shares_images = (student_image_features is not None and not self.prompt_vision
                         and self.teacher.vision_tower.visual is self.vision_tower.visual)
        image = student_image_features.detach() if shares_images else self.teacher.image_features(images)
        weights = self.teacher.class_features
        if sample is None:
            return self.teacher.logit_scale * image.float() @ weights.t()
        return self.objective.logits(image.float(), weights[sample.classes], sample, self.teacher.logit_scale)
