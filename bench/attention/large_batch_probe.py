"""Large-batch probe: the text-suffix attention of ImageNet-21K-scale prompt learning in one call.

21,000 classes x 77 tokens x 8 heads x 64 (bf16, causal, ragged lengths, a shared 17-row prefix)
is where offsets pass int32 ranges in intermediate products and where a per-layer temporary of the
size of q costs gigabytes. Every backend asked for runs forward and backward on the whole batch
(time and peak memory recorded); its outputs and q/k/v gradients are compared, on a sample of
sequences, with the eager backend run on each of those sequences alone; its prefix gradients
(summed over all sequences) with eager on the whole batch, where memory allows.
Accuracy follows the suite's low-precision rule: error vs the float32 result within 2x (forward)
/ 3x (gradients) of eager's own low-precision error.

    python bench/attention/large_batch_probe.py --out results/                      # GPU: triton and cuda
    python bench/attention/large_batch_probe.py --device cpu --n 16 --backends cpu  # a CPU dry run
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from fastprompt.ops import backend_status, prompt_attention


def _error(actual: torch.Tensor, reference: torch.Tensor) -> float:
    finite = torch.isfinite(reference)
    diff = (actual.double() - reference.double())[finite]
    return float(diff.abs().max()) if diff.numel() else 0.0


def _run(backend, q, k, v, pk, pv, seqlens, dout):
    leaves = [t.detach().requires_grad_() for t in (q, k, v, pk, pv)]
    out, _ = prompt_attention(*leaves[:3], leaves[3], leaves[4], causal=True, seqlens=seqlens, return_lse=False,
                              backend=backend)
    grads = torch.autograd.grad(out, leaves, dout)
    return out.detach(), [g.detach() for g in grads]


def probe(n: int, seq_len: int, heads: int, head_dim: int, n_prompt: int, device: torch.device,
          dtype: torch.dtype, backends, samples: int = 8):
    gen = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)
    q, k, v, dout = (rand(n, seq_len, heads, head_dim) for _ in range(4))
    pk, pv = rand(1, n_prompt, heads, head_dim), rand(1, n_prompt, heads, head_dim)
    seqlens = torch.randint(2, seq_len + 1, (n,), generator=gen).to(device)
    picks = sorted({0, n - 1, *torch.randint(0, n, (samples - 2,), generator=gen).tolist()})
    results = {"shape": dict(n=n, seq_len=seq_len, heads=heads, head_dim=head_dim, n_prompt=n_prompt,
                             dtype=str(dtype).replace("torch.", ""), device=str(device)), "backends": {}}

    # References, one sequence at a time: eager in float32 (the truth) and in the input dtype.
    refs = []
    for i in picks:
        one = lambda t: t[i:i + 1]
        exact = _run("eager", *(one(t).float() for t in (q, k, v)), pk.float(), pv.float(), one(seqlens),
                     one(dout).float())
        low = _run("eager", one(q), one(k), one(v), pk, pv, one(seqlens), one(dout))
        refs.append((i, exact, low))
    # Prefix gradients sum over every sequence: eager on the whole batch, in float32 and in the input
    # dtype, if it fits.
    full_prefix = None
    try:
        exact = _run("eager", q.float(), k.float(), v.float(), pk.float(), pv.float(), seqlens, dout.float())[1][3:]
        low = _run("eager", q, k, v, pk, pv, seqlens, dout)[1][3:]
        full_prefix = list(zip(exact, low))
    except torch.OutOfMemoryError:
        results["prefix_reference"] = "eager on the whole batch ran out of memory: prefix gradients not compared"
    if device.type == "cuda":
        torch.cuda.empty_cache()

    for backend in backends:
        status = backend_status(device).get(backend, "not registered")
        if status != "available":
            results["backends"][backend] = {"skipped": status}
            print(f"  {backend}: skipped ({status})", flush=True)
            continue
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() if device.type == "cuda" else 0
        _run(backend, q, k, v, pk, pv, seqlens, dout)  # warm-up (compilation, JIT load)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        out, grads = _run(backend, q, k, v, pk, pv, seqlens, dout)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 30 if device.type == "cuda" else float("nan")
        worst = {}
        ok = True
        for i, exact, low in refs:
            for name, mine, e, lo, factor in [("out", out[i:i + 1], exact[0], low[0], 2.0)] + [
                    (g, grads[j][i:i + 1], exact[1][j], low[1][j], 3.0) for j, g in enumerate(("dq", "dk", "dv"))]:
                err, eager_err = _error(mine, e), _error(lo, e)
                ratio = err / max(eager_err, 1e-12)
                worst[name] = max(worst.get(name, 0.0), ratio)
                ok &= err <= factor * eager_err + 1e-6
        if full_prefix is not None:
            for name, mine, (e, lo) in zip(("dpk", "dpv"), grads[3:], full_prefix):
                err, eager_err = _error(mine, e), _error(lo, e)
                worst[name] = err / max(eager_err, 1e-12)
                ok &= err <= 3.0 * eager_err + 1e-6
        results["backends"][backend] = {"seconds_fwd_bwd": round(seconds, 4), "peak_gib_above_inputs": round(peak, 2),
                                        "worst_error_vs_eager_ratio": {k: round(v, 3) for k, v in worst.items()},
                                        "ok": bool(ok)}
        print(f"  {backend}: fwd+bwd {seconds * 1e3:.1f} ms, peak {peak:.2f} GiB above inputs, "
              f"{'ok' if ok else 'MISMATCH'} {results['backends'][backend]['worst_error_vs_eager_ratio']}", flush=True)
        del out, grads
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n", type=int, default=21000)
    parser.add_argument("--seq-len", type=int, default=77)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=17)
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    parser.add_argument("--backends", nargs="+", default=["triton", "cuda"])
    parser.add_argument("--out", help="folder to write large_batch_probe.json into")
    args = parser.parse_args(argv)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    results = probe(args.n, args.seq_len, args.heads, args.head_dim, args.prompt_len, torch.device(args.device),
                    dtype, args.backends)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "large_batch_probe.json"), "w") as f:
            json.dump(results, f, indent=1)
    ran = [r for r in results["backends"].values() if "ok" in r]
    return 0 if ran and all(r["ok"] for r in ran) else 1


if __name__ == "__main__":
    sys.exit(main())
