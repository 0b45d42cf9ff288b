"""What the C++ and CUDA prompt-attention extensions are built from, where, and whether they can be.

The standard-library half of :mod:`fastprompt.ops.jit`: environment switches, CPU instruction set
and CUDA architecture selection, the CUDA toolkit and ninja probes, the source digest, the
compiler flags and build tag of each extension, and its JIT cache directory. It imports nothing
but the standard library at module level, so ``setup.py`` loads this file directly for an
ahead-of-time build without importing fastprompt or torch (torch is imported lazily, only where
its version or CUDA build is part of the answer). Environment variables: see :mod:`fastprompt.ops.jit`.
"""
from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Dict, List, Optional

KINDS = ("cpu", "cuda")
MODULE_NAMES = {"cpu": "_prompt_attention_cpu", "cuda": "_prompt_attention_cuda"}
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0+PTX"
_ISA_FLAGS = {
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
               "-mprefer-vector-width=512"],
    "avx2": ["-mavx2", "-mfma", "-mf16c"],
    "default": [],
}
_ISA_RANK = {"default": 0, "avx2": 1, "avx512": 2}
_SOURCES = {
    "cpu": ["prompt_attention/cpu/forward.cpp", "prompt_attention/cpu/backward.cpp",
            "prompt_attention/cpu/bindings.cpp"],
    "cuda": ["prompt_attention/cuda/prompt_attention_fwd.cu", "prompt_attention/cuda/prompt_attention_bwd.cu",
             "prompt_attention/cuda/bindings.cpp"],
}
AOT_FIX = "FASTPROMPT_BUILD_EXT=1 pip install -e . --no-build-isolation"


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def jit_disabled() -> bool:
    return os.environ.get("FASTPROMPT_DISABLE_JIT", "").strip().lower() in ("1", "true", "yes", "on")


def csrc_dir() -> Path:
    """The ``csrc/`` tree next to the package (a source checkout or an editable install)."""
    return Path(__file__).resolve().parents[2] / "csrc"


def cache_root() -> Path:
    if os.environ.get("FASTPROMPT_JIT_DIR"):
        return Path(os.environ["FASTPROMPT_JIT_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastprompt" / "ext"


def cpu_isa() -> str:
    """Instruction set the CPU extension is compiled for: ``avx512``, ``avx2`` or ``default``."""
    forced = os.environ.get("FASTPROMPT_CPU_ISA", "").strip().lower()
    if forced:
        if forced not in _ISA_FLAGS:
            raise ValueError(f"FASTPROMPT_CPU_ISA must be one of {sorted(_ISA_FLAGS)}, got {forced!r}")
        return forced
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "default"
    import torch

    capability = torch.backends.cpu.get_cpu_capability().upper()
    return "avx512" if capability.startswith("AVX512") else "avx2" if capability == "AVX2" else "default"


def cuda_arch_list() -> List[str]:
    """``["8.0", "9.0+PTX"]``-style entries from ``FASTPROMPT_CUDA_ARCH_LIST``."""
    raw = os.environ.get("FASTPROMPT_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCH_LIST)
    archs = [a.strip() for a in re.split(r"[;\s,]+", raw) if a.strip()]
    for arch in archs:
        if not re.fullmatch(r"\d+\.\d+[a-z]?(\+PTX)?", arch):
            raise ValueError(f"FASTPROMPT_CUDA_ARCH_LIST entries look like '8.0' or '9.0+PTX', got {arch!r}")
    if not archs:
        raise ValueError("FASTPROMPT_CUDA_ARCH_LIST is empty")
    return archs


def _targets(archs: List[str]) -> List[tuple]:
    """``(number, with_ptx)`` per architecture: ``"9.0+PTX"`` -> ``("90", True)``."""
    return [(arch.split("+")[0].replace(".", ""), arch.endswith("+PTX")) for arch in archs]


def _gencode_flags(archs: List[str]) -> List[str]:
    flags = []
    for num, ptx in _targets(archs):
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    return flags


def _arch_tag(archs: List[str]) -> str:
    """``sm_80-sm_90-compute_90``: the binary (sm_) and PTX (compute_) targets of a build."""
    return "-".join(f"sm_{num}" + (f"-compute_{num}" if ptx else "") for num, ptx in _targets(archs))


def cuda_home() -> Optional[str]:
    """The CUDA toolkit: ``CUDA_HOME``/``CUDA_PATH``, else ``/usr/local/cuda``, else nvcc's prefix."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    if nvcc:
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
            return home
    return None


def _torch_tags():
    import torch

    version = torch.__version__.split("+")[0]
    cuda = f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else "cpu"
    return torch.__version__, version, cuda


def _source_files(kind: str) -> List[Path]:
    """The files a build of ``kind`` depends on: its own directory and the shared headers."""
    other = "cuda" if kind == "cpu" else "cpu"
    root = csrc_dir() / "prompt_attention"
    if not root.is_dir():
        return []
    return sorted(path for path in root.rglob("*") if path.is_file() and path.parent.name != other
                  and path.suffix in (".h", ".cuh", ".cpp", ".cu"))


_source_digests: Dict[str, Optional[str]] = {}


def source_digest(kind: str) -> Optional[str]:
    """12 hex digits of a hash over ``kind``'s sources (None without a source tree); per process."""
    if kind not in _source_digests:
        files = _source_files(kind)
        digest = None
        if files:
            h = hashlib.sha256()
            for path in files:
                h.update(str(path.relative_to(csrc_dir())).encode())
                h.update(path.read_bytes())
            digest = h.hexdigest()[:12]
        _source_digests[kind] = digest
    return _source_digests[kind]


def build_tag(kind: str) -> str:
    """What a module built here and now is for; compiled into the binary and checked on load.

    ``torch-<version>/<kind>-<cuda>/<isa or CUDA targets>/src-<source digest>``.
    """
    _check_kind(kind)
    full, _, cuda = _torch_tags()
    arch = cpu_isa() if kind == "cpu" else _arch_tag(cuda_arch_list())
    return f"torch-{full}/{kind}-{cuda}/{arch}/src-{source_digest(kind) or 'unknown'}"


def build_args(kind: str) -> Dict[str, object]:
    """Sources (absolute) and compiler flags of an extension, shared by the JIT and ``setup.py``."""
    _check_kind(kind)
    root = csrc_dir()
    tag_flag = f"-DFASTPROMPT_BUILD_TAG={build_tag(kind)}"
    cflags = ["-O3", tag_flag]
    cuda_cflags: List[str] = []
    if kind == "cpu":
        # -fopenmp-simd: `omp simd` vectorisation without linking a second OpenMP runtime;
        # the threads are ATen's (at::parallel_for).
        cflags += ["-fopenmp-simd"] + _ISA_FLAGS[cpu_isa()]
    else:
        cuda_cflags = ["-O3", tag_flag, "--threads", os.environ.get("NVCC_THREADS", "2")]
        cuda_cflags += _gencode_flags(cuda_arch_list())
    return {
        "name": MODULE_NAMES[kind],
        "sources": [str(root / s) for s in _SOURCES[kind]],
        "cflags": cflags,
        "cuda_cflags": cuda_cflags,
        "tag": build_tag(kind),
    }


def build_directory(kind: str) -> Path:
    """``<cache>/torch<v>-<cuda>-<arch>/<name>-<hash of sources and flags>`` (memoised per environment)."""
    key = _env_key(kind)
    if key not in _directories:
        args = build_args(kind)
        _, version, cuda = _torch_tags()
        arch = cpu_isa() if kind == "cpu" else _arch_tag(cuda_arch_list())
        # The flags carry the build tag, hence the source digest: edited sources build afresh.
        digest = hashlib.sha256(repr((args["cflags"], args["cuda_cflags"], sys.version_info[:2])).encode())
        _directories[key] = (cache_root() / f"torch{version}-{cuda}-{arch}"
                             / f"{args['name']}-{digest.hexdigest()[:12]}")
    return _directories[key]


# Environment variables that change where or how an extension is built; probes and build
# directories are memoised per value of these (backend probes run on every op call).
_ENV_VARS = ("FASTPROMPT_DISABLE_JIT", "FASTPROMPT_JIT_DIR", "XDG_CACHE_HOME", "FASTPROMPT_CPU_ISA",
             "FASTPROMPT_CUDA_ARCH_LIST", "NVCC_THREADS", "CUDA_HOME", "CUDA_PATH", "CXX", "PATH")
_directories: Dict[tuple, Path] = {}


def _env_key(kind: str) -> tuple:
    return (kind,) + tuple(os.environ.get(v) for v in _ENV_VARS)


# ---- cheap probes ----------------------------------------------------------------------------
_nvcc_versions: Dict[str, Optional[str]] = {}


def nvcc_version(home: str) -> Optional[str]:
    """``"13.0"`` from ``<home>/bin/nvcc --version`` (cached), or None."""
    if home not in _nvcc_versions:
        version = None
        try:
            text = subprocess.run([os.path.join(home, "bin", "nvcc"), "--version"], capture_output=True,
                                  text=True, timeout=30).stdout
            match = re.search(r"release (\d+\.\d+)", text)
            version = match.group(1) if match else None
        except (OSError, subprocess.SubprocessError):
            pass
        _nvcc_versions[home] = version
    return _nvcc_versions[home]


def _ninja_on_path() -> bool:
    """Whether ``ninja`` runs from PATH, after adding the ``ninja`` wheel's own bin directory.

    ``pip install`` puts the wheel's ninja next to the interpreter, which is on PATH only when
    the virtualenv is activated; torch's extension builder looks for it on PATH.
    """
    if shutil.which("ninja") is not None:
        return True
    try:
        import ninja
    except ImportError:
        return False
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    return shutil.which("ninja") is not None


def toolchain_problem(kind: str) -> Optional[str]:
    """Why a JIT build of ``kind`` cannot start here (with the fix), or None. Compiles nothing."""
    _check_kind(kind)
    if not all((csrc_dir() / s).is_file() for s in _SOURCES[kind]):
        return (f"the C++ sources are not in {csrc_dir()} (a non-editable install); install from a source "
                f"checkout with `pip install -e .`, or build ahead of time with `{AOT_FIX}`")
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return f"no C++ compiler ({cxx!r} is not on PATH); install g++ or clang, or set CXX"
    if not _ninja_on_path():
        return "ninja is not on PATH; `pip install ninja`"
    if not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")):
        return "the Python development headers (Python.h) are missing; install python3-dev"
    if kind == "cuda":
        import torch

        if torch.version.cuda is None:
            return "this torch build has no CUDA support"
        home = cuda_home()
        if home is None or not os.path.exists(os.path.join(home, "bin", "nvcc")):
            return "no CUDA toolkit found (nvcc); install it and set CUDA_HOME, e.g. CUDA_HOME=/usr/local/cuda"
        found = nvcc_version(home)
        if found is None:
            return f"{home}/bin/nvcc does not run"
        if found.split(".")[0] != torch.version.cuda.split(".")[0]:
            return (f"nvcc {found} at {home} does not match torch's CUDA {torch.version.cuda}; point CUDA_HOME "
                    f"at a CUDA {torch.version.cuda.split('.')[0]}.x toolkit")
    return None
