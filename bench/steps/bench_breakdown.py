"""Where a fastprompt training step's time goes: the image side, the text side, and the rest.

A whole-step speed-up is bounded by the part of the step that fastprompt cannot shrink. For the
cases of ``step_cases.py`` this times, side by side in one process (round-robin medians):

* ``step``: the whole fastprompt step (loss, backward, SGD), as ``bench_step.py`` times it;
* ``image``: the image side alone — the frozen forward of the batch (``learner.encode_image``)
  for the text-prompt learners, the prompted image tower's forward and backward
  (``learner.image_features(images).sum().backward()``) for the deep-vision learners;
* ``text``: for the learners whose image side is frozen, the step on precomputed image features
  (``learner.frozen_features``): the text side and the loss alone;
* ``teacher``: RPP with its vision branch: the teacher's frozen image forward (a second image-tower
  pass, since the student's features are prompted; the reference runs it too);
* ``reference``: the reference's whole step.

* ``dense``: for the learners with one class-list plan (CoOp-style, and CoCoOp's, run once per
  image on both sides), the text tower's dense layers alone -- in-projection, out-projection and
  the two MLP matrices of every block, forward and backward to the input, nothing else -- over the
  rows the packed text pass really has (packed suffix tokens plus the prefix rows), and
  ``dense_ref`` the same over the reference's rows (classes x 77).

Then both whole steps run once more under ``torch.utils.flop_counter`` (``flop_count.py``: GEMMs,
convolutions and every attention kernel): the reference's FLOPs over fastprompt's is the speed-up
the step would have if both sides ran at the same FLOP/s -- the bound of a ratio that only fewer
FLOPs can raise -- and each side's FLOP/s over its measured median says which side runs its work
faster.

The image tower computes the same GEMMs on both sides, so ``reference / image`` is an upper
bound of the whole-step ratio even with a free text side, and ``reference / (image + text)`` is
what the measured parts allow. Likewise the packed text pass cannot run faster than its own dense
layers: ``reference / dense`` bounds the text tower's ratio, and ``dense_ref / dense`` (below
the row ratio) is what the smaller GEMMs lose in throughput on the device. Nothing here has a
target; it explains the targets of ``bench_step.py``.

    OMP_WAIT_POLICY=PASSIVE python bench/steps/bench_breakdown.py --cases text coop cocoop promptsrc rpp
    python bench/steps/bench_breakdown.py --model tiny --cases coop rpp --repeats 1     # smoke run
"""
from __future__ import annotations

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)  # run as a script: ``bench`` imports from the repository root
from bench.harness.timing import median, setup_threads, time_interleaved  # noqa: E402  (first: sets OMP_WAIT_POLICY)
from bench.steps.step_cases import CASES, build_pair, pair_steps, sgd_steps  # noqa: E402
from bench.steps.flop_count import count_flops  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def _dense_layers(model: torch.nn.Module, rows: int, device: torch.device):
    """Forward and backward (to the input only: the weights are frozen) of the text tower's four dense
    layers per block over ``rows`` rows -- the GEMMs any text pass over that many rows runs."""
    blocks = model.transformer.resblocks
    width = blocks[0].attn.in_proj_weight.shape[1]
    x = torch.randn(rows, width, device=device, requires_grad=True)

    def run():
        h = x
        for blk in blocks:
            qkv = F.linear(h, blk.attn.in_proj_weight.detach(), blk.attn.in_proj_bias.detach())
            h = F.linear(qkv[:, :width], blk.attn.out_proj.weight.detach(), blk.attn.out_proj.bias.detach())
            h = F.linear(h, blk.mlp.c_fc.weight.detach(), blk.mlp.c_fc.bias.detach())
            h = F.linear(h, blk.mlp.c_proj.weight.detach(), blk.mlp.c_proj.bias.detach())
        h.sum().backward()
        x.grad = None
    return run


def _text_rows(learner, reference, passes: int):
    """(rows of the packed text pass, rows of the reference's) for a learner with one class-list plan
    run ``passes`` times per step (CoCoOp: once per image, on both sides)."""
    plan = getattr(learner, "plan", None)
    tokens = getattr(reference, "tokenized_prompts", None)
    if plan is None or tokens is None:
        return None
    return passes * (plan.n_tokens + plan.n_groups * plan.prefix_len), passes * tokens.numel()


def _units(spec, model: str, device: torch.device):
    pair = build_pair(spec, model, device)
    learner, reference, images, labels = pair.learner, pair.reference, pair.images, pair.labels
    params = learner.trainable_parameters()
    step, ref_step = pair_steps(spec, pair)
    units = {"step": step, "reference": ref_step}
    rows = _text_rows(learner, reference, spec.images if spec.image_conditioned else 1)
    if rows is not None:
        units["dense"], units["dense_ref"] = (_dense_layers(pair.model, n, device) for n in rows)
        print(f"{spec.name}: dense layers over {rows[0]} packed rows vs the reference's {rows[1]} "
              f"({rows[1] / rows[0]:.1f}x fewer rows)")
    if not spec.images:
        return units
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
    teacher = getattr(learner, "teacher", None)
    if teacher is not None and getattr(learner, "prompt_vision", False):
        # RPP with its vision branch: the teacher's frozen image forward is a second pass over the
        # images (the student's are prompted), run by both sides.
        units["teacher"] = torch.no_grad()(lambda: teacher.image_features(images))
    return units


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["text", "coop", "cocoop", "maple", "promptsrc", "rpp"],
                        choices=list(CASES), metavar="CASE")
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
        line = f"{name:10s} step {t['step']:.3f} s, reference {t['reference']:.3f} s: speed-up " \
               f"{t['reference'] / t['step']:.1f}x"
        if "image" in t:
            images = t["image"] + t.get("teacher", 0.0)  # every image-tower pass: the same GEMMs on both sides
            parts = f"image {t['image']:.3f} s" + (f", teacher image {t['teacher']:.3f} s" if "teacher" in t else "")
            parts += f", text {t['text']:.3f} s" if "text" in t else ""
            known = images + t.get("text", 0.0)
            measured = f", with the measured parts {t['reference'] / known:.1f}x" if "text" in t else ""
            line += (f" ({parts}; rest {max(t['step'] - known, 0.0):.3f} s); bound with a free text side "
                     f"{t['reference'] / images:.1f}x{measured}")
        if "dense" in t:
            text_ref = t["reference"] - t.get("image", 0.0) - t.get("teacher", 0.0)
            line += (f"; text dense layers {t['dense']:.3f} s vs {t['dense_ref']:.3f} s over the reference's rows "
                     f"({t['dense_ref'] / t['dense']:.1f}x): the text side's ratio is at most "
                     f"{text_ref / t['dense']:.1f}x")
            if "image" in t:
                line += f", the step's at most {t['reference'] / (images + t['dense']):.1f}x"
        print(line)
        flops = {side: count_flops(units[side])[0] for side in ("step", "reference")}
        fast, ref = flops["step"], flops["reference"]
        print(f"{name:10s} FLOPs per step {fast / 1e9:.1f} GF vs the reference's {ref / 1e9:.1f} GF: "
              f"{ref / fast:.2f}x at equal FLOP/s (measured: fastprompt {fast / t['step'] / 1e9:.0f} GF/s, "
              f"reference {ref / t['reference'] / 1e9:.0f} GF/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
