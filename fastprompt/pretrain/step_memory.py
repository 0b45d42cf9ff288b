"""How much memory one POMP/RPP training step needs, measured before the first step, and the
choice between the exact full-vocabulary step and POMP's local contrast that follows from it.

POMP (Ren et al., NeurIPS 2023) scores every image against ``K`` sampled classes (local contrast)
because encoding all ~21K class prompts per step did not fit in the original code's memory. On
fastprompt's prefix-shared, EOT-truncated, packed text path the exact softmax over all classes
often fits; :func:`choose_objective_mode` takes it whenever it does.

**Method: measure, don't guess.** A step's memory is the resident weights, the tensors the forward
saves for the backward, and the transient peak on top of them during the forward and backward.
Small real steps are run on the learner itself (a few dozen classes, 1-2 images), measured, fitted
and evaluated at the step's own layout (:mod:`fastprompt.pretrain.step_probes`): full mode at the
learner's plan (or the busiest rank's class slice under class sharding), local mode at the plans
of seeded draws of ``K-1`` negatives plus the batch's labels. The learner is left exactly as it was.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Dict, Optional, Tuple

import torch

from ..train.precision import PRECISIONS
from .step_probes import HEAD_CLASSES, StepProbes

__all__ = ["StepMemoryEstimate", "estimate_step_memory", "available_memory", "choose_objective_mode",
           "decide_objective_mode", "format_bytes", "OBJECTIVE_MODES", "FORCE_CHOICES"]

logger = logging.getLogger("fastprompt.train")

OBJECTIVE_MODES = ("full", "local")
FORCE_CHOICES = (None, "auto", "full", "local")
DEFAULT_SAMPLED_CLASSES = 1000  # POMP's UPDATE_CLASS_NUM, for learners that do not set K


def format_bytes(n: float) -> str:
    """``n`` bytes for people: ``"812 B"``, ``"3.4 KiB"``, ``"52.1 MiB"``, ``"62.58 GiB"``."""
    if n < 1024:
        return f"{int(n)} B"
    if n < 2 ** 20:
        return f"{n / 2 ** 10:.1f} KiB"
    if n < 2 ** 30:
        return f"{n / 2 ** 20:.1f} MiB"
    return f"{n / 2 ** 30:.2f} GiB"


@dataclasses.dataclass(frozen=True)
class StepMemoryEstimate:
    """The memory of one training step on one rank (bytes), as measured by :func:`estimate_step_memory`.

    Attributes:
        mode: ``"full"`` (every class) or ``"local"`` (``K-1`` sampled negatives + the batch's classes).
        n_classes: class sequences this rank's text tower encodes per step (its slice of all
            classes when a full step is class-sharded over ``world`` ranks).
        scored_classes: logit columns per image (all classes in full mode).
        batch_size: images per step on this rank.
        world: ranks a full step's text side is class-sharded over (1: not sharded).
        text_tokens: packed text suffix tokens per step (dense layers run on these rows).
        padded_tokens: rows of the padded attention layout per step (``n_classes * max_len`` for
            one block; fewer where the plan splits it into length buckets).
        weight_bytes: resident before the step: the model's parameters and buffers (teacher
            included) and cached teacher class features.
        prompt_state_bytes: the trainable prompts' gradients and optimizer moments (three times the
            prompts; tiny next to the rest).
        text_saved_bytes: what the text tower and the logits/loss over its classes save for the backward.
        image_saved_bytes: what the image side saves (0 when the image tower is frozen).
        transient_bytes: peak above the saved tensors during the forward and the backward (the
            largest of the text tower's, the head's and the image side's).
        device, precision: where and how the step runs.
        measured: how the numbers were obtained (probe sizes, fit and its misfit, peak measurement).
    """

    mode: str
    n_classes: int
    scored_classes: int
    batch_size: int
    world: int
    text_tokens: int
    padded_tokens: int
    weight_bytes: int
    prompt_state_bytes: int
    text_saved_bytes: int
    image_saved_bytes: int
    transient_bytes: int
    device: str
    precision: str
    measured: str

    @property
    def total_bytes(self) -> int:
        """Everything the step holds at its peak."""
        return (self.weight_bytes + self.prompt_state_bytes + self.text_saved_bytes + self.image_saved_bytes
                + self.transient_bytes)

    @property
    def additional_bytes(self) -> int:
        """What the step allocates on top of the weights that are already resident."""
        return self.total_bytes - self.weight_bytes

    def as_dict(self) -> Dict[str, Any]:
        """The fields plus ``total_bytes`` and ``additional_bytes`` (JSON-ready, e.g. for a run record)."""
        return {**dataclasses.asdict(self), "total_bytes": self.total_bytes, "additional_bytes": self.additional_bytes}

    def summary(self) -> str:
        """One line, e.g. for a run log."""
        f = format_bytes
        shard = f" (class-sharded over {self.world} ranks)" if self.world > 1 and self.mode == "full" else ""
        return (f"{self.mode} step encoding {self.n_classes:,} classes{shard}, batch {self.batch_size}, "
                f"{self.precision}: total {f(self.total_bytes)} (weights {f(self.weight_bytes)}, text saved "
                f"{f(self.text_saved_bytes)}, image saved {f(self.image_saved_bytes)}, transient "
                f"{f(self.transient_bytes)}, prompt state {f(self.prompt_state_bytes)}); {self.text_tokens:,} packed "
                f"text tokens, {self.padded_tokens:,} padded attention rows")


def _check_mode(mode: str) -> None:
    if mode not in OBJECTIVE_MODES:
        raise ValueError(f"mode must be one of {OBJECTIVE_MODES}, got {mode!r}")


def _sampled_classes(learner, num_sampled_classes: Optional[int]) -> int:
    """``K`` of a local step: the argument, else the learner's objective's or config's, else 1000."""
    if num_sampled_classes is not None:
        if isinstance(num_sampled_classes, bool) or not isinstance(num_sampled_classes, int) or num_sampled_classes < 2:
            raise ValueError(f"num_sampled_classes must be an int >= 2 (the positive plus at least one negative), "
                             f"got {num_sampled_classes!r}")
        return num_sampled_classes
    objective = getattr(learner, "objective", None)
    if objective is not None:
        return objective.num_sampled_classes
    config = learner.config
    return getattr(config, "num_sampled_classes", getattr(config, "pomp_num_sampled_classes", DEFAULT_SAMPLED_CLASSES))


def _check_device(learner, device) -> torch.device:
    device, here = torch.device(device), learner.text_tower.device
    if device.type != here.type or (device.index is not None and device.index != here.index):
        raise ValueError(f"the learner is on {here} but the estimate is for {device}: the probes run the real step "
                         f"where it will run, so move the learner first (learner.to({str(device)!r}))")
    return here


class _StepModel:
    """Checked arguments, the probes (:class:`~fastprompt.pretrain.step_probes.StepProbes`) and their
    evaluation per mode."""

    def __init__(self, learner, batch_size: int, device, precision: str, world: int):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch size must be an int >= 1, got {batch_size!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if isinstance(world, bool) or not isinstance(world, int) or world < 1:
            raise ValueError(f"world must be the number of ranks (an int >= 1), got {world!r}")
        self.learner, self.batch_size, self.precision, self.world = learner, batch_size, precision, world
        self.device = _check_device(learner, device)
        self.probes = StepProbes(learner, batch_size, self.device, precision)
        peak = "torch.cuda.max_memory_allocated" if self.device.type == "cuda" else "a dispatch-mode storage tracker"
        self.how = (f"measured on {self.device} ({precision}): text-tower probes of "
                    f"{'/'.join(map(str, self.probes.probe_sizes))} classes fitted over (packed tokens, sequences, "
                    f"padded rows, sum n*length^2) with a largest misfit of {self.probes.tower.misfit:.2%}, head "
                    f"probes of {'/'.join(map(str, HEAD_CLASSES))} classes, image probes of 1 and 2 images; saved "
                    f"bytes by saved_tensors_hooks (distinct storages), peaks by {peak}")

    def estimate(self, mode: str, num_sampled_classes: Optional[int] = None) -> StepMemoryEstimate:
        _check_mode(mode)
        probes = self.probes
        if mode == "full":
            tower = probes.full_layout(self.world)
            scored = self.learner.n_classes
        else:
            tower = probes.local_layout(_sampled_classes(self.learner, num_sampled_classes))
            scored = int(tower[1])
        text_saved, image_saved, transient = probes.step_bytes(tower, scored)
        tokens, n, padded, _ = tower
        return StepMemoryEstimate(
            mode=mode, n_classes=int(n), scored_classes=scored, batch_size=self.batch_size, world=self.world,
            text_tokens=int(tokens), padded_tokens=int(padded), weight_bytes=probes.resident,
            prompt_state_bytes=probes.prompt_state, text_saved_bytes=text_saved, image_saved_bytes=image_saved,
            transient_bytes=transient, device=str(self.device), precision=self.precision, measured=self.how)


def estimate_step_memory(learner, labels_batch_size: int, *, mode: str, num_sampled_classes: Optional[int] = None,
                         device, precision: str = "fp32", world: int = 1) -> StepMemoryEstimate:
    """Measure the memory of one training step of ``learner`` before running it (module docstring).

    Args:
        learner: a prompt learner whose ``text_features(class_indices)`` encodes a class subset
            (POMP, RPP, CoOp), already on ``device``.
        labels_batch_size: images (and labels) per step on one rank.
        mode: ``"full"`` (all classes) or ``"local"`` (POMP's ``K`` sampled classes).
        num_sampled_classes: ``K`` for local mode (default: the learner's own, else 1000).
        device: where the step runs; the probes run there.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast), as the trainer's.
        world: ranks a full step's text side is class-sharded over (``learner.shard_classes``
            under torchrun); each encodes a contiguous slice. Local steps are never sharded.

    Returns:
        a :class:`StepMemoryEstimate` for one rank. The learner is unchanged (parameters, ``.grad``,
        RNG state).
    """
    _check_mode(mode)
    if mode == "local":
        _sampled_classes(learner, num_sampled_classes)  # a bad K fails before the probes run
    return _StepModel(learner, labels_batch_size, device, precision, world).estimate(mode, num_sampled_classes)


# ---- the budget and the choice ------------------------------------------------------------------

def available_memory(device) -> int:
    """Bytes this process can still allocate on ``device`` now.

    CUDA: the driver's free memory (``torch.cuda.mem_get_info``) plus what PyTorch's caching
    allocator holds without using it (reserved but unallocated blocks are ours to reuse). CPU: the
    kernel's ``MemAvailable`` (free memory plus page cache it can drop, without swapping), or
    free physical pages (``os.sysconf``) where ``/proc/meminfo`` does not exist. Memory the model
    already occupies is *not* included, so compare it with a step's ``additional_bytes``.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(0, cached))
    if device.type != "cpu":
        raise ValueError(f"available_memory knows cuda and cpu devices, got {device}")
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the kernel reports kB
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def choose_objective_mode(learner, batch_size: int, device, precision: str = "fp32",
                          force: Optional[str] = None, headroom: float = 0.9,
                          num_sampled_classes: Optional[int] = None, world: int = 1
                          ) -> Tuple[str, str, StepMemoryEstimate]:
    """Full-vocabulary softmax when the step fits, else POMP's local contrast.

    Args:
        learner, batch_size, device, precision, num_sampled_classes, world: as in
            :func:`estimate_step_memory` (``batch_size`` per rank; ``world``: the ranks a full
            step would be class-sharded over).
        force: ``None``/``"auto"`` (decide by memory), ``"full"`` or ``"local"`` (obeyed; forcing a
            full step that is estimated not to fit is obeyed with a warning in the reason).
        headroom: fraction of :func:`available_memory` the step may take (allocator fragmentation,
            other processes' growth).

    Returns:
        ``(mode, reason, estimate)``: the mode, one sentence saying why (with the estimate and the
        available bytes), and the chosen mode's :class:`StepMemoryEstimate`. The reason is also
        logged on the ``fastprompt.train`` logger (a warning when the full step does not fit).
    """
    if force not in FORCE_CHOICES:
        raise ValueError(f"force must be one of {FORCE_CHOICES} (None and 'auto' decide by memory), got {force!r}")
    if not 0 < headroom <= 1:
        raise ValueError(f"headroom must be in (0, 1], the fraction of available memory a step may use; "
                         f"got {headroom!r}")
    _sampled_classes(learner, num_sampled_classes)  # a bad K fails before the probes run
    model = _StepModel(learner, batch_size, device, precision, world)
    full, local = model.estimate("full"), model.estimate("local", num_sampled_classes)
    mode, reason, warn = decide_objective_mode(full, local, available_memory(model.device), force, headroom)
    (logger.warning if warn else logger.info)("fastprompt: objective %s: %s", mode, reason)
    return mode, reason, full if mode == "full" else local


def decide_objective_mode(full: StepMemoryEstimate, local: StepMemoryEstimate, available: int,
                          force: Optional[str] = None, headroom: float = 0.9) -> Tuple[str, str, bool]:
    """The decision of :func:`choose_objective_mode` from its two estimates and the available
    bytes: ``(mode, reason, warn)``, ``warn`` when the chosen step is estimated not to fit."""
    budget = headroom * available
    fits = full.additional_bytes <= budget
    shard = f", class-sharded over {full.world} ranks," if full.world > 1 else ""
    need = (f"the full-vocabulary step over {full.scored_classes:,} classes{shard} needs "
            f"{format_bytes(full.additional_bytes)} "
            f"beyond the loaded weights ({format_bytes(full.total_bytes)} in all) and {headroom:.0%} of the "
            f"{format_bytes(available)} available on {full.device} is {format_bytes(budget)}")
    oom = ": expect an out-of-memory error; use a smaller batch or lower precision"
    if force == "local":
        return "local", f"local contrast forced; {need}", False
    if force == "full":
        if fits:
            return "full", f"full-vocabulary step forced; {need}", False
        return "full", f"full-vocabulary step forced although it is estimated not to fit; {need}{oom}", True
    if fits:
        return "full", f"exact full-vocabulary softmax: {need}", False
    if local.additional_bytes >= full.additional_bytes:
        # K-1 negatives plus the batch cover every class: local contrast would encode as much.
        return "full", (f"full-vocabulary step although it is estimated not to fit, since local contrast would "
                        f"encode all {full.scored_classes:,} classes as well; {need}{oom}"), True
    local_fits = local.additional_bytes <= budget
    return "local", (f"local contrast over {local.n_classes:,} classes ({format_bytes(local.additional_bytes)} beyond "
                     f"the weights{'' if local_fits else ', also estimated not to fit' + oom}) because {need}"), True
