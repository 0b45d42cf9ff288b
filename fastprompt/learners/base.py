"""The learner base class: construction from open_clip, the frozen towers, checkpoints.

Every method (``CoOpLearner``, ``CoCoOpLearner``, ...) is a subclass that owns its prompt
parameters, builds its text plan and implements ``forward``/``loss``. Users touch only this API:

    learner = fastprompt.CoOpLearner.from_open_clip("ViT-B-16", "openai", classnames, n_ctx=16)
    logits = learner(images)                 # [B, C]
    loss = learner.loss(images, labels)      # the method's full objective
    learner.set_classnames(new_names)        # base-to-novel: prompts kept
    W = learner.text_classifier()            # [C, E] normalised, plain tensor
    learner.save_pretrained(path); CoOpLearner.from_pretrained(path)
    sd = learner.prompt_state_dict()         # the learned tensors only; learner.load_prompt_state_dict(sd)
"""
from __future__ import annotations

import abc
import dataclasses
import os
from typing import Any, ClassVar, Dict, List, Mapping, NamedTuple, Optional, Sequence, Type

import torch
import torch.nn.functional as F
from torch import nn

from ..towers import image_tower
from ..towers.hf_text import token_embedding_of
from ..towers.text_tower_for import text_tower
from ..towers.frozen_image import UnpromptableImageTowerError
from ..version import __version__
from .checkpoint import check_config_types, original_prompt_state, read_prompt_checkpoint, write_prompt_checkpoint
from .frozen_precision import FROZEN_IMAGE_PRECISIONS, frozen_image_autocast
from .image_features import ImageFeatures
from .pretrained import load_open_clip, recorded_pretrained, resolve_tokenizer
from .prompts import clean_classnames

LEARNERS: Dict[str, Type["PromptLearner"]] = {}


class PromptLoadResult(NamedTuple):
    """What :meth:`PromptLearner.load_prompt_state_dict` did not load (both empty when ``strict``)."""

    missing_keys: List[str]
    unexpected_keys: List[str]


def default_tokenizer(model: nn.Module):
    """open_clip's CLIP BPE tokenizer sized to the model's context length.

    Only for a text tower with that tokenizer's vocabulary: ids from another vocabulary would pick
    the wrong embeddings without a word (or none at all), so a text tower whose token embedding has
    another number of rows (SigLIP, MobileCLIP-S, ...) is a ``ValueError`` asking for its tokenizer.
    """
    from open_clip.tokenizer import SimpleTokenizer

    context_length = getattr(model, "context_length", None) or 77
    tokenizer = SimpleTokenizer(context_length=context_length)
    embedding = token_embedding_of(model)
    rows = embedding.num_embeddings if isinstance(embedding, nn.Embedding) else None
    if rows is not None and rows != tokenizer.vocab_size:
        raise ValueError(f"this model's text tower has a vocabulary of {rows} tokens, not the {tokenizer.vocab_size} "
                         "of CLIP's BPE tokenizer, the default: pass the model's own tokenizer, e.g. "
                         "from_model(model, classnames, tokenizer=open_clip.get_tokenizer(model_name))")
    return tokenizer


@dataclasses.dataclass
class LearnerConfig:
    """Settings every learner has.

    Attributes:
        backend: ``prompt_attention`` backend for every attention layer ("auto", "eager", ...).
        frozen_image_precision: ``"fp32"`` (default, exact) or ``"bf16"``: autocast of the frozen,
            unprompted image forward (``encode_image``), about 2-3x faster where the hardware
            has bf16 matrix units, relative feature error about 1 % against fp32
            (:mod:`fastprompt.learners.frozen_precision` has the measurements and the fallback).
    """

    backend: str = "auto"
    frozen_image_precision: str = "fp32"

    def __post_init__(self):
        from ..ops import registered_backends

        if self.backend != "auto" and self.backend not in registered_backends():
            raise ValueError(f"backend must be 'auto' or one of {registered_backends()}, got {self.backend!r}")
        if self.frozen_image_precision not in FROZEN_IMAGE_PRECISIONS:
            raise ValueError(f"frozen_image_precision must be one of {FROZEN_IMAGE_PRECISIONS}, got "
                             f"{self.frozen_image_precision!r}")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    # Checks for subclasses' __post_init__: a ValueError naming the setting.
    def _require_at_least(self, minimum: float, *names: str, note: str = "") -> None:
        for name in names:
            value = getattr(self, name)
            if value < minimum:
                raise ValueError(f"{name} must be >= {minimum}{note}, got {value}")

    def _require_positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")


class PromptLearner(nn.Module, abc.ABC):
    """Base class of all learners; see the module docstring for the API."""

    method: ClassVar[str] = ""
    config_class: ClassVar[Type[LearnerConfig]] = LearnerConfig
    # Class-sharded text encoding for the full-vocabulary losses (POMP's mode="full", RPP's plain
    # cross-entropy) under torchrun: set ``learner.shard_classes = True`` and each rank encodes only
    # its slice of the classes, the features all-gathered with autograd
    # (fastprompt.learners.class_sharding). Off by default, so one process runs exactly as before;
    # without a process group it changes nothing either.
    shard_classes: bool = False
    # Whether every image the learner reads goes through ``encode_image`` without prompts (the
    # frozen CLIP image tower), so that features computed once can stand in for the images
    # (ImageFeatures, the trainer's feature cache). Off unless a method says so: a learner that
    # prompts the image tower would silently train on stale features.
    frozen_image_side: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.method:
            LEARNERS[cls.method] = cls

    def __init__(self, model: nn.Module, classnames: Sequence[str], config: LearnerConfig,
                 tokenizer=None, model_name: Optional[str] = None, pretrained: Optional[str] = None):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"config must be a {self.config_class.__name__}, got {type(config).__name__}")
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.clip = model
        self.config = config
        self.model_name = model_name
        self.pretrained = pretrained
        self.tokenizer = tokenizer if tokenizer is not None else default_tokenizer(model)
        self.text_tower = text_tower(model, config.backend, self.tokenizer)
        # open_clip's or timm's ViT (deep prompts, fast path), or any other tower run frozen as it is
        self.vision_tower = image_tower(model.visual, backend=config.backend)
        self._classnames: List[str] = clean_classnames(classnames)

    def _require_prompted_image_tower(self) -> None:
        """For the methods that prompt the image tower's layers: refuse, by name, a tower they cannot
        enter (a ResNet, a timm tower such as ConvNeXt or Swin, ...), saying what works on it."""
        if not self.vision_tower.prompted:
            name = type(self).__name__
            raise UnpromptableImageTowerError(
                f"{name} prompts the layers of the image tower and needs a ViT image tower; this model's is "
                f"{self.vision_tower.not_prompted} (deep prompts enter open_clip's VisionTransformer with 'tok' or "
                "'avg' pooling and timm's ViTs: EVA, PE-Core, SigLIP). On this backbone use a "
                "method that prompts only the text, whose image tower stays frozen (CoOp, CoCoOp, KgCoOp, PRE, "
                f"SoftCPT, POMP, or RPP with branches='text'); for {name} use a ViT backbone such as ViT-B-16")

    def train(self, mode: bool = True) -> "PromptLearner":
        """Train or eval mode for the prompt modules; the frozen CLIP always stays in eval mode.

        The originals hand only their prompt learners to the trainer's mode switch (CoOp's
        ``register_model("prompt_learner", ...)``), so CLIP's BatchNorm (ResNet towers) keeps its
        running statistics; with ViT towers (no dropout in CLIP) nothing else would change.
        """
        super().train(mode)
        self.clip.eval()
        return self

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: nn.Module, classnames: Sequence[str], *, tokenizer=None, **cfg):
        """Wrap an already-built open_clip model; ``cfg`` are the method's settings (``config_class``).

        ``tokenizer``: the model's text tokenizer (a callable ``texts -> [N, context_length]`` ids),
        e.g. ``open_clip.get_tokenizer(name)``; default open_clip's CLIP BPE tokenizer, which serves
        only a text tower with CLIP's vocabulary (any other is refused: pass its own tokenizer).

        The learner holds ``model`` itself, not a copy (``learner.clip is model``), and changes it
        in place: every parameter of ``model`` gets ``requires_grad=False`` and ``model`` is put in
        eval mode, where it stays (``learner.train()`` switches only the prompt modules). Moving
        or casting the learner (``.to(device)``, ``.half()``) moves or casts ``model`` too. The
        settings are checked before ``model`` is touched; the class names only after it is frozen,
        so a call refused for its class names may already have frozen it. To train ``model``
        itself again, undo both: ``model.requires_grad_(True); model.train()`` (the learner then
        computes gradients for CLIP as well: do it when done with the learner).
        :meth:`from_open_clip` builds a model of its own, so no caller's model is affected.
        """
        return cls(model, classnames, cls.config_class(**cfg), tokenizer=tokenizer)

    @classmethod
    def from_open_clip(cls, name: str, pretrained: Optional[str], classnames: Sequence[str], *,
                       device=None, precision: str = "fp32", cache_dir: Optional[str] = None,
                       tokenizer=None, **cfg):
        """Build the open_clip model ``name`` with weights ``pretrained`` (a tag, a file, or None),
        frozen and in eval mode as in :meth:`from_model` (the model is the learner's own).

        ``tokenizer``: the text tokenizer (a callable ``texts -> [N, context_length]`` ids, such as
        open_clip's); default ``open_clip.get_tokenizer(name)``, resolved before the model is built.
        Pass one where that needs what this machine lacks (a package, a download), or to use your own.

        Raises:
            TokenizerNotAvailableError: (a ``PretrainedNotAvailableError``) no ``tokenizer`` given and
                ``name``'s needs a package that is not installed (the message names it) or files that
                cannot be fetched; raised in milliseconds, before the model is built.
            ValueError: unknown model name or tag; :class:`~fastprompt.errors.PretrainedFileError`
                (a ``ValueError``) when ``pretrained`` is a file or folder that is not a checkpoint
                of ``name`` (see :func:`~fastprompt.learners.pretrained.load_open_clip`).
            FileNotFoundError: ``pretrained`` is a path and nothing is there.
            PretrainedNotAvailableError: the tag's weights are not cached and cannot be fetched.
        """
        config = cls.config_class(**cfg)  # validate before the (slow) model build
        if tokenizer is None:  # likewise: a missing package is reported before the build
            tokenizer = resolve_tokenizer(name, cache_dir=cache_dir)
        model = load_open_clip(name, pretrained, device=device, precision=precision, cache_dir=cache_dir,
                               check_tokenizer=False)
        return cls(model, classnames, config, tokenizer=tokenizer, model_name=name,
                   pretrained=recorded_pretrained(pretrained))

    # ---- classes -----------------------------------------------------------------------------
    @property
    def classnames(self) -> List[str]:
        return list(self._classnames)

    @property
    def n_classes(self) -> int:
        return len(self._classnames)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        """Switch to another class list (base-to-novel, cross-dataset); prompts are kept."""
        self._classnames = clean_classnames(classnames)
        self._rebuild_plan()

    @abc.abstractmethod
    def _rebuild_plan(self) -> None:
        """Rebuild the text plan(s) for ``self._classnames``."""

    # ---- shared computations -----------------------------------------------------------------
    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp()

    def encode_image(self, images: torch.Tensor, deep_prompts=None) -> torch.Tensor:
        """L2-normalised image features ``[B, E]``; the frozen forward runs without autograd.

        ``images``: preprocessed images ``[B, 3, H, W]``, or :class:`ImageFeatures` computed
        earlier by this method (returned as they are; refused with ``deep_prompts``). The frozen
        forward runs in ``config.frozen_image_precision`` (bf16 autocast when asked and
        supported), its features cast back to the tower's dtype before the normalisation.
        """
        if isinstance(images, ImageFeatures):
            if deep_prompts is not None:
                self._refuse_features(images)
            return images.plain()
        if deep_prompts is None:
            features = self.frozen_image_forward(images)
        else:
            features = self.vision_tower(images, deep_prompts)
        return features / features.norm(dim=-1, keepdim=True)

    def frozen_image_forward(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen, unprompted image tower's output ``[B, E]``, **not** normalised, without
        autograd, in ``config.frozen_image_precision`` (cast back to the tower's dtype)."""
        precision = self.config.frozen_image_precision
        with torch.no_grad(), frozen_image_autocast(precision, images.device):
            features = self.vision_tower(images)
        if precision != "fp32":
            features = features.to(self.vision_tower.dtype)
        return features

    def _refuse_features(self, images) -> None:
        """For a prompted image forward: a clear error when ``images`` are precomputed features."""
        if isinstance(images, ImageFeatures):
            raise ValueError(f"{type(self).__name__} prompts the image tower, so precomputed ImageFeatures cannot "
                             "stand in for its images: pass the preprocessed images [B, 3, H, W]")

    def frozen_features(self, images: torch.Tensor) -> ImageFeatures:
        """:class:`ImageFeatures` ``[B, E]`` of ``images`` to pass later in their place
        (``loss(frozen_features(x), y) == loss(x, y)``): the frozen tower's normalised output.
        Only for the learners whose image side is frozen (:attr:`frozen_image_side`)."""
        if not self.frozen_image_side:
            raise ValueError(f"{type(self).__name__} prompts the image tower, so its image features change with "
                             "every step and cannot be computed once; frozen features serve the text-prompt "
                             "methods (CoOp, CoCoOp, KgCoOp, PRE, SoftCPT, POMP, RPP with branches='text')")
        return ImageFeatures(self.encode_image(images))

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image features ``[B, E]`` as this learner's classifier reads them: the
        frozen tower here; prompted in the methods that prompt the vision tower."""
        return self.encode_image(images)

    # forward / text_classifier below read ``self.text_features()`` (class embeddings ``[C, E]``,
    # not normalised), which every learner with one classifier per class list defines; CoCoOp
    # (per-image classifiers) and SoftCPT (per-task) override both instead.
    def text_classifier(self) -> torch.Tensor:
        """L2-normalised class embeddings ``[C, E]``: ``logits = logit_scale * image_features(x) @ W.T``.

        Where the method prompts the vision tower, pair it with :meth:`image_features`, not with
        plain open_clip image features."""
        with torch.no_grad():
            features = self.text_features()
        return features / features.norm(dim=-1, keepdim=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C]`` over the current classes for preprocessed images ``[B, 3, H, W]``."""
        image = self.image_features(images)
        text = self.text_features()
        text = text / text.norm(dim=-1, keepdim=True)
        return self.logit_scale * image @ text.to(image.dtype).t()

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of ``forward(images)`` against ``labels [B]``."""
        self.check_labels(images, labels)
        return F.cross_entropy(self(images), labels)

    def check_labels(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """``labels`` as every loss takes them: int64 class indices ``[B]`` in ``[0, C)`` for
        ``images [B, ...]``, else a ``ValueError`` naming what is wrong.

        Cross-entropy on its own skips a label of -100 without a word (its ``ignore_index``), gives
        NaN when every label is -100, and answers other bad labels with messages about its own
        internals. The range is checked without reading the labels back to the host
        (``torch._assert_async``): on a GPU a label out of range stops the step with a device-side
        assert, instead of costing a sync on every step.
        """
        n = images.shape[0] if isinstance(images, torch.Tensor) and images.dim() else None
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.dim() != 1 \
                or labels.shape[0] != n:
            got = (f"{labels.dtype} of shape {list(labels.shape)}" if isinstance(labels, torch.Tensor)
                   else type(labels).__name__)
            raise ValueError(f"labels must be an int64 tensor of class indices of shape [{n}] (one per image), "
                             f"got {got}")
        message = f"labels must be class indices in [0, {self.n_classes})"
        try:
            torch._assert_async(((labels >= 0) & (labels < self.n_classes)).all(), message)
        except RuntimeError:  # on the CPU the assert is synchronous: name the values
            bad = sorted(set(labels[(labels < 0) | (labels >= self.n_classes)].tolist()))
            raise ValueError(f"{message} ({self.n_classes} classes), got {bad[:5]}"
                             f"{' (cross-entropy would skip -100 silently)' if -100 in bad else ''}") from None

    # ---- parameters --------------------------------------------------------------------------
    def trainable_named_parameters(self):
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad and not n.startswith("clip.")]

    def trainable_parameters(self) -> List[nn.Parameter]:
        """The prompt parameters to hand to an optimizer."""
        return [p for _, p in self.trainable_named_parameters()]

    def print_trainable_parameters(self) -> None:
        trainable = sum(p.numel() for p in self.trainable_parameters())
        total = sum(p.numel() for p in self.parameters())
        print(f"trainable params: {trainable:,} || all params: {total:,} || "
              f"trainable%: {100.0 * trainable / max(total, 1):.4f}")

    # ---- checkpoints -------------------------------------------------------------------------
    def state_dict(self, *args, **kwargs):
        """``nn.Module.state_dict``, unchanged: every parameter and buffer, the frozen CLIP included
        (and a teacher CLIP where the method has one), so ``load_state_dict`` restores the whole
        module. For the learned tensors alone (kilobytes, not the backbone's hundreds of
        megabytes) use :meth:`prompt_state_dict` / :meth:`load_prompt_state_dict`."""
        return super().state_dict(*args, **kwargs)

    def prompt_state_dict(self) -> Dict[str, torch.Tensor]:
        """The learned tensors only, by name, in the manner of PEFT's ``get_peft_model_state_dict``:
        exactly what :meth:`save_pretrained` writes to ``prompt.safetensors`` (the trainable
        parameters outside the frozen CLIP), each of its parameter's shape (CoOp's ``ctx``:
        ``[n_ctx, width]``, ``[C, n_ctx, width]`` with class-specific contexts) and ``.detach()``-ed
        like ``state_dict()``'s (same storage, device and dtype as the parameter; clone before
        changing one). Plain tensors, so ``torch.save`` / ``safetensors`` write it;
        :meth:`load_prompt_state_dict` reads it back."""
        return {name: p.detach() for name, p in self.trainable_named_parameters()}

    def load_prompt_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True) -> PromptLoadResult:
        """Load :meth:`prompt_state_dict`'s tensors into this learner, in place (PEFT's
        ``set_peft_model_state_dict``), with the checks :meth:`from_pretrained` applies.

        Every tensor is checked before any is copied: a floating-point tensor (copied in the
        parameter's dtype), of the parameter's shape, all values finite; else a ``ValueError``
        naming the tensor. With ``strict`` (the default) the names must be exactly this
        learner's, else a ``ValueError`` naming the missing and unexpected ones; with
        ``strict=False`` the tensors present are loaded and the rest reported in the result.

        Returns:
            ``(missing_keys, unexpected_keys)``, as ``nn.Module.load_state_dict`` returns them.
        """
        return self.load_prompt_state(state_dict, source="prompt state dict", strict=strict)

    def save_pretrained(self, directory: str) -> None:
        """Write ``prompt.safetensors`` (:meth:`prompt_state_dict`) and ``fastprompt_config.json``, atomically.

        Raises:
            StorageFullError: (an ``OSError``) the storage refused a file for want of room; the
                file on disk is the one from before.
        """
        config = {
            "method": self.method,
            "config": self.config.to_dict(),
            "model_name": self.model_name,
            "pretrained": self.pretrained,
            "classnames": self._checkpoint_classnames(),
            "fastprompt_version": __version__,
        }
        metadata = {"method": self.method, "backbone": str(self.model_name), "pretrained": str(self.pretrained),
                    "fastprompt_version": __version__}
        write_prompt_checkpoint(directory, self.prompt_state_dict(), config, metadata)

    def _checkpoint_classnames(self):
        """The class list as the checkpoint records it (what ``from_pretrained`` passes back)."""
        return self.classnames

    @classmethod
    def from_pretrained(cls, directory: str, model: Optional[nn.Module] = None,
                        classnames: Optional[Sequence[str]] = None, *, tokenizer=None, **kwargs):
        """Load a checkpoint written by ``save_pretrained``.

        ``model`` defaults to ``from_open_clip(model_name, pretrained)`` as recorded in the
        checkpoint; ``classnames`` default to the saved ones. Called on ``PromptLearner`` itself
        it returns the learner class recorded in the checkpoint.
        """
        saved, tensors = read_prompt_checkpoint(directory)
        learner_cls = LEARNERS.get(saved["method"])
        if learner_cls is None:
            raise ValueError(f"{directory!r} holds a {saved['method']!r} checkpoint, which this fastprompt "
                             f"does not know (known: {sorted(LEARNERS)})")
        if cls is not PromptLearner and not issubclass(learner_cls, cls):
            raise ValueError(f"{directory!r} holds a {saved['method']!r} checkpoint; load it with "
                             f"{learner_cls.__name__}.from_pretrained")
        check_config_types(learner_cls.config_class, saved.get("config", {}),
                           f"{os.path.join(directory, 'fastprompt_config.json')} 'config'")
        cfg = {**saved.get("config", {}), **kwargs}
        names = classnames if classnames is not None else saved.get("classnames")
        if model is None:
            if not saved.get("model_name"):
                raise ValueError(f"{directory!r} does not record its open_clip model; pass model=...")
            if not saved.get("pretrained"):
                # Building the backbone again would draw *new* random weights: the prompts were
                # trained against the old ones, so every logit would silently change.
                raise ValueError(
                    f"{directory!r} was saved from a {saved['model_name']!r} with random weights "
                    "(pretrained=None), which cannot be rebuilt: a new build draws different weights and "
                    "the prompts would no longer match them. Pass the backbone the prompts were trained "
                    "with: from_pretrained(directory, model=that_model)")
            learner = learner_cls.from_open_clip(saved["model_name"], saved.get("pretrained"), names,
                                                 tokenizer=tokenizer, **cfg)
        else:
            learner = learner_cls.from_model(model, names, tokenizer=tokenizer, **cfg)
            learner.model_name, learner.pretrained = saved.get("model_name"), saved.get("pretrained")
        learner.load_prompt_state(tensors, source=directory)
        return learner

    def load_prompt_state(self, tensors: Mapping[str, torch.Tensor], source: str = "state dict",
                          strict: bool = True) -> PromptLoadResult:
        """Copy named tensors into the trainable parameters; every name must match (unless not
        ``strict``: then the names present), shapes too, and every value must be finite (checked
        before anything is copied). ``source`` names the tensors' origin in the errors."""
        if not isinstance(tensors, Mapping):
            raise ValueError(f"{source} must be a mapping of names to tensors (prompt_state_dict()), got "
                             f"{type(tensors).__name__}")
        params = dict(self.trainable_named_parameters())
        missing = sorted(set(params) - set(tensors))
        unexpected = sorted(set(tensors) - set(params))
        if strict and (missing or unexpected):
            raise ValueError(f"{source} does not match this {type(self).__name__}: missing {missing}, "
                             f"unexpected {unexpected}")
        params = {name: p for name, p in params.items() if name in tensors}
        for name, p in params.items():
            t = tensors[name]
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                raise ValueError(f"{source}: {name!r} must be a floating-point tensor, got "
                                 f"{t.dtype if isinstance(t, torch.Tensor) else type(t).__name__}")
            if tuple(t.shape) != tuple(p.shape):
                raise ValueError(f"{source}: {name!r} has shape {tuple(t.shape)} but this learner's is "
                                 f"{tuple(p.shape)} (different n_ctx, class list or backbone?)")
            finite = torch.isfinite(t)
            if not bool(finite.all()):
                raise ValueError(f"{source}: {name!r} holds {int((~finite).sum())} non-finite value(s) (NaN or "
                                 f"inf) of its {t.numel()}: every logit would be non-finite. The file is damaged or "
                                 "was saved from a run that diverged; use an earlier checkpoint")
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(tensors[name].to(p.dtype))
        return PromptLoadResult(missing, unexpected)

    def load_original_state_dict(self, state) -> None:
        """Load the prompt learner saved by the method's original repository.

        ``state``: its state dict, a Dassl checkpoint dict, or a path to one. The frozen
        ``token_prefix``/``token_suffix`` buffers are ignored (rebuilt from the current classes).
        """
        self.load_prompt_state(self._map_original_names(original_prompt_state(state)), source="original state dict")

    def _map_original_names(self, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Original parameter names -> this learner's names (identity unless a learner renames)."""
        return state

    def extra_repr(self) -> str:
        return f"method={self.method!r}, n_classes={self.n_classes}, config={self.config}"
