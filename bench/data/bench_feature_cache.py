"""A CoOp epoch on cached frozen features vs the reference CoOp epoch, and the frozen image forward.

Two measurements, on a random-weight ``ViT-B-16`` (the speed does not depend on the weights):

1. **The frozen image forward** on ``--images`` random 224 px images, timed round-robin: open_clip's
   ``model.encode_image`` (its module path), fastprompt's functional tower in fp32 (what every
   learner's ``encode_image`` runs: fused QKV projection, SDPA, only the class token through the
   last layer) and the same under bf16 autocast (``frozen_image_precision="bf16"``), with the fp32
   path's error against open_clip (must be <= ``FP32.parity``) and bf16's relative feature error
   against fp32. This is also the cost of filling the cache: once per image view.
2. **The epoch** (target: >= 25x): CoOp, 16 context vectors, ``--shots`` x ``--classes`` training
   images (16 x 100), batch ``--batch`` (CoOp's 32), one SGD step per batch. The reference epoch
   is ``fastprompt.reference.ReferenceCoOp`` (the original's code path: image tower and full-length
   text tower every step) on random image batches: its step time (median of ``--ref-steps``) times
   the steps per epoch (every step has the same shapes). The cached epoch is a real
   ``fastprompt.train.Trainer`` epoch over ``CachedFeatureBatches`` (the batch source of
   ``TRAIN.FEATURE_CACHE all``), timed whole. Reference steps and cached epochs alternate
   (``bench/harness/timing.py``), so a busy machine slows both alike. Image loading is left out of both
   sides (random tensors): it would only add to the reference. The cache's table is filled with
   random unit features instead of ``shots x classes`` image forwards (minutes on a 2-core CPU);
   the fill's cost is reported from measurement 1 (per image, once, or nothing when the table is on
   disk) and amortised over the 50 epochs of CoOp's few-shot recipe in the last column.

On a miss the script says what bounds the ratio: a cached step is the text tower's forward and
backward over all classes (plus the loss), so the ratio cannot exceed the reference step over the
text tower's fwd+bwd, measured here too.

    python bench/data/bench_feature_cache.py               # the target measurement (about 10 min on 2 cores)
    python bench/data/bench_feature_cache.py --quick       # smoke run: small shapes, target not checked
    python bench/data/bench_feature_cache.py --part forward --repeats 5   # measurement 1 alone
"""
from __future__ import annotations

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)  # run as a script: ``bench`` imports from the repository root
from bench.harness.timing import median, setup_threads, time_interleaved  # noqa: E402  (first: sets OMP_WAIT_POLICY)
from bench.harness.report import add_report_arguments, common_fields, report_rows  # noqa: E402

import torch  # noqa: E402

DEFAULT_CSV = os.path.join(REPO, "bench", "results", "bench_feature_cache.csv")
TARGET = 25.0
RECIPE_EPOCHS = 50  # CoOp's few-shot recipe (vit_b16_ep50): the fill amortised over a whole run


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def frozen_forward(model, n_images: int, repeats: int, device: torch.device, open_clip: bool = True):
    """Median seconds per call of open_clip (``open_clip=True``) / fastprompt fp32 / fastprompt bf16
    (where supported) on ``n_images``, the errors, and why bf16 was not measured (``None``: it was)."""
    import fastprompt
    from fastprompt.learners.frozen_precision import bf16_unsupported_reason
    from fastprompt.testing import max_rel_error

    names = ["cat", "dog"]
    fp32 = fastprompt.CoOpLearner.from_model(model, names, n_ctx=2)
    bf16_reason = bf16_unsupported_reason(device)
    fns, out = {}, {}
    images = _images(n_images, model.visual.image_size[0]).to(device)

    def run(name, fn):
        def call():
            with torch.no_grad():
                out[name] = fn()
        fns[name] = call

    if open_clip:
        run("open_clip", lambda: model.encode_image(images))
    run("fastprompt_fp32", lambda: fp32.vision_tower(images))
    if bf16_reason is None:
        bf16 = fastprompt.CoOpLearner.from_model(model, names, n_ctx=2, frozen_image_precision="bf16")
        run("fastprompt_bf16", lambda: _bf16_features(bf16, images))
    times = time_interleaved(fns, repeats, device, warmup=1 if repeats > 1 else 0)
    result = {name: median(t) for name, t in times.items()}
    errors = {"fp32_vs_open_clip": max_rel_error(out["fastprompt_fp32"], out["open_clip"])} if open_clip else {}
    if "fastprompt_bf16" in out:
        a, b = out["fastprompt_bf16"].double(), out["fastprompt_fp32"].double()
        errors["bf16_vs_fp32"] = float(((a - b).norm(dim=-1) / b.norm(dim=-1)).max())
    return result, errors, bf16_reason


def _bf16_features(learner, images):
    from fastprompt.learners.frozen_precision import frozen_image_autocast

    with frozen_image_autocast("bf16", images.device):
        return learner.vision_tower(images).float()


def epoch_pair(model, args, device: torch.device):
    """Closures for one reference step and one cached Trainer epoch, plus the text fwd+bwd closure."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    from torch.utils.data import TensorDataset

    import fastprompt
    import fastprompt.reference
    from fastprompt.train import EpochSchedule, Trainer, TrainSettings
    from fastprompt.features.batches import CachedFeatureBatches
    from fastprompt.features.store import FeatureTable
    from fastprompt.train.records import RunRecords

    names = list(IMAGENET_CLASSNAMES[:args.classes])
    n_train = args.shots * args.classes
    torch.manual_seed(0)
    reference = fastprompt.reference.ReferenceCoOp(model, names, n_ctx=16).to(device)
    learner = fastprompt.CoOpLearner.from_model(model, names, n_ctx=16).to(device)
    learner.load_original_state_dict(reference.prompt_learner.state_dict())

    size = model.visual.image_size[0]
    gen = torch.Generator().manual_seed(1)
    ref_images = torch.randn(args.batch, 3, size, size, generator=gen).to(device)
    ref_labels = torch.randint(0, args.classes, (args.batch,), generator=gen).to(device)
    ref_params = [p for p in reference.prompt_learner.parameters() if p.requires_grad]
    ref_opt = torch.optim.SGD(ref_params, lr=2e-3, momentum=0.9, weight_decay=5e-4)

    def reference_step():
        ref_opt.zero_grad(set_to_none=True)
        reference.loss(ref_images, ref_labels).backward()
        ref_opt.step()

    # The table the cache would hold: one unit feature per training image, labels shots x classes.
    features = torch.nn.functional.normalize(torch.randn(n_train, 1, learner.vision_tower.output_dim, generator=gen),
                                             dim=-1).to(device)
    table = FeatureTable(features, torch.ones(n_train, dtype=torch.bool, device=device),
                         (torch.arange(n_train) % args.classes).to(device))
    optim = {"NAME": "sgd", "LR": 2e-3, "MOMENTUM": 0.9, "WEIGHT_DECAY": 5e-4, "SGD_DAMPNING": 0,
             "SGD_NESTEROV": False}
    placeholder = TensorDataset(torch.zeros(n_train, 1))  # never read: the batches come from the table
    epochs = [0]

    def cached_epoch():
        settings = TrainSettings(max_epoch=1, batch_size=args.batch, seed=epochs[0], no_test=True, tensorboard=False,
                                 progress=False)
        batches = CachedFeatureBatches(lambda: table, n_train, 1, 1, args.batch, epochs[0])
        trainer = Trainer(learner, placeholder, settings, optim, EpochSchedule(2e-3, 1, "cosine"), device=device,
                          records=RunRecords(None, enabled=False, echo=False), batches=batches)
        trainer.fit()
        epochs[0] += 1

    def text_fwd_bwd():
        learner.zero_grad(set_to_none=True)
        learner.text_features().square().sum().backward()

    steps = n_train // args.batch if n_train >= args.batch else 1
    return reference_step, cached_epoch, text_fwd_bwd, steps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small shapes, one repeat, no target check")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--ref-steps", type=int, default=3, help="timed reference steps (median)")
    parser.add_argument("--epochs", type=int, default=3, help="timed cached epochs (median)")
    parser.add_argument("--images", type=int, default=8, help="images of the frozen-forward measurement")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of the frozen forward (median)")
    parser.add_argument("--part", choices=("all", "forward", "epoch"), default="all",
                        help="measurement 1 (forward), 2 (epoch) or both")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_report_arguments(parser, DEFAULT_CSV)
    args = parser.parse_args(argv)
    if args.quick:
        args.shots, args.classes, args.batch, args.ref_steps, args.epochs, args.images, args.repeats = \
            2, 10, 4, 1, 1, 2, 1
    setup_threads(args.threads)
    device = torch.device(args.device)

    from fastprompt.testing import random_clip

    model = random_clip("ViT-B-16").to(device)
    common = {**common_fields(device), "model": "ViT-B-16 (random)", "quick": args.quick}

    rows, below = [], []
    if args.part in ("all", "forward"):
        rows.append(forward_part(model, args, device, common, below))
    if args.part in ("all", "epoch"):
        rows.append(epoch_part(model, args, device, common, below))
    columns = {key: "" for row in rows for key in row}  # one CSV: both kinds of row share the union of columns
    return report_rows(args.csv, [{**columns, **row} for row in rows], below, args.no_fail)


def forward_part(model, args, device, common, below):
    from fastprompt.testing import FP32

    forward, errors, bf16_reason = frozen_forward(model, args.images, args.repeats, device)
    print(f"frozen image forward, {args.images} images on {common['device']} (median s per call of "
          f"{args.repeats}): " + ", ".join(f"{name} {t:.3f}" for name, t in forward.items()))
    print(f"  fastprompt fp32 is {forward['open_clip'] / forward['fastprompt_fp32']:.2f}x open_clip's encode_image, "
          f"max rel error {errors['fp32_vs_open_clip']:.1e} (FP32.parity {FP32.parity:.0e})")
    if bf16_reason is None:
        print(f"  bf16 autocast is {forward['fastprompt_fp32'] / forward['fastprompt_bf16']:.2f}x fp32, relative "
              f"feature error {100 * errors['bf16_vs_fp32']:.2f}%")
    else:
        print(f"  bf16 not measured: {bf16_reason}")
    if not errors["fp32_vs_open_clip"] <= FP32.parity:
        below.append(f"fastprompt's frozen forward differs from open_clip's by {errors['fp32_vs_open_clip']:.1e} > "
                     f"FP32.parity")
    return {**common, "benchmark": "frozen_image_forward", "images": args.images,
            **{f"{name}_s": round(t, 4) for name, t in forward.items()},
            **{f"err_{name}": f"{e:.2e}" for name, e in errors.items()}}


def epoch_part(model, args, device, common, below):
    # The fill costs one frozen forward per image view: measured on one batch, fp32 and bf16.
    n_fill = min(args.batch, 8)
    fill_times, _, _ = frozen_forward(model, n_fill, 1, device, open_clip=False)
    reference_step, cached_epoch, text_fwd_bwd, steps = epoch_pair(model, args, device)
    times = time_interleaved({"reference_step": reference_step, "cached_epoch": cached_epoch},
                             max(args.ref_steps, args.epochs), device, warmup=0 if args.quick else 1)
    t_step = median(times["reference_step"][:args.ref_steps])
    t_cached = median(times["cached_epoch"][:args.epochs])
    t_text = median(time_interleaved({"text": text_fwd_bwd}, 3, device, warmup=1)["text"])
    t_ref_epoch = t_step * steps
    ratio = t_ref_epoch / t_cached
    n_train = args.shots * args.classes
    fill = {name.replace("fastprompt_", ""): t / n_fill * n_train for name, t in fill_times.items()}
    bound = t_step / t_text
    amortised = (RECIPE_EPOCHS * t_ref_epoch) / (RECIPE_EPOCHS * t_cached + fill["fp32"])
    print(f"CoOp epoch, {args.shots} shots x {args.classes} classes = {n_train} images, batch {args.batch} "
          f"({steps} steps), 16 ctx, on {common['device']}:")
    print(f"  reference: {t_step:.2f} s per step (median of {args.ref_steps}) -> {t_ref_epoch:.1f} s per epoch")
    print(f"  cached:    {t_cached:.2f} s per epoch (median of {args.epochs}; {t_cached / steps:.3f} s per step, the "
          f"text tower's fwd+bwd alone {t_text:.3f} s)")
    print(f"  ratio {ratio:.1f}x (target {TARGET:.0f}x); bounded by reference step / text fwd+bwd = {bound:.1f}x")
    bf16 = f", {fill['bf16']:.0f} s in bf16" if "bf16" in fill else ""
    print(f"  cache fill, once: {fill['fp32']:.0f} s in fp32{bf16} ({n_train} image forwards; none when the table "
          f"is on disk); CoOp's {RECIPE_EPOCHS} epochs with the fp32 fill: {amortised:.1f}x the reference's")
    if args.quick:
        print("--quick: small shapes, the 25x target is not checked")
    elif ratio < TARGET:
        below.append(f"cached CoOp epoch {ratio:.1f}x < {TARGET:.0f}x the reference epoch: a cached step is the "
                     f"text tower's fwd+bwd ({t_text:.3f} s of {t_cached / steps:.3f} s), which bounds the ratio at "
                     f"{bound:.1f}x on this device")
    return {**common, "benchmark": "coop_epoch_feature_cache", "shots": args.shots, "classes": args.classes,
            "batch": args.batch, "steps": steps, "reference_step_s": round(t_step, 3),
            "reference_epoch_s": round(t_ref_epoch, 2), "cached_epoch_s": round(t_cached, 3),
            "text_fwd_bwd_s": round(t_text, 4), "ratio": round(ratio, 2), "bound": round(bound, 2),
            "fill_fp32_s": round(fill["fp32"], 1), "fill_bf16_s": round(fill.get("bf16", float("nan")), 1),
            "ratio_over_recipe_with_fill": round(amortised, 2), "target": TARGET}


if __name__ == "__main__":
    sys.exit(main())
