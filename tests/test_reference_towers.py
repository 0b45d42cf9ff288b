"""Every learner against its literal reference on non-OpenAI towers (issue 24's proof): logits, loss and
every prompt gradient, on scaled-down random-weight builds of real open_clip architectures
(:func:`fastprompt.testing.scaled_models.scaled_clip`: the same tower classes, masks, pooling and
tokenizer layouts), one of each kind:

* timm image towers with CLIP's causal text (``EVA02-B-16``: timm ``eva``; ``convnext_base``: timm
  ``convnext``): the text-prompt learners (KgCoOp, PRE, SoftCPT, POMP, RPP with ``branches="text"``),
  whose image tower is frozen and read through the model's own ``encode_image``;
* a bidirectional text tower (``ViT-B-16-SigLIP``: no causal mask, ``last`` pooling, SigLIP's
  tokenizer layout without a start token, context length 64): the same learners and RPP's text branch
  (deep q/k/v prompts in every class's own full-length sequence; without the teacher's KL, whose
  features the learner keeps in float32). In float64: SigLIP's logit scale 10 and bias -10 leave a
  nearly flat loss whose float32 gradients cancel to a few 1e-5 relative, so float32 would measure
  rounding, not the layout; ``MobileCLIP-S1`` (bidirectional, ``argmax`` pooling): RPP's text branch;
* open_clip's ViT with average pooling and ``final_ln_after_pool`` under a bidirectional
  ``last``-pooled text tower (``ViT-L-14-CLIPA``, BERT's tokenizer layout): VPT (deep vision prompts;
  its text side is the model's own ``encode_text``), and MaPLe, PromptSRC and RPP, whose deep text
  prompts go into every class's full-length sequence (more bidirectional cases, text features
  included: tests/test_deep_text_bidirectional.py);
* CoCa's appended CLS under its legacy mask (``coca_ViT-B-32``): RPP's text branch, the q/k/v prompts
  in the shared prefix that the CLS reads as a query-only row;
* a causal text tower that is not OpenAI's (``ViT-L-14-worldwide``: ``eos`` pooling of id 1, mT5's
  tokenizer layout without a start token) with open_clip's ViT: MaPLe, PromptSRC, VPT and RPP with
  both branches (deep text prompts at the context's own rows, 0 ..).

The CoOp and CoCoOp pairs are in tests/test_image_towers.py and tests/test_text_towers.py.
"""
import copy
import functools
from dataclasses import dataclass
from typing import Callable, List

import pytest
import torch

import fastprompt
from fastprompt.reference import (ReferenceKgCoOp, ReferenceMaPLe, ReferencePOMP, ReferencePRE, ReferencePromptSRC,
                                  ReferenceRPP, ReferenceSoftCPT, ReferenceVPT)
from fastprompt.testing import FP32, FP64, assert_close_rel, assert_gradient_flows, perturb_trainable, random_images
from fastprompt.testing.scaled_models import scaled_clip
from fastprompt.towers.image_input import input_size_of

from test_kgcoop import _perturb
from test_promptsrc import original_name as promptsrc_name
from test_vpt import original_name as vpt_name

NAMES = ["cat", "sea lion", "jack-o'-lantern", "golden retriever"]
TASKS = {"pets": NAMES[:2], "things": NAMES[2:]}
LABELS = [0, 3, 2]
POMP_SEED = 7  # the learner's negative draws; the reference draws them from a generator seeded alike


@functools.lru_cache(maxsize=None)
def _model(name: str):
    return scaled_clip(name)


def _images(model, n: int = len(LABELS)) -> torch.Tensor:
    """``[n, 3, S, S]`` at the model's own input size (64 for the scaled timm towers, two patches a side
    for the scaled open_clip ViTs)."""
    height, width = input_size_of(model.visual)
    assert height == width, (height, width)
    return random_images(n, height, seed=1)


@dataclass
class Pair:
    """A learner, its reference with the same prompt values, and how each side computes one step."""

    learner: torch.nn.Module
    reference: torch.nn.Module
    logits: Callable  # images -> (learner logits, reference logits)
    losses: Callable  # images, labels -> (learner loss, reference loss)
    params: Callable  # () -> (names, learner tensors, reference tensors), in the same order
    # frozen learner buffers that were computed in float32 at build time, refreshed from the reference
    # after ``double()`` (each first checked against it at FP32.parity): () -> [(buffer, reference)]
    float32_buffers: Callable = lambda: []


def _plain(learner, reference, ref_params, ref_loss=None, ref_logits=None) -> Pair:
    """A pair whose sides share ``forward(images)`` logits and ``loss(images, labels)``."""
    def params():
        named = learner.trainable_named_parameters()
        return [n for n, _ in named], [p for _, p in named], ref_params(named)

    return Pair(learner, reference,
                logits=lambda images: (learner(images), (ref_logits or reference)(images)),
                losses=lambda images, labels: (learner.loss(images, labels),
                                               (ref_loss or reference.loss)(images, labels)),
                params=params)


def _by_name(module, rename=lambda name: name):
    """Reference tensors under the learner's names (``rename``: learner name -> reference name)."""
    def params(named):
        state = dict(module.named_parameters())
        return [state[rename(name)] for name, _ in named]
    return params


def kgcoop(model, tokenizer):
    torch.manual_seed(0)
    reference = ReferenceKgCoOp(model, NAMES, tokenizer=tokenizer)
    _perturb(reference.prompt_learner.ctx)  # off "a photo of a", where the consistency score is 0
    learner = fastprompt.KgCoOpLearner.from_model(model, NAMES, tokenizer=tokenizer)
    learner.load_original_state_dict(reference.prompt_learner.state_dict())
    assert_close_rel(learner.clip_text_features, reference.prompt_learner.text_features, FP32.parity,
                     "hand-crafted features")
    pair = _plain(learner, reference, _by_name(reference.prompt_learner))
    pair.float32_buffers = lambda: [(learner.clip_text_features, reference.prompt_learner.text_features)]
    return pair


def pre(model, tokenizer):
    torch.manual_seed(0)
    reference = ReferencePRE(model, NAMES, tokenizer=tokenizer).eval()
    learner = fastprompt.PRELearner.from_model(model, NAMES, tokenizer=tokenizer).eval()
    learner.load_original_state_dict(reference.prompt_learner.state_dict())
    return _plain(learner, reference, _by_name(reference.prompt_learner))


def softcpt(model, tokenizer):
    torch.manual_seed(0)
    reference = ReferenceSoftCPT(model, list(TASKS), list(TASKS.values()), csc=True, tokenizer=tokenizer)
    learner = fastprompt.SoftCPTLearner.from_model(model, TASKS, class_features=True, tokenizer=tokenizer)
    learner.load_original_state_dict(reference.state_dict())

    def params():
        named = learner.trainable_named_parameters()
        return [n for n, _ in named], [p for _, p in named], reference.prompt_parameters()

    return Pair(learner, reference, logits=lambda images: (learner(images), reference(images)[0]),
                losses=lambda images, labels: (learner.loss(images, labels),
                                               reference.loss(images, learner.label_matrix(labels))),
                params=params)


def pomp(model, tokenizer):
    torch.manual_seed(0)
    reference = ReferencePOMP(model, NAMES, num_sampled_classes=3, tokenizer=tokenizer)
    learner = fastprompt.POMPLearner.from_model(model, NAMES, num_sampled_classes=3, seed=POMP_SEED,
                                                tokenizer=tokenizer)
    learner.load_original_state_dict(reference.prompt_learner.state_dict())

    def ref_loss(images, labels):
        return reference.loss(images, labels, generator=torch.Generator().manual_seed(POMP_SEED))

    # forward: the test-time logits over all classes; loss: the sampled softmax on the seeded draw
    return _plain(learner, reference, _by_name(reference.prompt_learner), ref_loss=ref_loss)


def _rpp(model, tokenizer, **cfg):
    torch.manual_seed(0)
    reference = ReferenceRPP(model, NAMES, tokenizer=tokenizer, **cfg)
    learner = fastprompt.RPPLearner.from_model(model, NAMES, tokenizer=tokenizer, **cfg)
    learner.load_original_state_dict(reference.prompt_learner.state_dict())

    def ref_loss(images, labels):
        return reference.loss(images, labels, generator=torch.Generator().manual_seed(0))

    return _plain(learner, reference, _by_name(reference.prompt_learner), ref_loss=ref_loss)


def rpp_text(model, tokenizer):
    return _rpp(model, tokenizer, branches="text", depth=2)


def rpp_text_ce(model, tokenizer):
    """RPP's text branch without the teacher's KL term, whose frozen teacher features the learner keeps
    in float32 by design: the one RPP objective a float64 comparison can hold to ``FP64.exact``."""
    return _rpp(model, tokenizer, branches="text", depth=2, kl_weight=0.0)


def rpp_both(model, tokenizer):
    return _rpp(model, tokenizer, branches="both", depth=2)


def vpt(model, tokenizer):
    torch.manual_seed(0)
    reference = ReferenceVPT(model, NAMES, n_ctx=2, prompt_depth=2, tokenizer=tokenizer)
    learner = fastprompt.VPTLearner.from_model(model, NAMES, n_ctx=2, prompt_depth=2, tokenizer=tokenizer)
    learner.load_original_state_dict(reference.state_dict())
    assert_close_rel(learner.fixed_text_features, reference.fixed_embeddings, FP32.parity, "fixed text features")
    return _plain(learner, reference, _by_name(reference, vpt_name))


def maple(model, tokenizer):
    torch.manual_seed(0)
    reference = ReferenceMaPLe(model, NAMES, prompt_depth=2, tokenizer=tokenizer)
    perturb_trainable(reference.prompt_learner)  # the couplings start identical: move them apart
    learner = fastprompt.MaPLeLearner.from_model(model, NAMES, prompt_depth=2, tokenizer=tokenizer)
    learner.load_original_state_dict(reference.state_dict())
    return _plain(learner, reference, _by_name(reference.prompt_learner))


def promptsrc(model, tokenizer):
    cfg = dict(prompt_depth_text=2, prompt_depth_vision=2, templates=["a photo of a {}.", "art of the {}."])
    torch.manual_seed(0)
    reference = ReferencePromptSRC(model, NAMES, tokenizer=tokenizer, **cfg)
    perturb_trainable(reference)
    learner = fastprompt.PromptSRCLearner.from_model(model, NAMES, tokenizer=tokenizer, **cfg)
    learner.load_original_state_dict(reference.state_dict())
    assert_close_rel(learner.zs_text_features, reference.prompt_learner.fixed_embeddings, FP32.parity,
                     "frozen text targets")
    # the whole objective: CE + the text, image and KL consistency terms
    return _plain(learner, reference, _by_name(reference, promptsrc_name))


TEXT_PROMPT = [kgcoop, pre, softcpt, pomp]
CASES = ([("EVA02-B-16", f) for f in TEXT_PROMPT + [rpp_text]]
         + [("convnext_base", f) for f in TEXT_PROMPT + [rpp_text]]
         + [("ViT-B-16-SigLIP", f) for f in TEXT_PROMPT]
         + [("ViT-B-16-SigLIP", rpp_text_ce), ("MobileCLIP-S1", rpp_text), ("coca_ViT-B-32", rpp_text)]
         + [("ViT-L-14-CLIPA", f) for f in (vpt, maple, promptsrc, rpp_text, rpp_both)]
         + [("ViT-L-14-worldwide", f) for f in (maple, promptsrc, vpt, rpp_both)])
# Cases compared in float64 (see the module docstring): the step's float32 rounding, not its layout,
# would decide a float32 comparison there. SoftCPT stays in float32 (FP32 tolerances, measured up to
# 8e-6 on its gradients): the learner casts the task features it feeds its generator to float32 by
# design (a bf16 text tower's too), so a float64 run would compare float32 rounding at 1e-12.
FLOAT64 = {("ViT-B-16-SigLIP", build) for build in (kgcoop, pre, pomp, rpp_text_ce)}


def _in_float64(pair: Pair) -> None:
    """Both sides in float64 from the same prompt values: the learner's float32 copy of the reference's
    prompts goes back to the reference after ``double()``, so the two start bit-identical."""
    pair.learner.double()
    pair.reference.double()  # its own modules (PRE's encoder, SoftCPT's generator); the model already is
    _, mine, theirs = pair.params()
    with torch.no_grad():
        for p, r in zip(mine, theirs):
            r.copy_(p)
        for buffer, r in pair.float32_buffers():
            buffer.copy_(r)


def compare(pair: Pair, images: torch.Tensor, labels: torch.Tensor, tol) -> None:
    """Logits, loss and every prompt gradient of the pair, to ``tol`` (``FP32`` or ``FP64``)."""
    parity, gradient_parity = (tol.parity, tol.gradient_parity) if tol is FP32 else (tol.exact, tol.exact)
    logits, ref_logits = pair.logits(images)
    assert_close_rel(logits, ref_logits, parity, "logits")
    loss, ref_loss = pair.losses(images, labels)
    assert_close_rel(loss, ref_loss, parity, "loss")
    names, mine, theirs = pair.params()
    assert len(mine) == len(theirs) > 0
    grads = torch.autograd.grad(loss, mine, allow_unused=True, materialize_grads=True)
    ref_grads = torch.autograd.grad(ref_loss, theirs, allow_unused=True, materialize_grads=True)
    for name, g, r in zip(names, grads, ref_grads):
        assert_close_rel(g, r, gradient_parity, f"grad {name}")
    # the comparison is not vacuous: the loss reaches the prompts (RPP's query prompts act only
    # where a prompt row's output survives, which a two-layer tower need not reach)
    assert_gradient_flows(torch.cat([g.flatten() for n, g in zip(names, grads) if not n.endswith("_q")]), "prompts")


def _case_id(case):
    name, build = case
    return f"{name}-{build.__name__}"


def _pair_on(name: str, build: Callable):
    model, tokenizer = _model(name)
    float64 = (name, build) in FLOAT64
    if float64:
        model = copy.deepcopy(model).double()
    pair = build(model, tokenizer)
    if float64:
        _in_float64(pair)
    images = _images(model).to(next(pair.learner.parameters()).dtype)
    return pair, images, (FP64 if float64 else FP32)


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_learner_matches_its_reference_on_a_non_openai_tower(case):
    pair, images, tol = _pair_on(*case)
    compare(pair, images, torch.tensor(LABELS), tol)


PERTURBED: List = [("EVA02-B-16", kgcoop), ("ViT-B-16-SigLIP", pre), ("ViT-L-14-CLIPA", vpt),
                   ("ViT-L-14-CLIPA", maple), ("ViT-B-16-SigLIP", rpp_text_ce), ("coca_ViT-B-32", rpp_text),
                   ("ViT-L-14-worldwide", maple), ("ViT-L-14-worldwide", rpp_both)]


@pytest.mark.parametrize("case", PERTURBED, ids=[_case_id(c) for c in PERTURBED])
def test_the_comparison_fails_when_the_references_prompts_are_moved(case):
    """One reference prompt tensor moved by hand after the pair is built: the comparison must see it."""
    pair, images, tol = _pair_on(*case)
    names, _, theirs = pair.params()
    # not a query prompt: RPP's act only where a prompt row's output survives
    _perturb(next(r for n, r in zip(names, theirs) if not n.endswith("_q")), seed=5)
    with pytest.raises(AssertionError, match="relative error"):
        compare(pair, images, torch.tensor(LABELS), tol)
