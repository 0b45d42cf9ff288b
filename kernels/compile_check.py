"""Compile the kernels for a GPU architecture without a GPU, and report registers and spills.

Triton's interpreter accepts programs that its compiler rejects, so a CPU-only test tier would
never see a GPU compile error. This module compiles every kernel, with the same compile-time
constants the launchers use for a given input signature, through Triton's own pipeline down to
a cubin (``ptxas`` ships with Triton), and runs ``ptxas -v`` for register and spill counts.

    python -m fastprompt.kernels.compile_check                       # sm_90, bf16, d = 64, L = 77, P = 17
    python -m fastprompt.kernels.compile_check --arch 80 --dtype fp32 --head-dim 128

It needs the kernels in compiled mode: run it with ``TRITON_INTERPRET`` unset.
"""
from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
from typing import Dict, List, Tuple

import torch
import triton

from .common import INTERPRET

_ELEMENT = ("Q", "K", "V", "PK", "PV", "OUT", "DO", "DQ", "DK", "DV")  # pointers in the input dtype
_FP32 = ("LSE", "DELTA", "DLSE", "DPK", "DPV")
_I64 = ("GROUP", "SEQLENS")
_I32 = ("MEMBERS", "OFFSETS")
_FLOAT_SCALARS = ("qk_scale", "sm_scale")
_TYPE = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def _signature(fn, dtype: torch.dtype, constexprs: Dict[str, object]) -> Dict[str, str]:
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in _ELEMENT:
            sig[name] = "*" + _TYPE[dtype]
        elif name in _FP32:
            sig[name] = "*fp32"
        elif name in _I64:
            sig[name] = "*i64"
        elif name in _I32:
            sig[name] = "*i32"
        elif name in _FLOAT_SCALARS:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def _ptxas_info(ptx: str, arch: int) -> str:
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas):
        return "ptxas not found"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        arch_name = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        done = subprocess.run([ptxas, "-v", "--gpu-name", arch_name, path, "-o", os.devnull],
                              capture_output=True, text=True)
    lines = [line.split(":", 1)[-1].strip() for line in done.stderr.splitlines()
             if "registers" in line or "spill" in line]
    return "; ".join(lines)


def kernel_variants(dtype: torch.dtype, seq_len: int, n_prompt: int, head_dim: int, causal: bool,
                    has_group: bool, has_seqlens: bool) -> List[Tuple[str, object, Dict[str, object]]]:
    """``(label, kernel, constants and launch options)`` for every kernel one signature launches."""
    fwd = importlib.import_module(__package__ + ".prompt_attention_fwd")
    bwd = importlib.import_module(__package__ + ".prompt_attention_bwd")
    flags = dict(has_group=has_group, has_seqlens=has_seqlens, causal=causal)
    variants = [("forward", fwd._prompt_attention_fwd_kernel,
                 fwd.fwd_config(dtype, seq_len, n_prompt, head_dim, **flags))]
    for atomic in (False, True):
        cfgs = bwd.bwd_configs(dtype, seq_len, n_prompt, head_dim, has_dlse=True, atomic=atomic, **flags)
        if not atomic:
            variants.append(("backward preprocess", bwd._bwd_preprocess_kernel, cfgs["_bwd_preprocess_kernel"]))
            variants.append(("backward own segment", bwd._bwd_own_kernel, cfgs["_bwd_own_kernel"]))
        variants.append((f"backward prompt ({'atomic' if atomic else 'deterministic'})",
                         bwd._bwd_prompt_kernel, cfgs["_bwd_prompt_kernel"]))
    return variants


def compile_all(arch: int = 90, dtype: torch.dtype = torch.bfloat16, seq_len: int = 77, n_prompt: int = 17,
                head_dim: int = 64, causal: bool = True, has_group: bool = True, has_seqlens: bool = True):
    """Compile every kernel for ``sm_<arch>``; returns ``[(label, ptxas summary)]``.

    Raises:
        RuntimeError: when the kernels were defined in interpreter mode.
    """
    if INTERPRET:
        raise RuntimeError("fastprompt.kernels was imported with TRITON_INTERPRET=1, so its kernels cannot be "
                           "compiled; run the compile check in a process without it")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, 32)
    results = []
    for label, kernel, cfg in kernel_variants(dtype, seq_len, n_prompt, head_dim, causal, has_group, has_seqlens):
        constexprs = {k: v for k, v in cfg.items() if k not in ("num_warps", "num_stages")}
        options = {k: cfg[k] for k in ("num_warps", "num_stages") if k in cfg}
        source = ASTSource(fn=kernel, signature=_signature(kernel, dtype, constexprs), constexprs=constexprs)
        compiled = triton.compile(source, target=target, options=options)
        results.append((label, _ptxas_info(compiled.asm["ptx"], arch)))
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (80 = A100, 90 = H100)")
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    parser.add_argument("--seq-len", type=int, default=77)
    parser.add_argument("--prompt-len", type=int, default=17)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--no-causal", action="store_true")
    args = parser.parse_args(argv)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    for label, info in compile_all(args.arch, dtype, args.seq_len, args.prompt_len, args.head_dim,
                                   causal=not args.no_causal):
        print(f"ok  {label:36s} sm_{args.arch} {args.dtype} d={args.head_dim}: {info}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
