"""Where a fastprompt training step's time goes: the image side, the text side, and the rest.

A whole-step speed-up is bounded by the part of the step that fastprompt cannot shrink. For the
cases of ``step_cases.py`` this times, side by side in one process (round-robin medians):

* ``step``: the whole fastprompt step (loss, backward, SGD), as ``bench_step.py`` times it;
* ``image``: the image side alone — the frozen forward of the batch (``learner.encode_image``)
  for the text-prompt learners, the prompted image tower's forward and backward
  (``learner.image_features(images).sum().backward()``) for the deep-vision learners;
* ``text``: for the learners whose image side is frozen, the step on precomputed image features
  (``learner.frozen_features``): the text side and the loss alone;
* ``reference``: the reference's whole step.

The image tower computes the same GEMMs on both sides, so ``reference / image`` is an upper
bound of the whole-step ratio even with a free text side, and ``reference / (image + text)`` is
what the measured parts allow. Nothing here has a target; it explains the targets of
``bench_step.py``.

    OMP_WAIT_POLICY=PASSIVE python bench/bench_breakdown.py --cases coop cocoop promptsrc rpp
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import median, setup_threads, time_interleaved  # noqa: E402  (first: sets OMP_WAIT_POLICY)
from step_cases import CASES, build_pair, sgd_steps  # noqa: E402

import torch  # noqa: E402


def _units(spec, model: str, device: torch.device):
    pair = build_pair(spec, model, device)
    learner, reference, images, labels = pair.learner, pair.reference, pair.images, pair.labels
    params = learner.trainable_parameters()
    ref_params = [p for p in spec.params(reference) if p.requires_grad]
    step, ref_step = sgd_steps(lambda: learner.loss(images, labels), params, lambda: reference.loss(images, labels),
                               ref_params)
    units = {"step": step, "reference": ref_step}
    if getattr(learner, "frozen_image_side", False):
        units["image"] = lambda: learner.encode_image(images)
        features = learner.frozen_features(images)

        def text_loss():
            return learner.loss(features, labels)
        units["text"] = sgd_steps(text_loss, params, text_loss, params)[0]
    else:
        def image_side():
            for p in params:
                p.grad = None
            learner.image_features(images).sum().backward()
        units["image"] = image_side
    return units


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["coop", "cocoop", "maple", "promptsrc", "rpp"],
                        choices=[c for c in CASES if CASES[c].images], metavar="CASE")
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    setup_threads(args.threads)
    device = torch.device(args.device)
    for name in args.cases:
        units = _units(CASES[name], args.model, device)
        t = {k: median(v) for k, v in time_interleaved(units, args.repeats, device).items()}
        parts = f"image {t['image']:.3f} s" + (f", text {t['text']:.3f} s" if "text" in t else "")
        known = t["image"] + t.get("text", 0.0)
        measured = f", with the measured parts {t['reference'] / known:.1f}x" if "text" in t else ""
        print(f"{name:10s} step {t['step']:.3f} s ({parts}; rest {max(t['step'] - known, 0.0):.3f} s), reference "
              f"{t['reference']:.3f} s: speed-up {t['reference'] / t['step']:.1f}x; bound with a free text side "
              f"{t['reference'] / t['image']:.1f}x{measured}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
