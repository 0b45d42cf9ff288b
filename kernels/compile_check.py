"""Compile the kernels for a GPU architecture without a GPU, the way the runtime does, and report
registers and spills per kernel and dtype.

Triton's interpreter accepts programs that its compiler rejects, so a CPU-only test tier would
never see a GPU compile error; and register pressure decides tile sizes on a GPU. This module runs
the real launchers (``prompt_attention_fwd`` / ``prompt_attention_bwd``) on CPU tensors of a given
input signature with every kernel replaced by a recorder, then compiles each recorded launch the
way ``JITFunction.run`` does: Triton's own binder specialises the actual arguments (16-byte
aligned pointers and integers divisible by 16 get ``tt.divisibility`` hints, integers equal to 1
become constants), and the source goes through Triton's pipeline down to a cubin (``ptxas`` ships
with Triton); ``ptxas -v`` gives registers and spills. It also checks that every tensor address
offset is computed in int64 (no ``tt.addptr`` with an ``i32`` offset tensor).

    python -m fastprompt.kernels.compile_check                        # sm_90; fp32, bf16, fp16; d = 64
    python -m fastprompt.kernels.compile_check --arch 80 --dtype fp32 --head-dim 128 --out results/

It needs the kernels in compiled mode: run it with ``TRITON_INTERPRET`` unset.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import triton

from .common import INTERPRET

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_KERNELS = {  # module -> kernel attributes the launchers look up at call time
    "prompt_attention_fwd": ("_prompt_attention_fwd_kernel",),
    "prompt_attention_bwd": ("_bwd_preprocess_kernel", "_bwd_own_kernel", "_bwd_prompt_kernel"),
}
_LABELS = {"_prompt_attention_fwd_kernel": "forward", "_bwd_preprocess_kernel": "backward preprocess",
           "_bwd_own_kernel": "backward own segment", "_bwd_prompt_kernel": "backward prompt"}


@dataclass
class KernelReport:
    label: str
    dtype: str
    arch: int
    registers: int
    spill_stores: int
    spill_loads: int
    stack_bytes: int
    int32_offsets: int  # tt.addptr ops with an i32 offset tensor (0 = every offset is int64)
    constants: str  # integer arguments the binder turned into constants (value 1), e.g. "H=1"


@dataclass
class Launch:
    label: str
    kernel: object
    args: tuple
    kwargs: dict


class _Recorder:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](*args, **kwargs)`` records the call."""

    def __init__(self, name: str, kernel, sink: List[Launch], suffix: str):
        self.name, self.kernel, self.sink, self.suffix = name, kernel, sink, suffix

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            label = _LABELS[self.name] + (self.suffix if self.name == "_bwd_prompt_kernel" else "")
            self.sink.append(Launch(label, self.kernel, args, kwargs))
        return launch


@contextlib.contextmanager
def _recording(sink: List[Launch], suffix: str = "") -> Iterator[None]:
    modules = {name: importlib.import_module(f"{__package__}.{name}") for name in _KERNELS}
    saved = []
    try:
        for module_name, attrs in _KERNELS.items():
            module = modules[module_name]
            for attr in attrs:
                saved.append((module, attr, getattr(module, attr)))
                setattr(module, attr, _Recorder(attr, getattr(module, attr), sink, suffix))
        yield
    finally:
        for module, attr, kernel in saved:
            setattr(module, attr, kernel)


def recorded_launches(dtype: torch.dtype = torch.bfloat16, seq_len: int = 77, n_prompt: int = 17,
                      head_dim: int = 64, causal: bool = True, has_group: bool = True, has_seqlens: bool = True,
                      n: int = 32, heads: int = 8, n_groups: int = 4) -> List[Launch]:
    """The kernel launches (arguments included) of one forward and two backwards (deterministic and
    atomic prompt reduction) of the launchers on contiguous CPU tensors of this signature.

    Nothing runs: each kernel is replaced by a recorder for the duration. The defaults are a
    CoCoOp-like text suffix: 32 sequences in 4 groups, 77 tokens, 8 heads of 64, a 17-row prefix.
    """
    fwd = importlib.import_module(f"{__package__}.prompt_attention_fwd")
    bwd = importlib.import_module(f"{__package__}.prompt_attention_bwd")
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(n, seq_len, heads, head_dim, generator=gen).to(dtype) for _ in range(3))
    g = n_groups if has_group else 1
    pk, pv = (torch.randn(g, n_prompt, heads, head_dim, generator=gen).to(dtype) for _ in range(2))
    group = torch.arange(n) % n_groups if has_group else None
    seqlens = torch.randint(1, seq_len + 1, (n,), generator=gen) if has_seqlens else None
    scale = head_dim ** -0.5
    launches: List[Launch] = []
    with _recording(launches):
        out, lse = fwd.prompt_attention_fwd(q, k, v, pk, pv, group, seqlens, causal, scale)
    out.zero_()
    lse.zero_()
    dout, dlse = torch.zeros_like(out), torch.zeros_like(lse)
    for deterministic in (True, False):
        with _recording(launches, " (deterministic)" if deterministic else " (atomic)"):
            bwd.prompt_attention_bwd(dout, dlse, q, k, v, pk, pv, group, seqlens, out, lse, causal, scale,
                                     deterministic=deterministic)
    # The preprocess and own-segment kernels do not depend on the reduction mode: keep one of each.
    seen, unique = set(), []
    for launch in launches:
        if launch.label not in seen:
            seen.add(launch.label)
            unique.append(launch)
    return unique


def compile_launch(launch: Launch, arch: int = 90):
    """Compile one recorded launch for ``sm_<arch>`` exactly as ``JITFunction.run`` would on that
    GPU; returns ``(compiled kernel, {argument: value} of the integers specialised to constants)``."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    kernel = launch.kernel
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    kwargs = dict(launch.kwargs, debug=False)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound_args, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args, specialization, options)
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(source, target=target, options=options.__dict__)
    declared = {p.name for p in kernel.params if p.is_constexpr}
    specialised = {}
    for (index,), value in constexprs.items():
        name = kernel.params[index].name
        if name not in declared:
            specialised[name] = value
    return compiled, specialised


_ADDPTR_I32 = re.compile(r"tt\.addptr .*: tensor<[^>]*!tt\.ptr<[^>]*>>, tensor<[0-9x]*xi32")


def int32_offsets(ttir: str) -> int:
    """Number of ``tt.addptr`` ops whose offset is an i32 tensor (an address that can overflow)."""
    return sum(1 for line in ttir.splitlines() if _ADDPTR_I32.search(line))


def _ptxas_report(ptx: str, arch: int) -> Dict[str, int]:
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas):
        raise RuntimeError(f"ptxas not found at {ptxas}: this triton has no NVIDIA backend to compile with")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        arch_name = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        done = subprocess.run([ptxas, "-v", "--gpu-name", arch_name, path, "-o", os.devnull],
                              capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ptxas failed: {done.stderr[-2000:]}")
    text = done.stderr

    def number(pattern: str) -> int:
        found = re.search(pattern, text)
        return int(found.group(1)) if found else 0

    return dict(registers=number(r"Used (\d+) registers"), spill_stores=number(r"(\d+) bytes spill stores"),
                spill_loads=number(r"(\d+) bytes spill loads"), stack_bytes=number(r"(\d+) bytes stack frame"))


def compile_all(arch: int = 90, dtypes: Tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16),
                seq_len: int = 77, n_prompt: int = 17, head_dim: int = 64, causal: bool = True,
                has_group: bool = True, has_seqlens: bool = True) -> List[KernelReport]:
    """Compile every kernel one input signature launches, for each dtype, for ``sm_<arch>``.

    Raises:
        RuntimeError: when the kernels were defined in interpreter mode, or ptxas is missing.
    """
    if INTERPRET:
        raise RuntimeError("fastprompt.kernels was imported with TRITON_INTERPRET=1, so its kernels cannot be "
                           "compiled; run the compile check in a process without it")
    reports = []
    names = {v: k for k, v in _DTYPES.items()}
    for dtype in dtypes:
        for launch in recorded_launches(dtype, seq_len, n_prompt, head_dim, causal, has_group, has_seqlens):
            compiled, specialised = compile_launch(launch, arch)
            regs = _ptxas_report(compiled.asm["ptx"], arch)
            reports.append(KernelReport(
                launch.label, names[dtype], arch, int32_offsets=int32_offsets(compiled.asm["ttir"]),
                constants=" ".join(f"{k}={v}" for k, v in sorted(specialised.items())), **regs))
    return reports


def write_csv(reports: List[KernelReport], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(reports[0])))
        writer.writeheader()
        for r in reports:
            writer.writerow(asdict(r))


def main(argv: Optional[List[str]] = None, prog: Optional[str] = None) -> int:
    """The command line (``python -m fastprompt.kernels.compile_check``, ``fastprompt env --compile-check``)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (80 = A100, 90 = H100)")
    parser.add_argument("--dtype", default="all", help="'all' or a comma-separated list of fp32, bf16, fp16")
    parser.add_argument("--seq-len", type=int, default=77)
    parser.add_argument("--prompt-len", type=int, default=17)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--no-causal", action="store_true")
    parser.add_argument("--out", help="folder to write compile_check_sm<arch>_d<head dim>.csv into")
    args = parser.parse_args(argv)
    names = list(_DTYPES) if args.dtype == "all" else [d.strip() for d in args.dtype.split(",")]
    unknown = [d for d in names if d not in _DTYPES]
    if unknown:
        parser.error(f"--dtype: unknown {unknown}; choose from 'all' or {list(_DTYPES)}")
    dtypes = tuple(_DTYPES[d] for d in names)
    reports = compile_all(args.arch, dtypes, args.seq_len, args.prompt_len, args.head_dim, causal=not args.no_causal)
    for r in reports:
        print(f"ok  {r.label:36s} sm_{r.arch} {r.dtype} d={args.head_dim}: {r.registers} registers, "
              f"{r.spill_stores} bytes spill stores, {r.spill_loads} bytes spill loads, "
              f"{r.int32_offsets} int32 offsets" + (f", constants {r.constants}" if r.constants else ""),
              flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, f"compile_check_sm{args.arch}_d{args.head_dim}.csv")
        write_csv(reports, path)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
