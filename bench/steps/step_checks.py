"""Two checks of a whole training step, for the GPU run (and a CPU dry run):

1. ``sync``: device syncs in a warm CoOp / CoCoOp step. On CUDA, ``torch.cuda.set_sync_debug_mode("warn")``
   around the step reports every sync; on both devices the host reads are also counted (see
   tests/host_reads.py), with the source line of each.
2. ``compile``: ``torch.compile`` (inductor) of the CoOp loss, forward and backward, against the
   uncompiled step: same loss and prompt gradients, and the time of the first (compiling) and of
   a warm compiled step.

    python bench/steps/step_checks.py --out results/                       # CUDA, ViT-B/16 random weights
    python bench/steps/step_checks.py --device cpu --model tiny --out /tmp  # a CPU dry run
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests"))
from host_reads import HostReads  # noqa: E402

import fastprompt  # noqa: E402
from fastprompt.testing import random_clip, tiny_clip  # noqa: E402


def _model(name: str, device: torch.device):
    model = tiny_clip(0) if name == "tiny" else random_clip(name)
    return model.to(device)


def _batch(model, n_images: int, n_classes: int, device: torch.device):
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(n_images, 3, size, size, generator=gen).to(device)
    labels = torch.randint(0, n_classes, (n_images,), generator=gen).to(device)
    return images, labels


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sync_check(model, device, n_images: int, n_classes: int, backend: str):
    names = [f"class {i}" for i in range(n_classes)]
    results = {}
    for method, cls in (("coop", fastprompt.CoOpLearner), ("cocoop", fastprompt.CoCoOpLearner)):
        learner = cls.from_model(model, names, backend=backend).to(device)
        images, labels = _batch(model, n_images, n_classes, device)
        learner.loss(images, labels).backward()  # cold: plans built, kernels compiled
        _sync(device)
        syncs = []
        with warnings.catch_warnings(record=True) as caught, HostReads() as reads:
            warnings.simplefilter("always")
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("warn")
            try:
                learner.loss(images, labels).backward()
            finally:
                if device.type == "cuda":
                    torch.cuda.set_sync_debug_mode(0)
            syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
        results[method] = {"host_reads": reads.total,
                           "host_read_sites": {f"{kind} at {where}": n for (kind, where), n in reads.where.items()},
                           "cuda_syncs": len(syncs) if device.type == "cuda" else "n/a (no CUDA)",
                           "cuda_sync_messages": sorted(set(syncs))[:20]}
        print(f"  sync {method}: {reads.total} host reads {dict(reads.where)}; "
              f"CUDA syncs: {results[method]['cuda_syncs']}", flush=True)
    return results


def compile_check(model, device, n_images: int, n_classes: int, backend: str):
    names = [f"class {i}" for i in range(n_classes)]
    learner = fastprompt.CoOpLearner.from_model(model, names, backend=backend).to(device)
    images, labels = _batch(model, n_images, n_classes, device)
    params = learner.trainable_parameters()

    def step(fn):
        loss = fn(images, labels)
        return loss.detach(), [g.detach() for g in torch.autograd.grad(loss, params)]

    ref_loss, ref_grads = step(learner.loss)
    compiled = torch.compile(learner.loss)
    start = time.perf_counter()
    loss, grads = step(compiled)
    _sync(device)
    first = time.perf_counter() - start
    start = time.perf_counter()
    step(compiled)
    _sync(device)
    warm = time.perf_counter() - start
    start = time.perf_counter()
    step(learner.loss)
    _sync(device)
    eager = time.perf_counter() - start
    rel = lambda a, b: float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))
    errors = [rel(loss, ref_loss)] + [rel(g, r) for g, r in zip(grads, ref_grads)]
    # Inductor fuses and reorders float32 arithmetic around the op: agreement to 1e-4 relative
    # (the op itself is exact to ~1e-6; the rest of the step is the compiler's).
    ok = max(errors) <= 1e-4
    result = {"first_compiled_step_s": round(first, 2), "warm_compiled_step_ms": round(warm * 1e3, 2),
              "uncompiled_step_ms": round(eager * 1e3, 2), "worst_rel_error": max(errors), "ok": ok}
    print(f"  compile: first step {first:.1f} s, warm {warm * 1e3:.1f} ms (uncompiled {eager * 1e3:.1f} ms), "
          f"worst rel error {max(errors):.1e} {'ok' if ok else 'MISMATCH'}", flush=True)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="ViT-B-16", help="an open_clip architecture (random weights) or 'tiny'")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--checks", nargs="+", default=["sync", "compile"], choices=["sync", "compile"])
    parser.add_argument("--out", help="folder to write step_checks.json into")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    model = _model(args.model, device)
    results = {"device": str(device), "model": args.model, "backend": args.backend}
    if "sync" in args.checks:
        results["sync"] = sync_check(model, device, args.images, args.classes, args.backend)
    if "compile" in args.checks:
        results["compile"] = compile_check(model, device, args.images, args.classes, args.backend)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "step_checks.json"), "w") as f:
            json.dump(results, f, indent=1, default=str)
    return 0 if results.get("compile", {}).get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
