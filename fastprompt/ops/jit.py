"""Builds the C++ and CUDA prompt-attention extensions of ``csrc/`` just in time, or loads prebuilt ones.

``pip install -e .`` installs pure Python. The first call that needs the ``cpu`` (or ``cuda``)
backend of :func:`fastprompt.ops.prompt_attention` gets its extension from, in order:

1. a prebuilt module ``fastprompt._prompt_attention_cpu`` / ``_cuda``, compiled ahead of time by
   ``FASTPROMPT_BUILD_EXT=1 pip install -e . --no-build-isolation`` (see ``setup.py``), if its
   build tag matches this torch (and CPU instruction set);
2. the JIT cache: ``~/.cache/fastprompt/ext/torch<version>-<cuda>-<arch>/<name>-<hash>/``, where
   ``<hash>`` covers the sources and flags, so an edited source builds afresh and an unchanged
   one is never rebuilt;
3. a JIT build with ``torch.utils.cpp_extension.load`` and ninja into that directory, under a
   cross-process file lock (concurrent processes build once; the others wait and load). Two
   WARNING lines on the ``fastprompt.ops.jit`` logger frame the build: what is being built and
   where, then how long it took. WARNING, because a first call pauses for about a minute and
   the user should see why without setting up logging (Python prints WARNING and above to
   stderr by default); ``logging.getLogger("fastprompt.ops.jit").setLevel(logging.ERROR)`` hides them.

Nothing here compiles at import time. Failures are typed (:class:`ExtensionUnavailableError` and
subclasses) and say how to fix them; the backend probes in ``fastprompt.ops.cpp_backend`` use
:func:`extension_problem` to let ``backend="auto"`` fall back with a one-line reason.

Environment variables:

* ``FASTPROMPT_DISABLE_JIT=1``: never compile. Prebuilt modules and finished cache entries are
  still used; anything else raises :class:`JitDisabledError` (``auto`` falls back to eager).
* ``FASTPROMPT_JIT_DIR``: cache root (default ``$XDG_CACHE_HOME/fastprompt/ext`` or
  ``~/.cache/fastprompt/ext``).
* ``FASTPROMPT_CUDA_ARCH_LIST``: CUDA architectures, torch syntax (default ``"8.0;9.0+PTX"``:
  sm_80, sm_90, and PTX of sm_90 for newer GPUs).
* ``FASTPROMPT_CPU_ISA``: ``avx512``, ``avx2`` or ``default`` (default: what torch detects).
* ``CUDA_HOME`` / ``CUDA_PATH``: CUDA toolkit (default ``/usr/local/cuda``, else the nvcc on PATH);
  ``CXX``: C++ compiler (default ``c++``); ``MAX_JOBS``: parallel compile jobs.

What is built from which sources and flags, and whether this machine can build it, lives in
:mod:`fastprompt.ops.extension_spec` (standard library only, so that ``setup.py`` can load it without
importing fastprompt); this module loads and builds. The design follows FlashInfer's JIT
(flashinfer-ai/flashinfer ``flashinfer/jit/core.py``: cache directory, FileLock,
``FLASHINFER_DISABLE_JIT``) and torchao's optional C++ build.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

# The build specification (standard library only; setup.py loads that file on its own). Every name
# stays reachable as ``fastprompt.ops.jit.<name>``.
from .extension_spec import (  # noqa: F401
    _ISA_RANK, AOT_FIX, DEFAULT_CUDA_ARCH_LIST, KINDS, MODULE_NAMES, _arch_tag, _check_kind, _env_key,
    _ninja_on_path, build_args, build_directory, build_tag, cache_root, cpu_isa, csrc_dir, cuda_arch_list,
    cuda_home, jit_disabled, nvcc_version, source_digest, toolchain_problem)

logger = logging.getLogger("fastprompt.ops.jit")


class ExtensionUnavailableError(RuntimeError):
    """A compiled backend cannot be used here; the message says why and how to fix it."""


class JitDisabledError(ExtensionUnavailableError):
    """``FASTPROMPT_DISABLE_JIT=1`` and no prebuilt or cached module exists."""


class ToolchainMissingError(ExtensionUnavailableError):
    """A compiler, ninja, Python headers or the CUDA toolkit needed for the build is missing."""


class ExtensionBuildError(ExtensionUnavailableError):
    """The compiler ran and failed (the log is kept in the build directory)."""


# ---- configuration ---------------------------------------------------------------------------

_problems: Dict[tuple, Optional[str]] = {}


def _aot_module_name(kind: str) -> str:
    return f"fastprompt.{MODULE_NAMES[kind]}"


def _has_prebuilt(kind: str) -> bool:
    try:
        return importlib.util.find_spec(_aot_module_name(kind)) is not None
    except (ImportError, ValueError):
        return False


def _cached_library(kind: str) -> Optional[Path]:
    """The finished JIT build for the current sources and flags, if one exists."""
    directory = build_directory(kind)
    library = directory / f"{MODULE_NAMES[kind]}.so"
    return library if (directory / "BUILD_OK").exists() and library.exists() else None


def extension_problem(kind: str) -> Optional[str]:
    """None if ``kind``'s extension is loaded, prebuilt, cached or buildable; else the reason and fix.

    Cheap: looks at files and tools, compiles nothing (a buildable extension is built on first
    use), and is memoised per environment.
    """
    _check_kind(kind)
    if kind in _loaded:
        return None
    if kind in _failed:
        return str(_failed[kind])
    key = _env_key(kind)
    if key not in _problems:
        _problems[key] = _find_problem(kind)
    return _problems[key]


def _find_problem(kind: str) -> Optional[str]:
    if _has_prebuilt(kind):  # importing a prebuilt module is cheap; a stale one is not usable
        with _lock:
            module = _loaded.get(kind) or _load_prebuilt(kind)
            if module is not None:
                _loaded[kind] = module
                return None
    try:
        if _cached_library(kind) is not None:
            return None
    except ValueError as err:  # a malformed FASTPROMPT_* variable
        return str(err)
    if jit_disabled():
        return _jit_disabled_message(kind)
    return toolchain_problem(kind)


def extension_state(kind: str) -> str:
    """One line for ``python -m fastprompt.env``: loaded / prebuilt / cached / built on first use / problem."""
    _check_kind(kind)
    if kind in _loaded:
        return f"loaded ({getattr(_loaded[kind], '__file__', '?')})"
    problem = extension_problem(kind)
    if problem is not None:
        return f"unavailable: {problem}"
    if _has_prebuilt(kind):
        return f"prebuilt module {_aot_module_name(kind)}"
    cached = _cached_library(kind)
    if cached is not None:
        return f"built, cached at {cached.parent}"
    return f"JIT build on first use into {build_directory(kind)}"


def _jit_disabled_message(kind: str) -> str:
    return (f"FASTPROMPT_DISABLE_JIT=1 and no prebuilt or cached {MODULE_NAMES[kind]} extension exists; "
            f"unset FASTPROMPT_DISABLE_JIT to build it on first use, or build it ahead of time with `{AOT_FIX}`")


# ---- loading and building --------------------------------------------------------------------
_lock = threading.Lock()
_loaded: Dict[str, object] = {}
_failed: Dict[str, ExtensionUnavailableError] = {}


def load_extension(kind: str):
    """The extension module of ``kind`` ("cpu" or "cuda"), building it on first use.

    Loading registers that device's kernels of the torch ops
    ``torch.ops.fastprompt.cpp_prompt_attention_fwd/bwd`` (declared, with their fakes and autograd,
    by :mod:`fastprompt.ops.cpp_backend` at import). Raises :class:`ExtensionUnavailableError` (a
    subclass says which problem) with the fix in its message; a failed build is remembered for the
    rest of the process.
    """
    _check_kind(kind)
    with _lock:
        if kind in _loaded:
            return _loaded[kind]
        if kind in _failed:
            raise _failed[kind]
        try:
            module = _load_prebuilt(kind) or _load_cached(kind) or _build(kind)
        except ExtensionBuildError as err:
            _failed[kind] = err
            raise
        _loaded[kind] = module
        return module


def _tag_mismatch(kind: str, tag: str) -> Optional[str]:
    """Why a binary built with ``tag`` should not be used here, or None."""
    expected = build_tag(kind)
    parts, want = tag.split("/"), expected.split("/")
    if len(parts) != 4:
        return f"unrecognised build tag {tag!r}"
    if parts[:2] != want[:2]:
        return f"built for {parts[0]} {parts[1]}, running {want[0]} {want[1]}"
    if kind == "cpu" and _ISA_RANK.get(parts[2], 99) > _ISA_RANK[cpu_isa()]:
        return f"built for {parts[2]} instructions, this CPU has {cpu_isa()}"
    if source_digest(kind) is not None and parts[3] != want[3]:
        return "built from other sources than the csrc/ next to this package (edited since)"
    return None


def built_cuda_targets(kind: str = "cuda") -> Optional[List[str]]:
    """``["sm_80", "sm_90", "compute_90"]`` of the loaded/prebuilt CUDA module, else of a JIT build."""
    module = _loaded.get(kind)
    if module is not None:
        return module.build_tag().split("/")[2].split("-")
    return _arch_tag(cuda_arch_list()).split("-")


def _load_prebuilt(kind: str):
    name = _aot_module_name(kind)
    if not _has_prebuilt(kind):
        return None
    try:
        module = importlib.import_module(name)
    except ImportError as err:
        logger.warning("fastprompt: the prebuilt %s cannot be loaded (%s); rebuild it with `%s` or let the "
                       "JIT build it", name, err, AOT_FIX)
        return None
    problem = _tag_mismatch(kind, module.build_tag())
    if problem is not None:
        logger.warning("fastprompt: ignoring the prebuilt %s (%s); rebuild it with `%s`", name, problem, AOT_FIX)
        return None
    return module


def _import_library(name: str, library: Path):
    spec = importlib.util.spec_from_file_location(name, str(library))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


def _load_cached(kind: str):
    library = _cached_library(kind)
    if library is None:
        return None
    try:
        module = _import_library(MODULE_NAMES[kind], library)
    except ImportError as err:  # e.g. a system library changed since the build: rebuild
        logger.warning("fastprompt: the cached %s cannot be loaded (%s); rebuilding", library, err)
        (library.parent / "BUILD_OK").unlink(missing_ok=True)
        return None
    if _tag_mismatch(kind, module.build_tag()) is not None:
        return None
    return module


def _cpp_extension():
    """``torch.utils.cpp_extension`` with CUDA_HOME resolved like :func:`cuda_home`.

    torch guesses CUDA_HOME at import from the nvcc on PATH, which is wrong when that nvcc is
    a wrapper script (``/usr/local/bin/nvcc``); it also warns on machines without a GPU.
    """
    home = cuda_home()
    if home is not None and not os.environ.get("CUDA_HOME") and not os.environ.get("CUDA_PATH"):
        os.environ["CUDA_HOME"] = home
    torch_logger = logging.getLogger("torch.utils.cpp_extension")
    level = torch_logger.level
    torch_logger.setLevel(logging.ERROR)  # "No CUDA runtime is found": expected on a CPU machine
    try:
        from torch.utils import cpp_extension
    finally:
        torch_logger.setLevel(level)
    if home is not None and cpp_extension.CUDA_HOME != home:
        cpp_extension.CUDA_HOME = home
    return cpp_extension


def _build(kind: str):
    if jit_disabled():
        raise JitDisabledError(f"prompt_attention {kind!r} backend: {_jit_disabled_message(kind)}")
    problem = toolchain_problem(kind)
    if problem is not None:
        raise ToolchainMissingError(f"cannot build the {kind!r} prompt_attention extension: {problem}")
    from filelock import FileLock

    args = build_args(kind)
    directory = build_directory(kind)
    directory.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory) + ".lock"):
        cached = _load_cached(kind)  # another process may have finished it while we waited
        if cached is not None:
            return cached
        what = f"CPU kernels ({cpu_isa()})" if kind == "cpu" else \
            f"CUDA kernels ({_arch_tag(cuda_arch_list())}, CUDA_HOME={cuda_home()})"
        # WARNING so that it shows without any logging set-up (see the module docstring).
        logger.warning("fastprompt: building the %s prompt_attention extension %s: %s into %s "
                       "(once per machine and source version; about a minute or more)",
                       kind, args["name"], what, directory)
        cpp_extension = _cpp_extension()
        start = time.perf_counter()
        try:
            module = cpp_extension.load(
                name=args["name"], sources=args["sources"], extra_cflags=args["cflags"],
                extra_cuda_cflags=args["cuda_cflags"] or None, build_directory=str(directory),
                with_cuda=kind == "cuda", verbose=False)
        except Exception as err:  # compiler errors arrive as RuntimeError with ninja's output
            log = directory / "build-error.log"
            log.write_text(str(err))
            raise ExtensionBuildError(
                f"building the {kind!r} prompt_attention extension failed (full log: {log}); "
                f"backend='auto' uses another backend. Last lines:\n{str(err)[-2000:]}") from err
        seconds = time.perf_counter() - start
        (directory / "BUILD_OK").write_text(f"{args['tag']}\n{seconds:.1f} s\n")
        logger.warning("fastprompt: built the %s prompt_attention extension in %.0f s; later runs load it "
                       "from %s", kind, seconds, directory)
        return module


def build_extension(kind: str) -> Path:
    """Compile ``kind``'s extension into the JIT cache (or find it there), load it, return its directory.

    Unlike :func:`load_extension` this ignores a prebuilt module: tests and CI use it to prove
    that the sources compile, e.g. the CUDA kernels on a machine without a GPU. Raises
    :class:`ExtensionUnavailableError` subclasses like :func:`load_extension`.
    """
    _check_kind(kind)
    with _lock:
        module = _load_cached(kind) or _build(kind)
        _loaded.setdefault(kind, module)
    return build_directory(kind)
