"""The compiled ``cpu`` backend of prompt_attention against the ``eager`` backend, in one run.

Both run through ``fastprompt.ops.prompt_attention`` exactly as the towers call it
(``return_lse=False``), forward + backward (gradients of q, k, v, pk, pv), timed round-robin in
one process; the script reports medians and the eager / cpu ratio, and appends rows to
``bench/results/bench_cpu_backend.csv`` (with the CPU name and thread count, the commit and the
versions). A ratio below a case's target exits with status 1 (``--no-fail``: report only).

Cases:
  text-N     text suffix layer: a 17-token prefix block (G = 1) shared by N sequences of <= 8
             causal tokens (ragged, 2..8), 8 heads, d = 64; N = 100 and 1000.   target >= 1.5x
  cocoop     CoCoOp's text layer: 4 image prefixes (G = 4) x 100 classes, same suffixes
  vit-deep   ViT-B/16 deep-prompt layer: B images x 197 tokens + 4 prompt rows (G = 1), 12 heads
  vit-cls    ViT-B/16 last layer, class token only: 1 query reading its image's 196 other tokens
             as a per-image block (G = B)
  coop-step  a whole CoOp training step (ViT-B/16 shapes, random weights, 4 images x 100
             ImageNet classes, 16 context tokens, SGD), learner built with backend="cpu" vs
             backend="eager"                                                 target >= 1.0x

    python bench/attention/bench_cpu_backend.py                 # all cases, 2 threads
    python bench/attention/bench_cpu_backend.py --cases text-100 text-1000 --repeats 15
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Dict, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)  # run as a script: ``bench`` imports from the repository root
from bench.harness.timing import median, setup_threads, time_interleaved  # noqa: E402  (first: sets OMP_WAIT_POLICY)
from bench.harness.report import add_report_arguments, common_fields, report_rows  # noqa: E402

import torch  # noqa: E402

from fastprompt.ops import jit  # noqa: E402
from fastprompt.ops import prompt_attention  # noqa: E402
from fastprompt.testing import FP32, max_rel_error  # noqa: E402

DEFAULT_CSV = os.path.join(REPO, "bench", "results", "bench_cpu_backend.csv")
BACKENDS = ("eager", "cpu")


def attention_case(n, seq_len, heads, head_dim, groups, n_prompt, causal, ragged, query_len=None, seed=0):
    """Closures running fwd+bwd on each backend, plus a description; checks agreement first."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen)
    query_len = query_len or seq_len
    q = rand(n, query_len, heads, head_dim)
    k, v = rand(n, query_len, heads, head_dim), rand(n, query_len, heads, head_dim)
    pk, pv = rand(groups, n_prompt, heads, head_dim), rand(groups, n_prompt, heads, head_dim)
    group = torch.arange(groups).repeat_interleave(-(-n // groups))[:n] if groups > 1 else None
    seqlens = torch.randint(2, query_len + 1, (n,), generator=gen) if ragged else None
    dout = rand(n, query_len, heads, head_dim)
    leaves = [t.requires_grad_() for t in (q, k, v, pk, pv)]

    def step(backend):
        def run():
            out, _ = prompt_attention(*leaves, group=group, causal=causal, seqlens=seqlens, return_lse=False,
                                      backend=backend)
            return torch.autograd.grad(out, leaves, dout)
        return run

    results = {b: step(b)() for b in BACKENDS}
    worst = max(max_rel_error(a, r) for a, r in zip(results["cpu"], results["eager"]))
    assert worst <= FP32.parity, f"cpu and eager gradients disagree: max rel err {worst:.2e}"
    return {b: step(b) for b in BACKENDS}


def coop_step_case(model_name="ViT-B-16", n_images=4, n_classes=100, n_ctx=16):
    import fastprompt
    from fastprompt.testing import random_clip
    from bench.steps.step_cases import imagenet_classnames, random_batch

    model = random_clip(model_name)
    names = imagenet_classnames(n_classes)
    images, labels = random_batch(model, n_images, n_classes)
    steps = {}
    for backend in BACKENDS:
        torch.manual_seed(0)
        learner = fastprompt.CoOpLearner.from_model(model, names, n_ctx=n_ctx, backend=backend)
        opt = torch.optim.SGD(learner.trainable_parameters(), lr=1e-3, momentum=0.9)

        def step(learner=learner, opt=opt):
            opt.zero_grad(set_to_none=True)
            loss = learner.loss(images, labels)
            loss.backward()
            opt.step()
            return loss
        steps[backend] = step
    return steps


CASES: Dict[str, Tuple[str, float, Callable[[], Dict[str, Callable]]]] = {
    "text-100": ("17-token prefix (G=1) + 100 x <=8 causal tokens, 8 heads, d=64, fwd+bwd", 1.5,
                 lambda: attention_case(100, 8, 8, 64, 1, 17, True, True)),
    "text-1000": ("17-token prefix (G=1) + 1000 x <=8 causal tokens, 8 heads, d=64, fwd+bwd", 1.5,
                  lambda: attention_case(1000, 8, 8, 64, 1, 17, True, True)),
    "cocoop": ("4 image prefixes of 5 tokens (G=4) + 400 x <=8 causal tokens, 8 heads, d=64, fwd+bwd", 0.0,
               lambda: attention_case(400, 8, 8, 64, 4, 5, True, True)),
    "vit-deep": ("ViT-B/16 layer, 8 images x 197 tokens + 4 deep prompts (G=1), 12 heads, fwd+bwd", 0.0,
                 lambda: attention_case(8, 197, 12, 64, 1, 4, False, False)),
    "vit-cls": ("ViT-B/16 last layer, class token reads its image's 196 tokens (G=B=32), 12 heads, fwd+bwd", 0.0,
                lambda: attention_case(32, 1, 12, 64, 32, 196, False, False)),
    "coop-step": ("CoOp training step, ViT-B/16 shapes, 4 images x 100 classes, 16 ctx", 1.0, coop_step_case),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    add_report_arguments(parser, DEFAULT_CSV)
    args = parser.parse_args(argv)
    setup_threads(args.threads)
    device = torch.device("cpu")
    jit.load_extension("cpu")  # a first-use build must not land inside a timing
    print(f"device: {common_fields(device)['device']}; cpu extension: {jit.extension_state('cpu')}")
    rows, below = [], []
    for name in args.cases:
        description, target, build = CASES[name]
        steps = build()
        repeats = max(3, args.repeats // 3) if name == "coop-step" else args.repeats
        times = time_interleaved(steps, repeats, device, warmup=1)
        eager_s, cpu_s = median(times["eager"]), median(times["cpu"])
        ratio = eager_s / cpu_s
        line = f"{name:10s} eager {eager_s * 1e3:9.2f} ms  cpu {cpu_s * 1e3:9.2f} ms  {ratio:5.2f}x  {description}"
        if target:
            line += f" (target >= {target}x)"
            if ratio < target:
                below.append(f"{name} {ratio:.2f}x < {target}x")
        print(line, flush=True)
        rows.append({**common_fields(device), "case": name, "description": description, "repeats": repeats,
                     "eager_ms": round(eager_s * 1e3, 3), "cpu_ms": round(cpu_s * 1e3, 3),
                     "speedup": round(ratio, 3), "target": target or ""})
    return report_rows(args.csv, rows, below, no_fail=args.no_fail)


if __name__ == "__main__":
    sys.exit(main())
