"""One training step of fastprompt vs the literal original code path, same process, same weights.

Step = forward + backward + SGD step over the prompt parameters, on a random-weight open_clip
model (default ViT-B-16) with ImageNet class names. Also times the text tower alone (forward +
backward over the class prompts). Prints medians and ratios, appends CSV rows, and with
``--memory`` measures each side's peak memory of a step (after a warm-up step) in a fresh
subprocess: the peak RSS above the step's starting RSS on CPU, ``max_memory_allocated`` above
the starting allocation on CUDA.

    OMP_WAIT_POLICY=PASSIVE python bench/bench_step.py                 # all cases, CPU, 2 threads
    python bench/bench_step.py --cases coop --repeats 5 --memory

Targets on the 2-core CPU (issue #2): CoOp 4 img x 100 cls, 16 ctx >= 7x; CoCoOp 2 img x 100 cls,
4 ctx >= 10x and memory <= 1/5; text tower alone >= 8x.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (PeakRSS, append_csv, common_fields, median, setup_threads,  # noqa: E402
                    time_interleaved)

import torch  # noqa: E402

CASES = {
    # name: (method, images, classes, learner kwargs, what is timed)
    "coop": ("coop", 4, 100, dict(n_ctx=16), "step"),
    "cocoop": ("cocoop", 2, 100, dict(n_ctx=4, ctx_init="a photo of a"), "step"),
    "text": ("coop", 0, 100, dict(n_ctx=16), "text"),
}
TARGETS = {"coop": 7.0, "cocoop": 10.0, "text": 8.0}
MEMORY_TARGETS = {"cocoop": 5.0}


def build(case: str, model_name: str, device: torch.device, seed: int = 0):
    """(fast learner, reference model, images, labels) for a case, sharing one CLIP and one init."""
    import fastprompt
    from fastprompt.reference import ReferenceCoCoOp, ReferenceCoOp
    from fastprompt.testing import random_clip
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    method, n_images, n_classes, cfg, _ = CASES[case]
    model = random_clip(model_name, seed=seed).to(device)
    names = list(IMAGENET_CLASSNAMES[:n_classes])
    torch.manual_seed(seed)
    if method == "coop":
        reference = ReferenceCoOp(model, names, **cfg).to(device)
        learner = fastprompt.CoOpLearner.from_model(model, names, **cfg)
    else:
        reference = ReferenceCoCoOp(model, names, **cfg).to(device)
        learner = fastprompt.CoCoOpLearner.from_model(model, names, **cfg)
    learner.load_original_state_dict(reference.prompt_learner.state_dict())
    learner.to(device)
    size = model.visual.image_size[0]
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(max(n_images, 1), 3, size, size, generator=gen).to(device)
    labels = torch.randint(0, n_classes, (max(n_images, 1),), generator=gen).to(device)
    return learner, reference, images, labels


def step_fns(case, learner, reference, images, labels):
    """Closures running one timed unit for the fast and the reference side."""
    timed = CASES[case][4]
    fast_params = learner.trainable_parameters()
    ref_params = [p for p in reference.prompt_learner.parameters() if p.requires_grad]
    fast_opt = torch.optim.SGD(fast_params, lr=1e-3, momentum=0.9, weight_decay=5e-4)
    ref_opt = torch.optim.SGD(ref_params, lr=1e-3, momentum=0.9, weight_decay=5e-4)

    if timed == "step":
        def fast():
            fast_opt.zero_grad(set_to_none=True)
            learner.loss(images, labels).backward()
            fast_opt.step()

        def ref():
            ref_opt.zero_grad(set_to_none=True)
            reference.loss(images, labels).backward()
            ref_opt.step()
    else:  # the text tower alone: every class prompt forward + backward into the context
        def fast():
            fast_opt.zero_grad(set_to_none=True)
            learner.text_features().square().sum().backward()

        def ref():
            ref_opt.zero_grad(set_to_none=True)
            prompts = reference.prompt_learner()
            reference.text_encoder(prompts, reference.tokenized_prompts).square().sum().backward()
    return {"fastprompt": fast, "reference": ref}


def measure_memory(case: str, side: str, model_name: str, device: str, threads: int) -> int:
    """Peak memory of one step of ``side`` in a fresh process (bytes)."""
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--_memory-child", case, side,
                          "--model", model_name, "--device", device, "--threads", str(threads)],
                         check=True, capture_output=True, text=True)
    return int(json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"])


def memory_child(case: str, side: str, model_name: str, device: torch.device) -> None:
    learner, reference, images, labels = build(case, model_name, device)
    fns = step_fns(case, learner, reference, images, labels)
    fns[side]()  # warm-up: optimizer state and allocator caches exist before measuring
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fns[side]()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        with PeakRSS() as measured:
            fns[side]()
        peak = measured.peak_bytes
    print(json.dumps({"peak_bytes": peak}))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory", action="store_true", help="also measure peak step memory (subprocesses)")
    parser.add_argument("--csv", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                      "bench_step.csv"))
    parser.add_argument("--_memory-child", nargs=2, metavar=("CASE", "SIDE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    setup_threads(args.threads)
    device = torch.device(args.device)
    if args._memory_child:
        memory_child(args._memory_child[0], args._memory_child[1], args.model, device)
        return 0

    rows, failed = [], []
    for case in args.cases:
        method, n_images, n_classes, cfg, timed = CASES[case]
        learner, reference, images, labels = build(case, args.model, device)
        times = time_interleaved(step_fns(case, learner, reference, images, labels), args.repeats, device)
        fast_s, ref_s = median(times["fastprompt"]), median(times["reference"])
        ratio = ref_s / fast_s
        row = {**common_fields(device), "case": case, "method": method, "timed": timed, "model": args.model,
               "images": n_images, "classes": n_classes, "n_ctx": learner.template.n_ctx,
               "repeats": args.repeats, "fastprompt_s": round(fast_s, 4), "reference_s": round(ref_s, 4),
               "speedup": round(ratio, 2), "fastprompt_peak_mb": "", "reference_peak_mb": "", "memory_ratio": ""}
        line = (f"{case:7s} {timed:4s} {method:6s} {n_images} img x {n_classes} cls, {learner.template.n_ctx} ctx: "
                f"fastprompt {fast_s:.3f} s, reference {ref_s:.3f} s, speed-up {ratio:.1f}x "
                f"(target >= {TARGETS[case]}x)")
        if ratio < TARGETS[case]:
            failed.append(f"{case} speed-up {ratio:.1f}x < {TARGETS[case]}x")
        del learner, reference
        if args.memory:
            fast_mem = measure_memory(case, "fastprompt", args.model, args.device, args.threads)
            ref_mem = measure_memory(case, "reference", args.model, args.device, args.threads)
            mem_ratio = ref_mem / max(fast_mem, 1)
            row.update(fastprompt_peak_mb=round(fast_mem / 2**20, 1), reference_peak_mb=round(ref_mem / 2**20, 1),
                       memory_ratio=round(mem_ratio, 2))
            line += (f"; peak memory fastprompt {fast_mem / 2**20:.0f} MiB, reference {ref_mem / 2**20:.0f} MiB "
                     f"({mem_ratio:.1f}x less)")
            if case in MEMORY_TARGETS and mem_ratio < MEMORY_TARGETS[case]:
                failed.append(f"{case} memory ratio {mem_ratio:.1f}x < {MEMORY_TARGETS[case]}x")
        print(line, flush=True)
        rows.append(row)
    append_csv(args.csv, rows)
    print(f"appended {len(rows)} rows to {args.csv}")
    if failed:
        print("below target: " + "; ".join(failed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
