"""The probes behind :mod:`fastprompt.pretrain.step_memory`: small real steps, measured and fitted.

Three parts of a step are probed separately, each under
:class:`~fastprompt.pretrain.memory_probe.SavedBytes` (bytes saved for the backward) and
:class:`~fastprompt.pretrain.memory_probe.PeakBytes` (peak above them, forward and backward):

* **text tower**: ``learner.text_features(classes)`` for six class subsets of a few dozen
  classes, fitted by least squares as ``bytes = a + b*T + c*N + d*P + e*S``. The terms are what
  the tower allocates: dense layers run on the ``T`` packed suffix tokens; each of the ``N``
  sequences has an EOT row; attention runs on a padded layout of ``P`` rows (one ``[N, max_len]``
  block, or length buckets of ``n_b x length_b`` where the plan has them) whose q/k/v/out are
  saved, and the eager backend also keeps each call's scores over its own keys,
  ``S = sum_b n_b * length_b**2`` per head. The subsets (spread over the sorted suffix lengths,
  the shortest with and without the longest, the longest, the middle) mix these differently so
  the fit can tell them apart; its largest misfit on the probes is reported.
* **head**: normalisation, logits of ``B`` images against ``n`` class features, cross-entropy
  (and the teacher's KL where the learner has one) for two ``n``: ``bytes = a + b*n``.
* **image side**: ``learner.image_features`` for 1 and 2 images, scaled to the batch. A frozen
  image tower runs without autograd and saves nothing, but its forward still peaks.

Probes compute gradients with ``torch.autograd.grad`` (never touching ``.grad``), take no
optimizer step and draw no random numbers from the global generators: the learner is left
exactly as it was.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..learners.class_sharding import shard_bounds
from ..learners.teacher import distillation_kl
from ..train.precision import Precision
from .memory_probe import PeakBytes, SavedBytes, storage_key, unique_storage_bytes

__all__ = ["Fit", "StepProbes", "PROBE_CLASSES", "LOCAL_DRAWS"]

PROBE_CLASSES = 32  # classes per text-tower probe (one probe has twice as many)
HEAD_CLASSES = (64, 128)  # class columns of the two head probes
LOCAL_DRAWS = 8  # seeded negative draws; the largest stands for a local step
OPTIMIZER_COPIES = 3  # per trainable tensor: its gradient and up to two optimizer moments (Adam)

Layout = Tuple[float, float, float, float]  # (T, N, P, S), see the module docstring


@dataclasses.dataclass
class Fit:
    """``bytes = coef . (1, *features)`` for saved and transient bytes, fitted by least squares.

    Saved bytes are a sum of per-unit terms, so their fit is exact up to ``misfit``. A transient
    peak is a maximum over moments of the step, which a linear fit only approximates; it is
    therefore never predicted below the peak of a probe that did no more work on every feature
    (a step that does at least as much has at least that peak).

    Attributes:
        saved, transient: ``[1 + F]`` coefficients.
        misfit: largest relative error of the fitted saved bytes on the probes themselves (0 when
            the saved tensors are exactly such a sum, which is what makes extrapolating them sound).
        probes: ``(features, transient bytes)`` of every probe.
    """

    saved: torch.Tensor
    transient: torch.Tensor
    misfit: float
    probes: List[Tuple[Tuple[float, ...], int]]

    @staticmethod
    def of(features: Sequence[Sequence[float]], saved: Sequence[int], transient: Sequence[int]) -> "Fit":
        x = torch.tensor([(1.0, *f) for f in features], dtype=torch.float64)
        y = torch.tensor([list(saved), list(transient)], dtype=torch.float64).t()
        # Columns scaled to a common size (tokens are 1e3-1e5 times the constant), so the solver's
        # rank decision is about the probes' design, not the units.
        scale = x.abs().amax(0).clamp_min(1.0)
        # gelsd: least squares that also takes rank-deficient designs (all names equally long, a
        # frozen text side, probes that are the whole class list) and returns the minimum-norm
        # solution, exact for any target inside the span of the probes.
        coef = torch.linalg.lstsq(x / scale, y, driver="gelsd").solution / scale[:, None]
        misfit = ((x @ coef[:, 0] - y[:, 0]).abs() / y[:, 0].clamp_min(1.0)).max()
        return Fit(coef[:, 0], coef[:, 1], float(misfit), [(tuple(f), int(t)) for f, t in zip(features, transient)])

    def at(self, features: Sequence[float]) -> Tuple[int, int]:
        """``(saved, transient)`` bytes at ``features`` (never negative)."""
        x = torch.tensor((1.0, *features), dtype=torch.float64)
        floor = max((t for f, t in self.probes if all(a <= b for a, b in zip(f, features))), default=0)
        return max(0, round(float(x @ self.saved))), max(floor, round(float(x @ self.transient)))


def _measure(run: Callable[[], torch.Tensor], device, precision: Precision, exclude, inputs) -> Tuple[int, int]:
    """``(saved, transient)`` bytes of ``run()`` (returns a scalar) and its backward into ``inputs``."""
    with PeakBytes(device) as peak:
        with SavedBytes(exclude) as saved, precision.autocast():
            loss = run()
        if loss.requires_grad:  # the gradients are returned and dropped: no .grad is touched
            torch.autograd.grad(loss, inputs, allow_unused=True)
        del loss
    return saved.bytes, max(0, peak.bytes - saved.bytes)


def _seeded(*shape, device, seed: int = 0) -> torch.Tensor:
    """N(0, 1) values from a private generator (the global RNG is never drawn from)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(device)


def layout(learner, classes: Optional[torch.Tensor]) -> Layout:
    """``(T, N, P, S)`` of the text tower over ``classes`` (``None``: all classes); see the module
    docstring. The plan decides the padded layout (its ``buckets`` where it has them)."""
    n = learner.n_classes if classes is None else int(classes.numel())
    plan = getattr(learner, "plan", None)  # RPP with branches="vision" has none: its text is frozen
    if plan is None:
        return 0.0, float(n), 0.0, 0.0
    plan = plan if classes is None else plan.select(classes)
    buckets = getattr(plan, "buckets", None)
    calls = [(plan.n_sequences, plan.max_len)] if buckets is None else [(b.n, b.length) for b in buckets]
    return (float(plan.n_tokens), float(n), float(sum(c * length for c, length in calls)),
            float(sum(c * length * length for c, length in calls)))


def _probe_sets(lengths: torch.Tensor) -> List[torch.Tensor]:
    """The six class subsets of the text-tower probes (module docstring)."""
    n, k = lengths.numel(), min(PROBE_CLASSES, lengths.numel())
    order = torch.argsort(lengths, stable=True)

    def spread(m: int) -> torch.Tensor:
        return order[torch.linspace(0, n - 1, min(m, n)).round().long()]

    mid = max(0, (n - k) // 2)
    sets = [spread(k), spread(2 * k), torch.cat([order[:k - 1], order[-1:]]), order[:k], order[-k:],
            order[mid:mid + k]]
    return [torch.unique(s) for s in sets]


def _head_loss(learner, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """What a step does with ``text [n, E]`` class features and ``image [B, E]`` features."""
    text = text / text.norm(dim=-1, keepdim=True)
    logits = learner.logit_scale * image @ text.to(image.dtype).t()
    loss = F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device) % logits.shape[1])
    if getattr(learner, "teacher", None) is not None:
        loss = loss + distillation_kl(logits, logits.detach(), learner.config.temperature)
    return loss


class StepProbes:
    """The fitted memory of ``learner``'s steps at ``batch_size`` images on ``device``.

    Attributes:
        resident: bytes of the parameters, buffers and cached teacher class features.
        prompt_state: bytes of the prompts' gradients and optimizer moments.
        tower, head, image: the three :class:`Fit`.
        image_grad: whether the image features carry autograd (a prompted image tower).
        probe_sizes: classes of each text-tower probe.
    """

    def __init__(self, learner, batch_size: int, device: torch.device, precision: str):
        self.learner, self.batch_size = learner, batch_size
        self.device, self.precision = device, Precision(precision, device)
        self.params = [p for p in learner.parameters() if p.requires_grad]
        self.resident, self.exclude = self._resident()
        self.prompt_state = OPTIMIZER_COPIES * sum(p.numel() * p.element_size() for p in self.params)
        self.image, self.image_grad = self._fit_image()
        self.head = self._fit_head()
        self.tower, self.probe_sizes = self._fit_tower()

    def _resident(self):
        tensors = list(self.learner.parameters()) + list(self.learner.buffers())
        teacher = getattr(self.learner, "teacher", None)
        if teacher is not None and getattr(teacher, "classnames", None) is not None:
            tensors.append(teacher.class_features)
        return unique_storage_bytes(tensors), {storage_key(t) for t in tensors}

    def _measure(self, run, inputs=None) -> Tuple[int, int]:
        return _measure(run, self.device, self.precision, self.exclude, self.params if inputs is None else inputs)

    def _fit_image(self) -> Tuple[Fit, bool]:
        """The image side's fit, and whether its features carry autograd (a prompted tower)."""
        size = tuple(self.learner.vision_tower.image_size)
        features, saved, transient = [], [], []
        for batch in (1, 2):
            images = _seeded(batch, 3, *size, device=self.device)
            s, t = self._measure(lambda: self.learner.image_features(images).float().square().sum())
            features.append((float(batch),))
            saved.append(s)
            transient.append(t)
        # A frozen image tower runs without autograd: it saves nothing, but its forward (and the
        # autocast copies of its weights) still takes memory for a moment.
        return Fit.of(features, saved, transient), saved[0] > 0

    def _fit_head(self) -> Fit:
        width = self.learner.text_tower.embed_dim
        # A prompted image tower gives features with autograd: the logits then save the text side too.
        image = F.normalize(_seeded(self.batch_size, width, device=self.device), dim=-1)
        image.requires_grad_(self.image_grad)
        features, saved, transient = [], [], []
        for n in HEAD_CLASSES:
            text = _seeded(n, width, device=self.device, seed=1).requires_grad_(True)
            inputs = [text, image] if self.image_grad else [text]
            s, t = self._measure(lambda: _head_loss(self.learner, text, image), inputs)
            features.append((float(n),))
            saved.append(s)
            transient.append(t)
        return Fit.of(features, saved, transient)

    def _fit_tower(self) -> Tuple[Fit, List[int]]:
        plan = getattr(self.learner, "plan", None)
        lengths = plan.to("cpu").seqlens if plan is not None else torch.zeros(self.learner.n_classes, dtype=torch.long)
        probes = _probe_sets(lengths)
        with torch.no_grad():  # what the learner computes once per class list (RPP's frozen text), outside the probes
            self.learner.text_features(probes[0])
        weights = _seeded(1, self.learner.text_tower.embed_dim, device=self.device, seed=2)
        features, saved, transient = [], [], []
        for classes in probes:
            # A fixed weighting gives the backward a gradient without saving the features themselves
            # (the head probe counts those).
            s, t = self._measure(lambda: (self.learner.text_features(classes).float() * weights).sum())
            features.append(layout(self.learner, classes))
            saved.append(s)
            transient.append(t)
        return Fit.of(features, saved, transient), [int(c.numel()) for c in probes]

    # ---- evaluation ----------------------------------------------------------------------------
    def full_layout(self, world: int) -> Layout:
        """The tower layout of a full step on the busiest of ``world`` class-sharded ranks."""
        if world == 1:
            return layout(self.learner, None)
        slices = [torch.arange(a, b) for a, b in shard_bounds(self.learner.n_classes, world) if b > a]
        return max((layout(self.learner, s) for s in slices), key=lambda f: self.tower.at(f)[0])

    def local_layout(self, k: int) -> Layout:
        """The tower layout of a local step (``K-1`` shared negatives and the batch's labels, each
        class encoded once): of ``LOCAL_DRAWS`` seeded draws, the one that saves the most."""
        n_all = self.learner.n_classes
        gen = torch.Generator().manual_seed(0)
        layouts = []
        for _ in range(LOCAL_DRAWS):
            negatives = torch.randperm(n_all, generator=gen)[:min(k - 1, n_all)]
            labels = torch.randint(n_all, (self.batch_size,), generator=gen)
            layouts.append(layout(self.learner, torch.unique(torch.cat([negatives, labels]))))
        return max(layouts, key=lambda f: self.tower.at(f)[0])

    def step_bytes(self, tower_layout: Layout, scored_classes: int):
        """``(text_saved, image_saved, transient)`` of a step whose tower runs ``tower_layout`` and
        whose head scores ``scored_classes`` columns.

        The transient adds the image side's peak (the image forward comes first, and under
        autocast its weight copies stay cached for the whole step) to the larger of the text
        tower's and the head's (their backward passes run one after the other)."""
        tower_saved, tower_peak = self.tower.at(tower_layout)
        head_saved, head_peak = self.head.at((float(scored_classes),))
        image_saved, image_peak = self.image.at((float(self.batch_size),))
        return tower_saved + head_saved, image_saved, image_peak + max(tower_peak, head_peak)
