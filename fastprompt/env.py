"""``fastprompt env`` (or ``python -m fastprompt.env``): versions, devices, toolchain, and every
attention backend's availability.

Paste its output into bug reports. It compiles nothing: a backend that would be built on first use
says so (and where). Anchors: xformers ``python -m xformers.info``, Liger ``env_report``.

``fastprompt env --compile-check [OPTIONS]`` then compiles the Triton kernels for a GPU
architecture without a GPU and reports registers and spills per kernel
(:mod:`fastprompt.kernels.compile_check`; ``--compile-check --help`` lists its options).
"""
from __future__ import annotations

import importlib
import os
import platform
import shutil
import subprocess
import sys
from typing import List, Tuple


def _version(module: str) -> str:
    try:
        mod = importlib.import_module(module)
    except Exception as err:  # noqa: BLE001 - report any import problem as text
        return f"not importable ({type(err).__name__}: {err})".splitlines()[0]
    return str(getattr(mod, "__version__", "installed"))


def _first_line(cmd: List[str]) -> str:
    if shutil.which(cmd[0]) is None and not os.path.exists(cmd[0]):
        return "not found"
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as err:
        return f"does not run ({err})"
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    return lines[0].strip() if lines else "?"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def report() -> List[Tuple[str, str]]:
    """``(label, value)`` rows of the environment report."""
    import torch

    from .ops import AUTO_ORDER, backend_status, jit, resolve_backend
    from .ops.registry import GPU_VERIFIED
    from .version import __version__

    rows = [
        ("fastprompt", __version__),
        ("python", sys.version.split()[0] + f" ({platform.platform()})"),
        ("torch", f"{torch.__version__} (CUDA {torch.version.cuda or 'none'}, "
                  f"{torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()})"),
        ("open_clip", _version("open_clip")),
        ("triton", _version("triton")),
        ("CPU", _cpu_name()),
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            rows.append((f"GPU {i}", f"{props.name}, sm_{props.major}{props.minor}, "
                                     f"{props.total_memory / 2 ** 30:.0f} GiB"))
    else:
        rows.append(("GPU", "none (torch.cuda.is_available() is False)"))
    home = jit.cuda_home()
    rows += [
        ("C++ compiler", _first_line([os.environ.get("CXX", "c++"), "--version"])),
        ("ninja", _first_line(["ninja", "--version"])),
        ("CUDA_HOME", f"{home} (nvcc {jit.nvcc_version(home) or 'not found'})" if home else "not found"),
        ("CUDA archs (JIT)", ";".join(jit.cuda_arch_list())),
        ("JIT cache", f"{jit.cache_root()}" + (" (FASTPROMPT_DISABLE_JIT=1: no builds)" if jit.jit_disabled() else "")),
    ]
    for kind in jit.KINDS:
        rows.append((f"extension {kind}", jit.extension_state(kind)))
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if "cuda" not in devices:
        devices.append("cuda")  # still list why the GPU backends cannot run
    for name, where in GPU_VERIFIED.items():
        rows.append((f"{name} verified on a GPU", where or "not yet: auto on CUDA skips it (ask for it by name)"))
    for device in devices:
        dev = torch.device(device)
        for name, state in backend_status(dev).items():
            rows.append((f"backend {name} on {device}", state))
        try:
            order = ", ".join(AUTO_ORDER.get(device, ["eager"]))
            rows.append((f"auto on {device}", f"{resolve_backend('auto', dev).name} (order: {order})"))
        except RuntimeError as err:
            rows.append((f"auto on {device}", str(err)))
    return rows


def print_report() -> None:
    rows = report()
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


def add_env_parser(subparsers) -> None:
    """Add ``env`` to the ``fastprompt`` subparsers."""
    import argparse

    from .cli_args import no_check

    env = subparsers.add_parser(
        "env", help="versions, devices, toolchain and every attention backend's availability (for bug reports)",
        description="Print versions, devices, the C++/CUDA toolchain, the kernel extensions' state and which "
                    "attention backend 'auto' picks on each device. Compiles nothing.")
    env.add_argument("--compile-check", nargs=argparse.REMAINDER, default=None, metavar="OPTION",
                     help="then compile the Triton kernels for a GPU architecture without a GPU and report registers "
                          "and spills (the options after it go to the check: --compile-check --help)")
    env.set_defaults(func=_run_env, check=no_check, command_parser=env)


def _run_env(args) -> int:
    if args.compile_check is None or "-h" not in args.compile_check and "--help" not in args.compile_check:
        print_report()
    if args.compile_check is None:
        return 0
    from .kernels.compile_check import main as compile_check

    sys.stdout.flush()
    return compile_check(args.compile_check, prog="fastprompt env --compile-check")


def main() -> int:
    print_report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
