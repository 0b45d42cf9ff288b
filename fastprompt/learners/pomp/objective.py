"""POMP's training objective: local contrast with local correction, or the full softmax.

Ren et al., "Prompt Pre-Training with Twenty-Thousand Classes for Open-Vocabulary Visual
Recognition" (NeurIPS 2023); semantics follow amazon-science/prompt-pretraining @ 24bca56
``trainers/pomp.py`` (``CustomCLIP.forward`` in ``EPT`` mode, ``negative_sampling`` in ``random``
mode, ``POMP.forward_backward``).

:class:`POMPObjective` works with any learner whose text features can be computed for a subset
of its classes (``CoOpLearner.text_features(class_indices)``, ``RPPLearner``). One training step:

1. ``K-1`` negative classes are drawn uniformly without replacement from all ``N`` classes
   (``randperm(N)[:K-1]``), **one draw shared by the whole batch**;
2. logits ``[B, K]``: column 0 is each image's own class, columns ``1..K-1`` the negatives;
3. a negative equal to the image's label is *rejected*: ``-1e6`` is added to its logit;
4. local correction (a sampled-softmax correction): every negative logit gets
   ``log(N-1) - log(K-1-r_i)``, ``r_i`` = number of rejected negatives of image ``i``, with
   **base-10 logs as the original** (``log_base="e"`` for the natural-log version, which is the
   textbook correction; the two differ by a factor 2.303 in the offset);
5. cross-entropy with target index 0 for every row.

Differences from the original that do not change the numbers: the original encodes one prompt
per image *and* per negative (``B + K-1`` prompts, duplicates for repeated labels and augmented
views); here every distinct class is encoded once (``unique(labels ∪ negatives)``) on the packed
text path and the logits are gathered, which is exact.

``mode="full"`` is the exact softmax over all ``N`` classes (plain cross-entropy against the
labels), affordable with the prefix-shared packed text path.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..class_sharding import full_text_features

POMP_MODES = ("local", "full")
LOG_BASES = ("10", "e")
REJECTED_LOGIT_OFFSET = 1e6  # subtracted from a negative that equals the image's label (as the original)


@dataclass
class POMPSample:
    """The classes one step scores (see :meth:`POMPObjective.sample`).

    Attributes:
        classes: ``[U]`` distinct class ids whose text features the step needs (sorted), or
            ``None`` in full mode (all classes).
        labels: ``[B]`` the batch labels.
        negatives: ``[K-1]`` the sampled negative class ids (shared by the batch); empty in full mode.
        positive_col: ``[B]`` column of each label in ``classes`` (local mode).
        negative_col: ``[K-1]`` column of each negative in ``classes`` (local mode).
        rejected: ``[B, K-1]`` bool, negative ``j`` equals label ``i`` (local mode).
        offset: ``[B, K-1]`` additive logit offsets of the negatives (``-1e6`` on rejected
            entries plus the local correction, if enabled); ``None`` in full mode.
    """

    classes: Optional[torch.Tensor]
    labels: torch.Tensor
    negatives: torch.Tensor
    positive_col: Optional[torch.Tensor] = None
    negative_col: Optional[torch.Tensor] = None
    rejected: Optional[torch.Tensor] = None
    offset: Optional[torch.Tensor] = None

    @property
    def local(self) -> bool:
        return self.classes is not None


class POMPObjective:
    """POMP's local-contrast loss (or the exact full-vocabulary softmax).

    Args:
        num_sampled_classes: ``K`` (``UPDATE_CLASS_NUM``): the positive plus ``K-1`` sampled
            negatives per step. The original's scripts use 1000 (``train.py`` default 128).
            Needs ``K-1 <= N``.
        mode: ``"local"`` (POMP's ``EPT`` training) or ``"full"`` (exact softmax over all classes).
        local_correction: add ``log(N-1) - log(K-1-r_i)`` to the negative logits (the original's
            default, ``LOCAL_CORRECTION=True``).
        log_base: ``"10"`` (the original's ``torch.log10``) or ``"e"``.
        seed: seed of a private ``torch.Generator`` for the negative draws (reproducible,
            independent of the global RNG). ``None`` draws from the global CPU RNG as the
            original does. Under DDP give every rank a different seed (the original's ranks draw
            different negatives).
    """

    def __init__(self, num_sampled_classes: int = 1000, *, mode: str = "local", local_correction: bool = True,
                 log_base: str = "10", seed: Optional[int] = None):
        check_pomp_args(num_sampled_classes, mode, log_base, seed, prefix="")
        self.num_sampled_classes = int(num_sampled_classes)
        self.mode = mode
        self.local_correction = bool(local_correction)
        self.log_base = str(log_base)
        self.seed = seed
        self.generator = None if seed is None else torch.Generator().manual_seed(int(seed))

    def __repr__(self) -> str:
        return (f"POMPObjective(num_sampled_classes={self.num_sampled_classes}, mode={self.mode!r}, "
                f"local_correction={self.local_correction}, log_base={self.log_base!r}, seed={self.seed})")

    # ---- sampling ------------------------------------------------------------------------------
    def draw_negatives(self, n_classes: int) -> torch.Tensor:
        """``[K-1]`` negative class ids: ``randperm(N)[:K-1]`` on CPU (the original's draw)."""
        k_neg = self.num_sampled_classes - 1
        if k_neg > n_classes:
            raise ValueError(f"num_sampled_classes={self.num_sampled_classes} needs at least K-1 = {k_neg} classes "
                             f"but there are {n_classes}; use a smaller K or mode='full'")
        return torch.randperm(n_classes, generator=self.generator)[:k_neg]

    def sample(self, labels: torch.Tensor, n_classes: int, negatives: Optional[torch.Tensor] = None) -> POMPSample:
        """The classes and logit offsets of one step for ``labels [B]`` out of ``n_classes``.

        ``negatives`` (``[K-1]``) overrides the draw (tests, or negatives agreed across ranks).
        """
        if labels.dim() != 1:
            raise ValueError(f"labels must have shape [B], got {tuple(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
            raise ValueError(f"labels must lie in [0, {n_classes}), got [{int(labels.min())}, {int(labels.max())}]")
        labels = labels.long()
        device = labels.device
        if self.mode == "full":
            return POMPSample(None, labels, labels.new_zeros(0))
        if negatives is None:
            negatives = self.draw_negatives(n_classes)
        negatives = negatives.to(device=device, dtype=torch.long)
        k_neg = self.num_sampled_classes - 1
        if negatives.shape != (k_neg,):
            raise ValueError(f"negatives must have shape [K-1] = [{k_neg}], got {tuple(negatives.shape)}")
        classes, inverse = torch.unique(torch.cat([labels, negatives]), return_inverse=True)
        batch = labels.shape[0]
        rejected = labels[:, None] == negatives[None, :]                      # [B, K-1]
        offset = rejected.to(torch.float64) * -REJECTED_LOGIT_OFFSET
        if self.local_correction:
            log = torch.log10 if self.log_base == "10" else torch.log
            n_kept = k_neg - rejected.sum(-1, keepdim=True).to(torch.float64)  # K-1-r_i
            # A row whose every negative is rejected (only possible with K = 2) has log(0) = -inf here,
            # which would turn its -1e6 logits into NaN; its offset reaches no kept logit, so any
            # finite value is exact. Every other row is unchanged.
            n_kept = n_kept.clamp_min(1.0)
            offset = offset + (log(torch.tensor(float(n_classes - 1), dtype=torch.float64)) - log(n_kept))
        return POMPSample(classes, labels, negatives, inverse[:batch], inverse[batch:], rejected, offset)

    # ---- logits and loss ---------------------------------------------------------------------
    def logits(self, image_features: torch.Tensor, class_features: torch.Tensor, sample: POMPSample,
               logit_scale) -> torch.Tensor:
        """Logits of one step from L2-normalised features.

        Args:
            image_features: ``[B, E]``.
            class_features: ``[U, E]`` for ``sample.classes`` (local mode) or ``[N, E]`` for all
                classes (full mode).
            sample: from :meth:`sample`.
            logit_scale: the CLIP scale (``exp(logit_scale)``, 100 for CLIP).

        Returns:
            ``[B, K]`` (local: column 0 = own class, then the negatives, offsets applied) or
            ``[B, N]`` (full).
        """
        all_logits = logit_scale * image_features @ class_features.to(image_features.dtype).t()
        if not sample.local:
            return all_logits
        rows = torch.arange(all_logits.shape[0], device=all_logits.device)
        pos = all_logits[rows, sample.positive_col][:, None]                 # [B, 1]
        neg = all_logits[:, sample.negative_col] + sample.offset.to(all_logits.dtype)
        return torch.cat([pos, neg], dim=1)

    @staticmethod
    def targets(sample: POMPSample) -> torch.Tensor:
        """Cross-entropy targets: 0 for every row (local mode), the labels (full mode)."""
        return torch.zeros_like(sample.labels) if sample.local else sample.labels

    def loss_from_logits(self, logits: torch.Tensor, sample: POMPSample) -> torch.Tensor:
        return F.cross_entropy(logits, self.targets(sample))

    def loss(self, learner, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """POMP loss of a text-prompt learner (``CoOpLearner`` and subclasses).

        Uses ``learner.encode_image(images)`` (normalised, frozen) and
        ``learner.text_features(class_indices)`` (unnormalised, with autograd into the prompts); in
        full mode with ``learner.shard_classes`` on, the class-sharded features of
        :func:`fastprompt.learners.class_sharding.full_text_features`.
        """
        sample = self.sample(labels, learner.n_classes)
        image = learner.encode_image(images)
        # Full mode reads all N classes: under torchrun with learner.shard_classes each rank encodes
        # only its slice. Local mode encodes just the step's K sampled classes and stays unsharded.
        text = learner.text_features(sample.classes) if sample.local else full_text_features(learner)
        text = text / text.norm(dim=-1, keepdim=True)
        return self.loss_from_logits(self.logits(image, text, sample, learner.logit_scale), sample)


def check_pomp_args(num_sampled_classes, mode, log_base, seed, prefix: str = "") -> None:
    """``ValueError`` naming the argument (``prefix`` + name) for a bad POMP setting."""
    if isinstance(num_sampled_classes, bool) or not isinstance(num_sampled_classes, int) or num_sampled_classes < 2:
        raise ValueError(f"{prefix}num_sampled_classes must be an int >= 2 (the positive plus at least one "
                         f"negative), got {num_sampled_classes!r}")
    if mode not in POMP_MODES:
        raise ValueError(f"{prefix}mode must be one of {POMP_MODES}, got {mode!r}")
    if str(log_base) not in LOG_BASES:
        raise ValueError(f"{prefix}log_base must be one of {LOG_BASES} ('10' as the original), got {log_base!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"{prefix}seed must be an int or None, got {seed!r}")
