"""SoftCPT's multi-task step and epoch at General-10's size: fastprompt vs the reference, where the time goes.

SoftCPT trains all tasks together: every step the reference of the original
(``fastprompt.reference.softcpt.ReferenceSoftCPT``, kding1225/softcpt ``trainers/mtcoop.py``)
encodes the task prompts, runs the prompt generator and then encodes the 77-token prompts of every
class of every task, once per task. General-10 is the ten CoOp datasets other than ImageNet; their
class counts (:data:`GENERAL10`, 1,191 classes) are CoOp's (Zhou et al., IJCV 2022, dataset
table; the counts the ``split_zhou`` files label). Class *names* here are ImageNet's (then
ImageNet-21K lemmas) cut into the ten tasks: the cost depends on the counts and on the token
lengths, not on which names they are. Task names are fastprompt's task table
(``fastprompt.data.softcpt.tasks``).

Both sides are SoftCPT-NATA (the ``softcpt/*`` recipes: 16 generated context tokens, 4 task context
tokens, linear prompt generator) on one random-weight model, the learner loaded with the reference's
prompts; the two losses must agree within ``FP32.parity`` before anything is timed. A batch is
``--batch`` (the recipes' 32) items drawn uniformly over the joint classes (every class has the same
number of shots, so the original's random sampler draws classes uniformly): a task absent from the
batch is read by no logit of the loss, and fastprompt encodes only the tasks present.

Timed, round-robin, medians of ``--repeats``:

* **step**: zero_grad, loss, backward, SGD step; fastprompt on images, fastprompt on cached image
  features (``learner.frozen_features``: what ``TRAIN.FEATURE_CACHE`` serves when the views are
  deterministic -- augmentation off, or fixed seeded views; the recipes' random crops are not),
  and the reference (which has no cache);
* **where the time goes**: the frozen image tower's forward on the batch; the prompt generator
  (task prompts through the text tower, the meta-network, forward and backward of their sum); the
  text side = step - image tower; the class text pass = text side - prompt generator (derived);
* **epoch**: ``floor(shots x 1,191 / batch)`` steps (Dassl drops the last partial batch) over a
  seeded permutation of the ``--epoch-shots`` shots of every class, each side once; the cached side
  also pays its one-off fill (every item through the image tower once), reported apart.

FLOPs per step (``flop_count.py``) give the ratio at equal FLOP/s. No target: the issue asks for the
ratio, not a bound; the script exits 0 after appending rows to
``bench/results/bench_softcpt_multitask.csv``, 1 only when the losses disagree.

    OMP_WAIT_POLICY=PASSIVE python bench/steps/bench_softcpt_multitask.py --model tiny   # CPU (2 cores)
    python bench/steps/bench_softcpt_multitask.py --device cuda --epoch-shots 16        # ViT-B-16, GPU
    python bench/steps/bench_softcpt_multitask.py --small --repeats 1                    # smoke run

On a CPU the reference's ViT-B-16 step at 1,191 classes holds 1,191 x 77 tokens of activations per
layer for the backward (tens of GB): ``--model tiny`` (``step_cases.bench_model``: 64-wide CLIP,
12 layers per tower) keeps the real class counts and batch. ``--small`` divides every class count
by 20 (rounded up) on the 2-layer ``fastprompt.models.tiny_clip``, batch 8: seconds, for tests.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Dict, List, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)  # run as a script: ``bench`` imports from the repository root
from bench.harness.timing import median, setup_threads, synchronize, time_interleaved  # noqa: E402  (first)
from bench.harness.report import common_fields, report_rows  # noqa: E402
from bench.steps.flop_count import count_flops  # noqa: E402
from bench.steps.step_cases import bench_model, imagenet_classnames, random_batch  # noqa: E402

import torch  # noqa: E402

DEFAULT_CSV = os.path.join(REPO, "bench", "results", "bench_softcpt_multitask.csv")

# General-10's sources (SoftCPT's source classes) and their class counts (CoOp's datasets).
GENERAL10: List[Tuple[str, int]] = [
    ("Caltech101", 100), ("DescribableTextures", 47), ("EuroSAT", 10), ("FGVCAircraft", 100), ("Food101", 101),
    ("OxfordFlowers", 102), ("OxfordPets", 37), ("StanfordCars", 196), ("SUN397", 397), ("UCF101", 101),
]
SMALL_DIVISOR = 20  # --small: class counts / 20, rounded up (each task keeps at least two: a classifier needs them)


def general10_tasks(divisor: int = 1) -> Dict[str, List[str]]:
    """Task name -> class names, General-10's ten tasks with ``max(2, ceil(count / divisor))`` classes each."""
    from fastprompt.data.softcpt.tasks import TASK_TABLE

    counts = [(TASK_TABLE[cls][0], max(2, math.ceil(n / divisor))) for cls, n in GENERAL10]
    total = sum(n for _, n in counts)
    # ImageNet-1K names a few classes twice ("crane", "sunglasses"): a task's classes must differ, so
    # the first occurrence of each name is kept, reading on until there are enough.
    seen, names = set(), []
    for name in imagenet_classnames(total + 100):
        key = name.lower().replace("_", " ")
        if key not in seen:
            seen.add(key)
            names.append(name)
    names = names[:total]
    tasks, start = {}, 0
    for task, n in counts:
        tasks[task] = names[start:start + n]
        start += n
    return tasks


class Bench:
    """The learner and the reference on one model, and every unit this script times."""

    def __init__(self, model, tasks: Dict[str, List[str]], batch: int, device: torch.device):
        from fastprompt import SoftCPTLearner
        from fastprompt.reference import ReferenceSoftCPT

        self.device, self.batch, self.model = device, batch, model
        torch.manual_seed(0)
        self.reference = ReferenceSoftCPT(model, list(tasks), list(tasks.values())).to(device)
        self.learner = SoftCPTLearner.from_model(model, tasks).to(device)
        self.learner.load_original_state_dict(self.reference.state_dict())
        self.n_classes = self.learner.n_classes
        self.images, _ = random_batch(model, batch, self.n_classes, device=device)
        self.labels = self.draw_labels(0)

    def draw_labels(self, seed: int) -> torch.Tensor:
        """``[batch]`` joint labels drawn uniformly over the classes (see the module docstring)."""
        gen = torch.Generator().manual_seed(seed)
        return torch.randint(0, self.n_classes, (self.batch,), generator=gen).to(self.device)

    def tasks_present(self, labels: torch.Tensor) -> Tuple[int, int]:
        """``(tasks, classes)`` of the tasks that ``labels`` place samples in: what fastprompt encodes."""
        owner = self.learner._layout.class_task[labels.cpu()].unique().tolist()
        ranges = self.learner.class_ranges
        return len(owner), sum(ranges[t][1] - ranges[t][0] for t in owner)

    def step_fns(self):
        """``{"fastprompt", "fastprompt_cached", "reference"}`` -> ``step(labels)``: zero_grad, loss,
        backward, SGD step on the batch's images with ``labels`` (the cached side on the images'
        features, computed once here: the cache's table)."""
        learner, reference = self.learner, self.reference
        features = learner.frozen_features(self.images)
        opt = lambda params: torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=5e-4)  # noqa: E731
        fast_opt, ref_opt = opt(list(learner.trainable_parameters())), opt(reference.prompt_parameters())

        def make(optimizer, loss):
            def step(labels):
                optimizer.zero_grad(set_to_none=True)
                loss(labels).backward()
                optimizer.step()
            return step
        return {"fastprompt": make(fast_opt, lambda labels: learner.loss(self.images, labels)),
                "fastprompt_cached": make(fast_opt, lambda labels: learner.loss(features, labels)),
                "reference": make(ref_opt, lambda labels: reference.loss(
                    self.images, learner.label_matrix(labels).to(self.device)))}

    def loss_disagreement(self) -> float:
        """Relative difference of the two losses on the batch, before any step."""
        matrix = self.learner.label_matrix(self.labels).to(self.device)
        with torch.no_grad():
            a = self.learner.loss(self.images, self.labels).double()
            b = self.reference.loss(self.images, matrix).double()
        return float((a - b).abs() / b.abs().clamp_min(1e-30))

    def parts(self):
        """The parts of a step, per side: the image tower's forward, the prompt generator fwd+bwd."""
        learner, reference = self.learner, self.reference

        def image(side):
            def run():
                with torch.no_grad():
                    side.encode_image(self.images)
            return run

        def fast_generator():
            learner.prompt_gen(learner.task_features()).sum().backward()

        def ref_generator():
            feats = reference.text_encoder(reference.task_prompt_learner(), reference.task_tokenized_prompts)
            reference.prompt_gen(feats).sum().backward()
        return ({"fastprompt": image(learner), "reference": image(reference)},
                {"fastprompt": fast_generator, "reference": ref_generator})

    def epoch(self, shots: int, seed: int = 0) -> Dict[str, float]:
        """Seconds of one epoch per side (and the cached side's one-off fill) over ``shots`` items per class."""
        import time

        items = torch.arange(self.n_classes).repeat_interleave(shots)
        order = items[torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))]
        batches = [order[i:i + self.batch].to(self.device) for i in range(0, len(order) - self.batch + 1, self.batch)]
        if not batches:
            raise SystemExit(f"--epoch-shots {shots} gives {len(order)} items, fewer than one batch of {self.batch}")
        out = {}
        for side, step in self.step_fns().items():
            synchronize(self.device)
            start = time.perf_counter()
            for labels in batches:
                step(labels)
            synchronize(self.device)
            out[side] = time.perf_counter() - start
        fill_calls = math.ceil(len(order) / self.batch)  # every item through the image tower once
        synchronize(self.device)
        start = time.perf_counter()
        with torch.no_grad():
            for _ in range(fill_calls):
                self.learner.frozen_features(self.images)
        synchronize(self.device)
        out["cache_fill"] = time.perf_counter() - start
        out["steps"] = len(batches)
        return out


def build(model_name: str, small: bool, batch: int, device: torch.device) -> Bench:
    from fastprompt.models import tiny_clip

    model = tiny_clip(0) if small else bench_model(model_name)
    return Bench(model.to(device), general10_tasks(SMALL_DIVISOR if small else 1), batch, device)


EXTRA_COLUMNS = ("flop_ratio", "classes_encoded", "shots", "cache_fill_s")  # empty where a unit has none


def _row(base: Dict[str, object], unit: str, description: str, fast: float, ref: float, **extra) -> Dict[str, object]:
    return {**base, "unit": unit, "description": description, "fastprompt_s": round(fast, 4),
            "reference_s": round(ref, 4), "speedup": round(ref / fast, 2) if fast > 0 else "",
            **{k: extra.get(k, "") for k in EXTRA_COLUMNS}}


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-16", help="open_clip architecture (random weights) or 'tiny'")
    parser.add_argument("--small", action="store_true", help="smoke run: class counts / 20, 2-layer tiny CLIP")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=None, help="images per step (default 32, --small 8)")
    parser.add_argument("--epoch-shots", type=int, default=1, help="shots per class of the timed epoch")
    parser.add_argument("--no-epoch", action="store_true", help="time the step and its parts only")
    parser.add_argument("--csv", default=DEFAULT_CSV, help="CSV file to append the rows to")
    args = parser.parse_args(argv)
    setup_threads(args.threads)
    device = torch.device(args.device)
    batch = args.batch or (8 if args.small else 32)
    model_name = "tiny_clip(2 layers)" if args.small else args.model
    bench = build(args.model, args.small, batch, device)

    from fastprompt.testing import FP32

    err = bench.loss_disagreement()
    if err > FP32.parity:
        print(f"fastprompt's and the reference's losses differ by {err:.1e} relative (> FP32.parity "
              f"{FP32.parity:.0e}): not timing a wrong answer", flush=True)
        return 1
    n_tasks, n_present = bench.tasks_present(bench.labels)
    print(f"SoftCPT-NATA, General-10 sized: {bench.learner.n_tasks} tasks, {bench.n_classes} classes, batch {batch}, "
          f"model {model_name} on {device}; losses agree to {err:.1e}", flush=True)
    print(f"  the batch holds {n_tasks} tasks: fastprompt encodes their {n_present} classes, "
          f"the reference all {bench.n_classes}", flush=True)
    base = {**common_fields(device), "model": model_name, "tasks": bench.learner.n_tasks, "classes": bench.n_classes,
            "batch": batch, "repeats": args.repeats}
    labels = bench.labels
    steps = {side: (lambda step=step: step(labels)) for side, step in bench.step_fns().items()}
    t = {k: median(v) for k, v in time_interleaved(steps, args.repeats, device).items()}
    image, generator = bench.parts()
    t_img = {k: median(v) for k, v in time_interleaved(image, args.repeats, device).items()}
    t_gen = {k: median(v) for k, v in time_interleaved(generator, args.repeats, device).items()}
    flops = {side: count_flops(steps[side])[0] for side in ("fastprompt", "fastprompt_cached", "reference")}
    flop_ratio = flops["reference"] / max(flops["fastprompt"], 1)
    rows = [
        _row(base, "step", "one SGD step on images", t["fastprompt"], t["reference"], flop_ratio=round(flop_ratio, 2),
             classes_encoded=n_present),
        _row(base, "step_cached", "one SGD step, fastprompt on cached image features (reference: on images)",
             t["fastprompt_cached"], t["reference"],
             flop_ratio=round(flops["reference"] / max(flops["fastprompt_cached"], 1), 2), classes_encoded=n_present),
        _row(base, "image_tower", "frozen image tower forward on the batch", t_img["fastprompt"], t_img["reference"]),
        _row(base, "prompt_generator", "task prompts through the text tower + meta-network, fwd+bwd",
             t_gen["fastprompt"], t_gen["reference"]),
    ]
    text = {k: t[k] - t_img[k] for k in ("fastprompt", "reference")}
    rows.append(_row(base, "text_side", "step - image tower (derived)", text["fastprompt"], text["reference"]))
    print(f"  step: fastprompt {t['fastprompt']:.3f} s (on cached features {t['fastprompt_cached']:.3f} s), "
          f"reference {t['reference']:.3f} s: {t['reference'] / t['fastprompt']:.1f}x "
          f"({t['reference'] / t['fastprompt_cached']:.1f}x with the cache); FLOP ratio {flop_ratio:.1f}x", flush=True)
    for side in ("fastprompt", "reference"):
        total = t[side]
        cls_pass = text[side] - t_gen[side]
        print(f"  where {side}'s step goes: image tower {t_img[side]:.3f} s ({100 * t_img[side] / total:.0f}%), "
              f"prompt generator {t_gen[side]:.3f} s ({100 * t_gen[side] / total:.0f}%), class text pass + loss "
              f"{cls_pass:.3f} s ({100 * cls_pass / total:.0f}%, derived)", flush=True)
    if not args.no_epoch:
        e = bench.epoch(args.epoch_shots)
        desc = f"one epoch, {args.epoch_shots} shot(s) per class, {e['steps']} steps"
        rows.append(_row(base, "epoch", desc, e["fastprompt"], e["reference"], shots=args.epoch_shots))
        rows.append(_row(base, "epoch_cached", desc + "; fastprompt on cached features (fill not included)",
                         e["fastprompt_cached"], e["reference"], shots=args.epoch_shots,
                         cache_fill_s=round(e["cache_fill"], 4)))
        print(f"  epoch ({args.epoch_shots} shot(s), {e['steps']} steps): fastprompt {e['fastprompt']:.2f} s, "
              f"on cached features {e['fastprompt_cached']:.2f} s (+ {e['cache_fill']:.2f} s fill, once per run), reference "
              f"{e['reference']:.2f} s: {e['reference'] / e['fastprompt']:.1f}x "
              f"({e['reference'] / e['fastprompt_cached']:.1f}x with the cache)", flush=True)
    return report_rows(args.csv, rows)


if __name__ == "__main__":
    sys.exit(main())
