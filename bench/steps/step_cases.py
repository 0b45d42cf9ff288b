"""The training-step cases of ``bench/steps/bench_step.py``: one builder, one table of cases.

A case times one unit of work of a fastprompt learner and of its literal reference
(``fastprompt.reference``) on the same random-weight CLIP, the learner loaded with the
reference's prompt values: by default one SGD step (zero_grad, loss, backward, step) over the
prompt parameters on ``images`` random images of the first ``classes`` ImageNet classes.
``CASES`` lists every case; ``build_step`` is the one builder they all go through, and a case
states only how its method differs (constructor arguments, which reference module holds the
prompts, another loss). ``bench/steps/eval_cases.py`` builds the evaluation unit of the same cases
from the same pair (:func:`build_pair`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional

import torch


@dataclass
class StepCase:
    fastprompt: Callable[[], None]   # one timed unit on the fast path
    reference: Callable[[], None]    # the same unit on the reference path
    info: Dict[str, object] = field(default_factory=dict)  # shapes etc., written to the CSV


def _prompt_learner(reference):
    return reference.prompt_learner


@dataclass(frozen=True)
class CaseSpec:
    name: str
    description: str
    target: float                    # required speed-up (reference time / fastprompt time)
    learner: str                     # class in ``fastprompt``
    reference: str                   # class in ``fastprompt.reference``
    n_ctx: int                       # context tokens (for the CSV)
    images: int = 4
    classes: int = 100
    memory_target: Optional[float] = None  # required memory ratio, or None
    label_classes: Optional[int] = None    # labels drawn from range(label_classes), default range(classes)
    kwargs: Dict[str, object] = field(default_factory=dict)  # to both constructors
    learner_kwargs: Dict[str, object] = field(default_factory=dict)  # to fastprompt's learner only (options)
    # The reference takes constants the learner computes once at construction (then the learner is
    # built first): learner -> extra reference keyword arguments.
    from_learner: Optional[Callable] = None
    # The reference module whose state_dict the learner loads, and whose trainable parameters the
    # reference's optimizer steps.
    state: Callable = _prompt_learner
    params: Callable = lambda reference: _prompt_learner(reference).parameters()
    # names -> (the learner's classes argument, the reference's positional arguments after the model)
    classnames: Callable = lambda names: (names, (names,))
    # (learner, reference, images, labels) -> (fastprompt loss closure, reference loss closure)
    losses: Optional[Callable] = None
    # The classifier depends on the image (CoCoOp): evaluation cannot compute class features once.
    image_conditioned: bool = False
    # Class count and batch are fixed by the case's layout (SoftCPT: 4 tasks x 25 classes, one image
    # per task): the case does not scale.
    fixed_layout: bool = False
    # PromptKD: the method needs a teacher CLIP; the benchmark's own random model serves as it (both sides)
    with_teacher: bool = False

    def build(self, model_name: str, device: torch.device) -> StepCase:
        return build_step(self, model_name, device)

    def sized(self, classes: Optional[int] = None, images: Optional[int] = None, **kwargs) -> "CaseSpec":
        """This case at another class count / batch size (``kwargs``: extra constructor arguments)."""
        if self.fixed_layout and (classes not in (None, self.classes) or images not in (None, self.images)):
            raise ValueError(f"case {self.name!r} has a fixed layout ({self.images} images x {self.classes} classes); "
                             "scale a case with one class list (coop, cocoop, maple, rpp, ...) instead")
        return replace(self, classes=self.classes if classes is None else classes,
                       images=self.images if images is None else images, kwargs={**self.kwargs, **kwargs})


@dataclass
class Pair:
    """A learner and its reference on one model, the learner holding the reference's prompts."""
    learner: torch.nn.Module
    reference: torch.nn.Module
    model: torch.nn.Module
    images: torch.Tensor   # [images, 3, H, W] random
    labels: torch.Tensor   # [images] in range(label_classes or classes)
    info: Dict[str, object]


def bench_model(model_name: str) -> torch.nn.Module:
    """A random-weight open_clip ``model_name``, or ``"tiny"``: a 64-wide CLIP with 12 layers in each
    tower (every case's prompt depth applies; a step takes milliseconds, for smoke runs)."""
    from fastprompt.testing import random_clip, tiny_clip

    if model_name == "tiny":
        return tiny_clip(0, layers=12, vision_layers=12)
    return random_clip(model_name)


def build_pair(spec: CaseSpec, model_name: str, device: torch.device) -> Pair:
    """The learner and its reference on one random-weight ``model_name`` (:func:`bench_model`), the
    learner loaded with the reference's prompts (the reference seeded with 0), and one random batch."""
    import fastprompt
    import fastprompt.reference

    learner_cls, reference_cls = getattr(fastprompt, spec.learner), getattr(fastprompt.reference, spec.reference)
    model = bench_model(model_name).to(device)
    learner_classes, reference_args = spec.classnames(imagenet_classnames(spec.classes))
    teacher = dict(teacher=model) if spec.with_teacher else {}
    reference_args = (model, *reference_args) if spec.with_teacher else reference_args
    make_learner = lambda: learner_cls.from_model(model, learner_classes, **spec.kwargs,  # noqa: E731
                                                  **spec.learner_kwargs, **teacher).to(device)
    learner = make_learner() if spec.from_learner else None
    extra = spec.from_learner(learner) if spec.from_learner else {}
    torch.manual_seed(0)
    reference = reference_cls(model, *reference_args, **spec.kwargs, **extra).to(device)
    if learner is None:
        learner = make_learner()
    learner.load_original_state_dict(spec.state(reference).state_dict())
    if spec.with_teacher:  # the teacher's prompts too (its whole CustomCLIP_teacher state, as the original saves it)
        learner.load_teacher(reference.model_teacher.state_dict())
    images, labels = random_batch(model, spec.images, spec.label_classes or spec.classes, device=device)
    info = dict(method=spec.reference.replace("Reference", "").lower(), images=spec.images, classes=spec.classes,
                n_ctx=spec.n_ctx)
    return Pair(learner, reference, model, images, labels, info)


def build_step(spec: CaseSpec, model_name: str, device: torch.device) -> StepCase:
    """One SGD closure for each side of :func:`build_pair`."""
    pair = build_pair(spec, model_name, device)
    fast, ref = pair_steps(spec, pair)
    return StepCase(fast, ref, pair.info)


def pair_steps(spec: CaseSpec, pair: Pair):
    """``(fast, ref)``: one SGD closure per side of ``pair`` on the case's losses (``spec.losses``,
    else each side's ``loss(images, labels)``)."""
    learner, reference = pair.learner, pair.reference
    losses = spec.losses or (lambda learner, reference, images, labels: (
        lambda: learner.loss(images, labels), lambda: reference.loss(images, labels)))
    fast_loss, ref_loss = losses(learner, reference, pair.images, pair.labels)
    return sgd_steps(fast_loss, learner.trainable_parameters(), ref_loss,
                     [p for p in spec.params(reference) if p.requires_grad])


def sgd_steps(fast_loss: Callable[[], torch.Tensor], fast_params: List[torch.Tensor],
              ref_loss: Callable[[], torch.Tensor], ref_params: List[torch.Tensor], lr: float = 1e-3):
    """Closures for one SGD step (zero_grad, loss, backward, step) of each side."""
    def make(loss_fn, params):
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            loss_fn().backward()
            opt.step()
        return step
    return make(fast_loss, fast_params), make(ref_loss, ref_params)


def random_batch(model, n_images: int, n_classes: int, seed: int = 0, device="cpu"):
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n_images, 3, size, size, generator=gen).to(device)
    labels = torch.randint(0, n_classes, (n_images,), generator=gen).to(device)
    return images, labels


def imagenet_classnames(n: int) -> List[str]:
    """The first ``n`` ImageNet-1K class names; past 1,000, the first WordNet lemma of each
    ImageNet-21K synset in turn (timm's packaged tables, the ``full`` universe in wnid order), up to
    1,000 + 21,841 names. Names may repeat (ImageNet-1K itself has two "crane"s): the benchmarks
    measure cost, which does not depend on names being distinct."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    names = list(IMAGENET_CLASSNAMES[:n])
    if n > len(names):
        from fastprompt.data.imagenet21k_classes import build_class_table

        more = [lemmas.split(", ")[0] for lemmas in build_class_table(universe="full").names]
        if n > len(names) + len(more):
            raise ValueError(f"{n} classes asked for; the ImageNet-1K and -21K names give at most "
                             f"{len(names) + len(more)}")
        names += more[:n - len(names)]
    return names


# ---- what differs per method ------------------------------------------------------------------

def _text_tower_losses(learner, reference, images, labels):
    """The CoOp text tower alone: fwd+bwd of the class features (no images)."""
    return (lambda: learner.text_features().square().sum(),
            lambda: reference.text_encoder(reference.prompt_learner(), reference.tokenized_prompts).square().sum())


# The first 100 ImageNet classes cut into 4 tasks of 25, named after what they mostly hold.
SOFTCPT_TASKS = ["fish and birds", "amphibians and reptiles", "snakes and arachnids", "birds"]


def _softcpt_classnames(names):
    tasks = {t: names[25 * i:25 * (i + 1)] for i, t in enumerate(SOFTCPT_TASKS)}
    return tasks, (list(tasks), list(tasks.values()))


def _softcpt_losses(learner, reference, images, labels):
    """One image per task (every task is encoded); the reference takes the multi-task label matrix."""
    labels = labels + 25 * torch.arange(4, device=labels.device)  # drawn within a task (label_classes=25)
    matrix = learner.label_matrix(labels).to(labels.device)
    return lambda: learner.loss(images, labels), lambda: reference.loss(images, matrix)


_whole = lambda reference: reference  # noqa: E731  (the prompts live in the reference itself)


class _Backward:
    """What a reference step's ``loss_fn().backward()`` runs when the method has no single loss."""

    def __init__(self, fn: Callable[[], object]):
        self.backward = fn


class _StudentState:
    """PromptKD's student ``CustomCLIP`` state (its prompts and projection, as the original saves it)."""

    def __init__(self, reference):
        self.reference = reference

    def state_dict(self):
        return {k: v for k, v in self.reference.state_dict().items() if not k.startswith("model_teacher.")}


def _promptkd_params(reference):
    return list(reference.image_encoder.parameters()) + list(reference.VPT_image_trans.parameters())


def _prograd_losses(learner, reference, images, labels):
    """ProGrad: the learner's ``loss`` carries the projected gradient; the reference runs the
    original's ``forward_backward`` (its two backward passes and the projection, into ``.grad``)."""
    return (lambda: learner.loss(images, labels),
            lambda: _Backward(lambda: reference.backward(images, labels)))

# Targets (fixed; never lowered after a measurement): whole training step vs the reference on a random-weight
# ViT-B-16, augmentation on, no feature cache -- CoOp 10x, text tower alone 15x (its token-count floor is
# about 17x), CoCoOp 15x with 1/10 of the reference's peak memory, MaPLe 4x, PromptSRC 3.5x, RPP both towers 4x.
CASES: Dict[str, CaseSpec] = {spec.name: spec for spec in [
    CaseSpec("coop", "CoOp step, 4 images x 100 classes, 16 ctx", 10.0, "CoOpLearner", "ReferenceCoOp", 16,
             kwargs=dict(n_ctx=16)),
    # The same step with the frozen image tower under bf16 autocast (an option, off by default: 0.9-1% feature
    # error against fp32), on hardware that multiplies in bf16; the target is the CoOp step's.
    CaseSpec("coop_bf16img", "CoOp step as 'coop', frozen image tower in bf16 (frozen_image_precision='bf16')", 10.0,
             "CoOpLearner", "ReferenceCoOp", 16, kwargs=dict(n_ctx=16),
             learner_kwargs=dict(frozen_image_precision="bf16")),
    CaseSpec("text", "CoOp text tower alone, fwd+bwd over 100 class prompts, 16 ctx", 15.0, "CoOpLearner",
             "ReferenceCoOp", 16, images=0, kwargs=dict(n_ctx=16), losses=_text_tower_losses),
    CaseSpec("cocoop", "CoCoOp step, 2 images x 100 classes, 4 ctx ('a photo of a')", 15.0, "CoCoOpLearner",
             "ReferenceCoCoOp", 4, images=2, memory_target=10.0, image_conditioned=True),
    CaseSpec("maple", "MaPLe step, 4 images x 100 classes, 2 ctx ('a photo of a'), depth 9, both towers backward",
             4.0, "MaPLeLearner", "ReferenceMaPLe", 2, state=_whole),
    # The issue sets no PRE target; 5x is a regression floor (PRE's step is a CoOp step with a 4-token
    # context plus an M-row encoder, measured 6-7x on a quiet 2-core CPU, like the CoOp case).
    CaseSpec("pre", "PRE step, 4 images x 100 classes, 'a photo of a' ctx, LSTM1 residual encoder", 5.0,
             "PRELearner", "ReferencePRE", 4),
    # The frozen text targets (60 templates x 100 classes) are computed once at construction and are
    # not part of a step; the reference takes the learner's instead of 60 full-length passes (tests
    # check both computations agree).
    CaseSpec("promptsrc", "PromptSRC step (full loss), 4 images x 100 classes, 4+4 ctx, depth 9+9, "
             "both towers backward", 3.5, "PromptSRCLearner", "ReferencePromptSRC", 4,
             from_learner=lambda learner: dict(fixed_embeddings=learner.zs_text_features), state=_whole,
             params=lambda reference: reference.parameters()),
    # The teacher's class features are a frozen constant computed once per class list on both sides;
    # the literal template encoding (7 x 100 full-length prompts) would only slow the set-up down.
    # Learner defaults: both towers, J = 9, M = 4.
    CaseSpec("rpp", "RPP step, both towers (J=9, 4+4 unshared q/k/v prompts) + KL to a zero-shot teacher, "
             "4 images x 100 classes", 4.0, "RPPLearner", "ReferenceRPP", 4,
             from_learner=lambda learner: dict(teacher_text_features=learner.teacher.class_features)),
    # TCP: the [SOT][ctx] prefix is shared up to block 8; from there every class has its own rows 1..4
    # (one prefix group per class); EOT truncation and packing give about 12 rows per class instead of 77.
    # No target was set before a measurement (6.8x, FLOP ratio 6.0x, 2-core CPU); 5x is a regression floor.
    CaseSpec("tcp", "TCP step, 4 images x 100 classes, 4 ctx, class-aware tokens (meta-net) at text block 8", 5.0,
             "TCPLearner", "ReferenceTCP", 4),
    # Both sides run the text tower backward twice (the KL's gradient, then the CE's) and project; the
    # reference also runs the image tower twice (the prompted CLIP and the zero-shot CLIP), as the
    # original does. The target is a regression floor under the first measurement (ViT-B-16, a loaded 2-core
    # CPU, 2026-12-08: 10.4x, 11.4x less peak memory, 8.5x fewer FLOPs; bench/results/suite.csv).
    CaseSpec("prograd", "ProGrad step, 4 images x 100 classes, 16 ctx (12 zero rows + 'a photo of a'), two text "
             "backward passes + gradient projection", 8.0, "ProGradLearner", "ReferenceProGrad", 16,
             kwargs=dict(n_ctx=16), losses=_prograd_losses),
    # DePT: CoOp's / KgCoOp's step plus a FiLM + linear head over [C, E] and [B, E] features (negligible on both
    # sides); the head reads unnormalised image features, so the frozen-feature cache does not serve it. The
    # targets are those of the matching text-prompt steps measured here (CoOp 16 ctx about 7x, 4 ctx about 6x).
    # Its logits are not one cosine classifier (the fused head is affine in the unnormalised image features), so
    # evaluation calls the learner per batch (image_conditioned), as the reference does. FLOP ratios (reference /
    # fastprompt, ViT-B-16, flop_count.count_flops): coop_dept 6.5x, kgcoop_dept 6.6x, cocoop_dept 12.4x, maple_dept
    # 4.5x (its image tower, prompted and backpropagated, is the same work on both sides and bounds it).
    CaseSpec("coop_dept", "CoOp+DePT step, 4 images x 100 classes, 16 ctx, FiLM + linear head", 6.0,
             "CoOpDePTLearner", "ReferenceDePTCoOp", 16, kwargs=dict(n_ctx=16), state=_whole,
             params=lambda reference: reference.parameters(), image_conditioned=True),
    CaseSpec("kgcoop_dept", "KgCoOp+DePT step, 4 images x 100 classes, 'a photo of a' ctx, FiLM + linear head, "
             "w=2", 5.0, "KgCoOpDePTLearner", "ReferenceDePTKgCoOp", 4, state=_whole,
             params=lambda reference: reference.parameters(), image_conditioned=True),
    CaseSpec("cocoop_dept", "CoCoOp+DePT step, 2 images x 100 classes, 4 ctx ('a photo of a'), FiLM + linear head",
             10.0, "CoCoOpDePTLearner", "ReferenceDePTCoCoOp", 4, images=2, state=_whole,
             params=lambda reference: reference.parameters(), image_conditioned=True),
    CaseSpec("maple_dept", "MaPLe+DePT step, 4 images x 100 classes, 2 ctx ('a photo of a'), depth 9, both towers "
             "backward, FiLM + linear head", 4.0, "MaPLeDePTLearner", "ReferenceDePTMaPLe", 2, state=_whole,
             params=lambda reference: reference.parameters(), image_conditioned=True),
    # PromptKD: the benchmark's random CLIP is also the teacher (a ViT-B/16 teacher here; the original's is a
    # ViT-L/14). The reference runs the teacher's 100 full-length prompted text passes at every step, as the
    # original does; fastprompt encodes them once per class list. Both run the teacher's prompted image forward
    # (no grad) and the student's prompted image tower forward and backward, which bounds the step. Measured
    # (ViT-B-16, a loaded 2-core CPU, 2026-12-08): 3.0x, FLOP ratio 2.44x (983 vs 402 GFLOP); 2x is a floor.
    CaseSpec("promptkd", "PromptKD step, 4 unlabeled images x 100 classes, student depth 9 x 4 vision ctx + "
             "projection, PromptSRC teacher (9+9, 4+4 ctx) from the same CLIP", 2.0, "PromptKDLearner",
             "ReferencePromptKD", 4, state=_StudentState, params=_promptkd_params, with_teacher=True),
    CaseSpec("softcpt", "SoftCPT-NATA step, 4 tasks x 25 classes, 4 images (one per task), 16 generated ctx", 5.0,
             "SoftCPTLearner", "ReferenceSoftCPT", 16, label_classes=25, state=_whole,
             params=lambda reference: reference.prompt_parameters(), classnames=_softcpt_classnames,
             losses=_softcpt_losses, fixed_layout=True),
]}


def load_all() -> Dict[str, CaseSpec]:
    return CASES
