"""Prompt-concatenated attention: every provider on the shapes that matter, against the memory floor.

Providers:
  eager   the baseline a user would write: the prompt block is copied in front of every
          sequence's keys (``torch.cat``) and ``F.scaled_dot_product_attention`` runs with a mask.
  <name>  every other backend registered with ``fastprompt.ops`` that can run on the device
          (``triton``; compiled ``cuda``/``cpu`` backends appear here once registered). They are
          called through the backend function on pre-validated arguments, i.e. without the
          op's argument checks (which read ``group``/``seqlens`` on the host).
  flex    FlexAttention on one flattened batch: queries are all N*L own tokens, keys/values are
          the G*P prompt rows followed by the N*L own rows, and a block mask lets each query see
          its group's prompt rows plus its own (causal, length-masked) tokens.

Shapes (``--small`` shrinks each to a few sequences and two heads, for Triton's interpreter):
  vit     ViT-B/16 vision layer: B = 32 images x 197 tokens, 4 deep prompts (G = 1), 12 heads
  text    text suffix layer: 1000 classes x 5 tokens (ragged), shared 17-token prefix, 8 heads, causal
  cocoop  CoCoOp: 8 images (groups) x 1000 classes x 5 tokens, 5-token prefix per image, 8 heads, causal
  vit_plain  a frozen ViT-B/16 layer without prompts: B = 128 images x 197 tokens, 12 heads (no prompt
          block and no lse: every backend hands it to SDPA; --shapes vit_plain, not in the default set)

Modes: ``fwd`` and ``fwd+bwd`` (gradients of q, k, v, pk, pv). Before timing, every provider's
output (and gradients) must agree with the eager provider. Reported per provider: median time,
achieved TB/s (the op's minimal HBM traffic / time) and TFLOP/s (useful FLOPs / time), both also
as a fraction of the device's measured peaks (a large copy and a large matmul), ``x_floor`` =
time / (minimal traffic / measured bandwidth), and the speed-up over eager. Rows are appended to
``bench/results/bench_attention.csv`` with the device name.

On a machine without a GPU the kernels can only run in Triton's interpreter: the script then
checks agreement on the small shapes in the interpreter, times only the providers that run
natively on the CPU, and says that Triton timings need a GPU.

    python bench/bench_attention.py                       # GPU: full shapes, bf16
    python bench/bench_attention.py --shapes text cocoop --modes fwd+bwd --repeats 50
    python bench/bench_attention.py --small --no-timing   # agreement only (CPU: interpreter)
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import common_fields, median, report_rows, setup_threads, synchronize, time_interleaved  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# Without a GPU, Triton kernels run only in the interpreter, which must be on before
# fastprompt.kernels is first imported (the ops import it lazily, on first use).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from fastprompt.ops import registered_backends, resolve_backend  # noqa: E402
from fastprompt.ops.validation import AttentionArgs, check_prompt_attention_args  # noqa: E402
from fastprompt.testing import max_rel_error  # noqa: E402

DEFAULT_CSV = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bench_attention.csv")
MODES = ("fwd", "fwd+bwd")


# ---- shapes ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shape:
    name: str
    description: str
    n: int            # sequences
    seq_len: int      # own tokens per sequence (padded length L)
    heads: int
    head_dim: int
    groups: int       # prompt blocks G
    n_prompt: int     # prompt rows per block P
    causal: bool
    ragged: bool      # seqlens in [2, L] (mean ~4.2 for L = 5, like ImageNet class names)


SHAPES = {
    "vit": Shape("vit", "ViT-B/16 vision layer, 32 x 197 tokens + 4 deep prompts", 32, 197, 12, 64, 1, 4,
                 False, False),
    "text": Shape("text", "text suffix layer, 1000 classes x 5 tokens, shared 17-token prefix", 1000, 5, 8, 64,
                  1, 17, True, True),
    "cocoop": Shape("cocoop", "CoCoOp, 8 image prefixes (5 tokens) x 1000 classes x 5 tokens", 8000, 5, 8, 64,
                    8, 5, True, True),
    "vit_plain": Shape("vit_plain", "ViT-B/16 plain layer, 128 x 197 tokens, no prompt", 128, 197, 12, 64, 1, 0,
                       False, False),
}
DEFAULT_SHAPES = ["vit", "text", "cocoop"]
SMALL = {
    "vit": Shape("vit", "ViT vision layer (small): 2 x 17 tokens + 4 prompts", 2, 17, 2, 64, 1, 4, False, False),
    "text": Shape("text", "text suffix layer (small): 8 classes x 5 tokens, 17-token prefix", 8, 5, 2, 64, 1, 17,
                  True, True),
    "cocoop": Shape("cocoop", "CoCoOp (small): 2 prefixes x 4 classes x 5 tokens", 8, 5, 2, 64, 2, 5, True, True),
    "vit_plain": Shape("vit_plain", "ViT plain layer (small): 2 x 17 tokens, no prompt", 2, 17, 2, 64, 1, 0,
                       False, False),
}


@dataclass
class Case:
    shape: Shape
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    pk: torch.Tensor
    pv: torch.Tensor
    group: Optional[torch.Tensor]   # None when G = 1
    seqlens: Optional[torch.Tensor]
    dout: torch.Tensor
    scale: float

    def leaves(self, grad: bool):
        return [t.detach().requires_grad_(grad) for t in (self.q, self.k, self.v, self.pk, self.pv)]


def make_case(shape: Shape, device: torch.device, dtype: torch.dtype, seed: int = 0) -> Case:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    own = (shape.n, shape.seq_len, shape.heads, shape.head_dim)
    prompt = (shape.groups, shape.n_prompt, shape.heads, shape.head_dim)
    rand = lambda size: torch.randn(size, generator=gen).to(device=device, dtype=dtype)
    group = None
    if shape.groups > 1:  # sequences of one image are contiguous, as a TextPlan.repeat lays them out
        group = torch.arange(shape.groups).repeat_interleave(-(-shape.n // shape.groups))[:shape.n].to(device)
    seqlens = None
    if shape.ragged:
        seqlens = torch.randint(2, shape.seq_len + 1, (shape.n,), generator=gen).to(device)
    return Case(shape, rand(own), rand(own), rand(own), rand(prompt), rand(prompt), group, seqlens, rand(own),
                shape.head_dim ** -0.5)


# ---- floors ------------------------------------------------------------------------------------

def useful_flops(case: Case, mode: str) -> float:
    """Score and value matmuls over visible keys only (2 * 2 * d per query-key pair); bwd = 2.5x fwd."""
    s = case.shape
    lengths = case.seqlens.double().cpu() if case.seqlens is not None else torch.full((s.n,), float(s.seq_len))
    rows = torch.arange(s.seq_len, dtype=torch.float64)
    valid = rows[None, :] < lengths[:, None]
    own = torch.minimum(rows[None, :] + 1, lengths[:, None]) if s.causal else lengths[:, None].expand_as(valid)
    pairs = float(((own + s.n_prompt) * valid).sum())
    fwd = 4.0 * s.head_dim * s.heads * pairs
    return fwd if mode == "fwd" else 3.5 * fwd


def floor_bytes(case: Case, mode: str) -> float:
    """Minimal HBM traffic of the op: every input read once, every output written once.

    fwd reads q, k, v and the G prompt blocks (never a per-sequence copy) and writes out and the
    fp32 lse; bwd reads q, k, v, out, dout, lse and the prompt blocks and writes the five grads.
    """
    s = case.shape
    item = case.q.element_size()
    own = s.n * s.seq_len * s.heads * s.head_dim * item
    prompt = s.groups * s.n_prompt * s.heads * s.head_dim * item
    lse = s.n * s.heads * s.seq_len * 4
    fwd = 4 * own + 2 * prompt + lse
    return fwd if mode == "fwd" else fwd + 8 * own + 4 * prompt + lse


# ---- providers ---------------------------------------------------------------------------------

Provider = Callable[[List[torch.Tensor]], torch.Tensor]  # leaves [q, k, v, pk, pv] -> out


def eager_provider(case: Case) -> Provider:
    """cat + SDPA: the prompt block materialised in front of every sequence's keys."""
    s = case.shape
    device = case.q.device
    pos = torch.arange(s.seq_len, device=device)
    mask = None
    row_valid = None
    if s.causal or case.seqlens is not None:
        own = torch.ones(s.n, s.seq_len, s.seq_len, dtype=torch.bool, device=device)
        if s.causal:
            own = own & (pos[None, :] <= pos[:, None])[None]
        if case.seqlens is not None:
            own = own & (pos[None, None, :] < case.seqlens[:, None, None])
            row_valid = (pos[None, :] < case.seqlens[:, None])[:, :, None, None]
        prompt = torch.ones(s.n, s.seq_len, s.n_prompt, dtype=torch.bool, device=device)
        mask = torch.cat([prompt, own], dim=-1)[:, None]  # [N, 1, L, P + L]
        if row_valid is not None:  # rows past the length see something (no NaN) and are zeroed after
            mask = mask | ~row_valid.reshape(s.n, 1, s.seq_len, 1)

    def run(leaves):
        q, k, v, pk, pv = leaves
        if case.group is None:
            pk_n, pv_n = pk.expand(s.n, -1, -1, -1), pv.expand(s.n, -1, -1, -1)
        else:
            pk_n, pv_n = pk[case.group], pv[case.group]
        keys, values = torch.cat([pk_n, k], 1), torch.cat([pv_n, v], 1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2),
                                             attn_mask=mask, scale=case.scale).transpose(1, 2)
        return out if row_valid is None else torch.where(row_valid, out, 0.0)

    return run


def backend_provider(name: str, case: Case) -> Provider:
    backend = resolve_backend(name, case.q.device)

    def run(leaves):
        q, k, v, pk, pv = leaves
        if case.shape.n_prompt == 0:  # a plain layer: the towers pass no prompt block at all
            pk = pv = None
        args = AttentionArgs(q, k, v, pk, pv, case.group, case.shape.causal, case.seqlens, case.scale, False)
        return backend.fn(args)[0]

    # The op's own checks, once (they read group/seqlens on the host, which a timed loop must not).
    check_prompt_attention_args(case.q, case.k, case.v, case.pk, case.pv, case.group, case.shape.causal,
                                case.seqlens, case.scale, False)
    return run


def flex_provider(case: Case, compiled: bool) -> Provider:
    """FlexAttention over the flattened batch with a prompt-or-own-causal block mask."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    s = case.shape
    device = case.q.device
    n_prompt_rows = s.groups * s.n_prompt
    group = case.group if case.group is not None else torch.zeros(s.n, dtype=torch.long, device=device)
    lengths = case.seqlens if case.seqlens is not None else torch.full((s.n,), s.seq_len, device=device)
    block_p = max(s.n_prompt, 1)

    def mask_mod(b, h, q_idx, kv_idx):
        seq, pos = q_idx // s.seq_len, q_idx % s.seq_len
        is_prompt = kv_idx < n_prompt_rows
        prompt_ok = is_prompt & (kv_idx // block_p == group[seq])
        own = kv_idx - n_prompt_rows
        own_ok = (~is_prompt) & (own // s.seq_len == seq) & (own % s.seq_len < lengths[seq])
        if s.causal:
            own_ok = own_ok & (own % s.seq_len <= pos)
        return prompt_ok | own_ok

    total_q = s.n * s.seq_len
    block_mask = create_block_mask(mask_mod, 1, None, total_q, n_prompt_rows + total_q, device=device,
                                   _compile=device.type == "cuda")
    if compiled:
        attend = torch.compile(flex_attention, dynamic=False)
    else:  # the unfused reference implementation: fine for the agreement check on small shapes
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        attend = flex_attention
    pos = torch.arange(s.seq_len, device=device)
    row_valid = (pos[None, :] < lengths[:, None])[:, :, None, None]

    def run(leaves):
        q, k, v, pk, pv = leaves
        heads, d = s.heads, s.head_dim
        qf = q.reshape(1, total_q, heads, d).transpose(1, 2)
        kf = torch.cat([pk.reshape(n_prompt_rows, heads, d), k.reshape(total_q, heads, d)])[None].transpose(1, 2)
        vf = torch.cat([pv.reshape(n_prompt_rows, heads, d), v.reshape(total_q, heads, d)])[None].transpose(1, 2)
        out = attend(qf, kf, vf, block_mask=block_mask, scale=case.scale)
        out = out.transpose(1, 2).reshape(s.n, s.seq_len, heads, d)
        return torch.where(row_valid, out, 0.0)

    return run


def flex_support(device: torch.device, mode: str) -> Optional[str]:
    """None when FlexAttention can run ``mode`` on ``device``, else why not."""
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return f"this torch ({torch.__version__}) has no FlexAttention"
    if device.type not in ("cuda", "cpu"):
        return f"no FlexAttention on {device.type}"
    if device.type == "cpu" and mode != "fwd":
        return "FlexAttention has no backward on CPU"
    return None


def make_step(provider: Provider, case: Case, mode: str) -> Callable[[], object]:
    leaves = case.leaves(mode != "fwd")
    if mode == "fwd":
        def step():
            with torch.no_grad():
                return provider(leaves)
    else:
        def step():
            out = provider(leaves)
            return _grads(out, leaves, case.dout)
    return step


def _grads(out, leaves, dout):
    """Gradients of every leaf (zeros for the prompt block of a plain layer, which no backend reads)."""
    return torch.autograd.grad(out, leaves, dout, allow_unused=True, materialize_grads=True)


def outputs(provider: Provider, case: Case, mode: str) -> List[torch.Tensor]:
    """out (and the five gradients for fwd+bwd), detached, for the agreement check."""
    leaves = case.leaves(mode != "fwd")
    out = provider(leaves)
    if mode == "fwd":
        return [out.detach()]
    return [out.detach()] + [g.detach() for g in _grads(out, leaves, case.dout)]


# ---- peaks and timing --------------------------------------------------------------------------

def measure_peaks(device: torch.device, dtype: torch.dtype) -> Dict[str, float]:
    """Measured copy bandwidth (bytes/s) and matmul throughput (FLOP/s) of this device."""
    if device.type == "cuda":
        n_copy, n_mm, reps = 1 << 28, 8192, 10
    else:
        n_copy, n_mm, reps = 1 << 24, 1024, 3
    src = torch.empty(n_copy, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    a = torch.randn(n_mm, n_mm, device=device).to(dtype)
    b = torch.randn(n_mm, n_mm, device=device).to(dtype)
    times = time_device({"copy": lambda: dst.copy_(src), "mm": lambda: a @ b}, device, reps)
    return {"bytes_per_s": 2 * src.numel() * 4 / median(times["copy"]),
            "flops_per_s": 2.0 * n_mm ** 3 / median(times["mm"])}


def time_device(fns: Dict[str, Callable[[], object]], device: torch.device, repeats: int) -> Dict[str, List[float]]:
    """Seconds per call, ``repeats`` samples each, round-robin.

    On CUDA each sample is a CUDA-event-timed loop long enough (>= ~1 ms) that launch gaps and
    host timing do not dominate microsecond kernels; on CPU one call per sample.
    """
    if device.type != "cuda":
        return time_interleaved(fns, repeats, device)
    inner = {}
    for name, fn in fns.items():  # warm-up (compilation, autotuning) and loop length
        fn()
        synchronize(device)
        start = time.perf_counter()
        for _ in range(3):
            fn()
        synchronize(device)
        per_call = (time.perf_counter() - start) / 3
        inner[name] = int(min(1000, max(1, 1e-3 / max(per_call, 1e-7))))
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(inner[name]):
                fn()
            end.record()
            end.synchronize()
            times[name].append(begin.elapsed_time(end) / 1e3 / inner[name])
    return times


# ---- driver ------------------------------------------------------------------------------------

def default_providers() -> List[str]:
    return ["eager"] + [b for b in registered_backends() if b != "eager"] + ["flex"]


def providers_for(case: Case, mode: str, names: List[str], compile_flex: bool):
    """``({name: provider}, {name: reason skipped})`` for this case and mode."""
    device = case.q.device
    chosen, skipped = {}, {}
    for name in names:
        if name == "eager":
            chosen[name] = eager_provider(case)
        elif name == "flex":
            reason = flex_support(device, mode)
            if reason is None:
                chosen[name] = flex_provider(case, compiled=compile_flex or device.type == "cuda")
            else:
                skipped[name] = reason
        elif name in registered_backends():
            try:
                chosen[name] = backend_provider(name, case)
            except (RuntimeError, ValueError) as e:  # not available here, or unsupported input
                skipped[name] = str(e)
        else:
            skipped[name] = "not a registered backend"
    return chosen, skipped


def reference_only(name: str, device: torch.device, compile_flex: bool) -> Optional[str]:
    """Why ``name`` is only checked (on small shapes) and never timed here, or None."""
    if name == "triton":
        if device.type != "cuda":
            return "Triton interpreter"
        import fastprompt.kernels as kernels
        return "Triton interpreter" if kernels.INTERPRET else None
    if name == "flex" and device.type != "cuda" and not compile_flex:
        return "uncompiled FlexAttention (a reference loop; --compile-flex to time it)"
    return None


def check_agreement(case: Case, mode: str, providers: Dict[str, Provider]) -> List[str]:
    """Every provider against eager (out and, for fwd+bwd, the five gradients); returns failures."""
    tol = 1e-4 if case.q.dtype == torch.float32 else 3e-2
    ref = outputs(providers["eager"], case, mode)
    names = ["out", "dq", "dk", "dv", "dpk", "dpv"]
    failures = []
    for name, provider in providers.items():
        if name == "eager":
            continue
        got = outputs(provider, case, mode)
        errors = {n: max_rel_error(g.float(), r.float()) for n, g, r in zip(names, got, ref)}
        worst = max(errors, key=errors.get)
        status = "ok" if errors[worst] <= tol else "MISMATCH"
        print(f"  check {case.shape.name:6s} {mode:7s} {name:7s} vs eager: worst {worst} rel err "
              f"{errors[worst]:.1e} (tol {tol:.0e}) {status}", flush=True)
        if status != "ok":
            failures.append(f"{case.shape.name}/{mode}/{name}: {worst} rel err {errors[worst]:.2e}")
    return failures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, choices=list(SHAPES))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--providers", nargs="+", help="default: eager, every registered backend, flex")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--small", action="store_true", help="small shapes (what the interpreter can run)")
    parser.add_argument("--repeats", type=int, help="timing samples per provider (default 30 CUDA, 5 CPU)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--no-timing", action="store_true", help="agreement check only")
    parser.add_argument("--compile-flex", action="store_true", help="torch.compile flex on CPU (slow first call)")
    parser.add_argument("--csv", default=DEFAULT_CSV)
    args = parser.parse_args(argv)

    setup_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    repeats = args.repeats or (30 if device.type == "cuda" else 5)
    shapes = SMALL if args.small else SHAPES
    print(f"device: {common_fields(device)['device']}, dtype {dtype}, registered backends {registered_backends()}")

    names = args.providers or default_providers()
    if "eager" not in names:
        names = ["eager"] + names  # the baseline every provider is checked and compared against
    slow = {n: r for n in names if (r := reference_only(n, device, args.compile_flex))}
    native = [n for n in names if n not in slow]

    # 1. Agreement. Providers that only run as references here can afford only the small shapes.
    failures = []
    for shape_name in args.shapes:
        for mode in args.modes:
            if slow and not args.small:
                small_case = make_case(SMALL[shape_name], device, dtype)
                small_providers, skipped = providers_for(small_case, mode, ["eager"] + list(slow),
                                                         args.compile_flex)
                for name in small_providers:
                    if name in slow:
                        print(f"  ({name}: {slow[name]}, checked on the small {shape_name} shape)")
                for name, reason in skipped.items():
                    print(f"  skip   {shape_name:6s} {mode:7s} {name:7s}: {reason}")
                failures += check_agreement(small_case, mode, small_providers)
                run_names = native
            else:
                run_names = names
            case = make_case(shapes[shape_name], device, dtype)
            providers, skipped = providers_for(case, mode, run_names, args.compile_flex)
            for name, reason in skipped.items():
                print(f"  skip   {shape_name:6s} {mode:7s} {name:7s}: {reason}")
            failures += check_agreement(case, mode, providers)
    if failures:
        print("providers disagree, not timing: " + "; ".join(failures))
        return 1
    print("all providers agree")
    if args.no_timing:
        if slow:
            print(f"not timed: {', '.join(f'{n} ({r})' for n, r in slow.items())}; GPU timings need a GPU")
        return 0

    # 2. Timing (native providers only).
    peaks = measure_peaks(device, dtype)
    print(f"measured peaks: copy {peaks['bytes_per_s'] / 1e12:.3f} TB/s, matmul {peaks['flops_per_s'] / 1e12:.2f} "
          f"TFLOP/s ({dtype})")
    rows = []
    for shape_name in args.shapes:
        for mode in args.modes:
            case = make_case(shapes[shape_name], device, dtype)
            providers, _ = providers_for(case, mode, native, args.compile_flex)
            steps = {name: make_step(p, case, mode) for name, p in providers.items()}
            times = time_device(steps, device, repeats)
            flops, nbytes = useful_flops(case, mode), floor_bytes(case, mode)
            floor_s = nbytes / peaks["bytes_per_s"]
            eager_s = median(times["eager"]) if "eager" in times else float("nan")
            for name, samples in times.items():
                t = median(samples)
                row = {**common_fields(device), "shape": shape_name, "small": args.small, "mode": mode,
                       "provider": name, "dtype": str(dtype).replace("torch.", ""), "N": case.shape.n,
                       "L": case.shape.seq_len, "H": case.shape.heads, "d": case.shape.head_dim,
                       "G": case.shape.groups, "P": case.shape.n_prompt, "causal": case.shape.causal,
                       "repeats": repeats, "median_ms": round(t * 1e3, 4),
                       "tb_s": round(nbytes / t / 1e12, 4), "tflop_s": round(flops / t / 1e12, 4),
                       "pct_peak_bw": round(100 * nbytes / t / peaks["bytes_per_s"], 1),
                       "pct_peak_flops": round(100 * flops / t / peaks["flops_per_s"], 1),
                       "floor_ms": round(floor_s * 1e3, 4), "x_floor": round(t / floor_s, 2),
                       "speedup_vs_eager": round(eager_s / t, 2),
                       "peak_tb_s": round(peaks["bytes_per_s"] / 1e12, 3),
                       "peak_tflop_s": round(peaks["flops_per_s"] / 1e12, 2)}
                rows.append(row)
                print(f"{shape_name:6s} {mode:7s} {name:7s} {t * 1e3:9.3f} ms  {row['tb_s']:7.3f} TB/s "
                      f"({row['pct_peak_bw']:5.1f}%)  {row['tflop_s']:7.3f} TFLOP/s ({row['pct_peak_flops']:5.1f}%)  "
                      f"{row['x_floor']:6.2f}x floor  {row['speedup_vs_eager']:5.2f}x eager", flush=True)
    report_rows(args.csv, rows)
    if slow:
        print(f"not timed: {', '.join(f'{n} ({r})' for n, r in slow.items())}; GPU timings need a GPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
