"""The evaluation unit of every ``bench/steps/step_cases.py`` case: classify a test set with a trained prompt.

One unit classifies ``n_images`` random images in batches of ``batch`` (predictions = argmax of the
logits), without autograd, on the pair of :func:`step_cases.build_pair` (the learner holding the
reference's prompts):

* fastprompt: the class features once per test set (``learner.text_classifier()``, ``[C, E]``), then
  per batch only the image side (``learner.image_features``, ``[b, E]``) and one matmul. CoCoOp's
  classifier depends on the image (``CaseSpec.image_conditioned``), so there every batch runs
  ``learner(images)``: the prefix-shared, packed text pass batched over the batch's images.
* reference: ``reference(images)`` per batch, as the original evaluation loops do: the full
  77-token text pass over every class in every batch (CoCoOp's: once per image).

Before anything is timed the two sides' logits of the first batch must agree
(:data:`AGREEMENT` relative error); the error is returned with the case. A case whose learner runs
the frozen image tower in bf16 (``frozen_image_precision="bf16"``, an option that changes the image
features by design) is checked in two parts: its logits on the fp32 image features against the
reference's (:data:`AGREEMENT`), and its image features against fp32
(``feature_error``, within ``fastprompt.testing.BF16.frozen_image``).
Cases without images (the text-tower case) have no evaluation unit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch

from bench.steps.step_cases import CaseSpec, build_pair, random_batch

# fp32 logits through two different (exact) computation orders; measured ~1e-6 on ViT-B-16.
AGREEMENT = 1e-4


@dataclass
class EvalCase:
    fastprompt: Callable[[], None]   # classify the test set on the fast path
    reference: Callable[[], None]    # the same on the reference path
    info: Dict[str, object]          # shapes, written to the CSV
    rel_error: float                 # max relative error of the first batch's logits, fastprompt vs reference
    feature_error: Optional[float] = None  # bf16 image tower only: max over images of |f - f_fp32| / |f_fp32|


def has_eval(spec: CaseSpec) -> bool:
    """Whether the case classifies images (the text-tower case does not)."""
    return spec.images > 0


def _reference_logits(reference, images: torch.Tensor) -> torch.Tensor:
    out = reference(images)
    return out[0] if isinstance(out, tuple) else out  # SoftCPT's reference returns (logits, selected)


def build_eval(spec: CaseSpec, model_name: str, device: torch.device, n_images: int, batch: int) -> EvalCase:
    """The evaluation unit of ``spec`` over ``n_images`` random images in batches of ``batch``."""
    if not has_eval(spec):
        raise ValueError(f"case {spec.name!r} runs no images, so it has no evaluation unit; "
                         "choose a case that classifies images")
    if n_images < 1 or batch < 1:
        raise ValueError(f"eval needs n_images >= 1 and batch >= 1, got {n_images} and {batch}")
    from fastprompt.testing import max_rel_error, relative_feature_error

    pair = build_pair(spec, model_name, device)
    learner, reference = pair.learner.train(False), pair.reference.eval()
    images, _ = random_batch(pair.model, n_images, spec.classes, seed=1, device=device)
    batches: List[torch.Tensor] = list(images.split(batch))

    def fast_logits(classifier, x):
        if classifier is None:
            return learner(x)
        features = learner.image_features(x)
        return learner.logit_scale * features @ classifier.to(features.dtype).t()

    @torch.no_grad()
    def fast():
        classifier = None if spec.image_conditioned else learner.text_classifier()
        for x in batches:
            fast_logits(classifier, x).argmax(-1)

    @torch.no_grad()
    def ref():
        for x in batches:
            _reference_logits(reference, x).argmax(-1)

    with torch.no_grad():
        classifier = None if spec.image_conditioned else learner.text_classifier()
        first, feature_error = batches[0], None
        if getattr(learner.config, "frozen_image_precision", "fp32") == "bf16" and classifier is not None:
            exact = pair.model.encode_image(first, normalize=True)  # fp32 features, as the reference's
            feature_error = relative_feature_error(learner.image_features(first), exact)
            logits = learner.logit_scale * exact @ classifier.to(exact.dtype).t()
        else:
            logits = fast_logits(classifier, first)
        error = max_rel_error(logits.float(), _reference_logits(reference, first).float())
    info = dict(pair.info, eval_images=n_images, eval_batch=batch)
    return EvalCase(fast, ref, info, error, feature_error)
