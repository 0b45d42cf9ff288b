"""The ``triton`` backend: the interpreter tier (in a process of its own), the compile check and the
availability rules that do not depend on the mode the kernels were defined in.

Triton fixes a kernel's mode (compiled or interpreted) when ``fastprompt.kernels`` is first
imported, so the tiers cannot share a process:

* interpreter tier: ``tests/triton_interpreter_cases.py``, run here by
  ``test_interpreter_tier_in_its_own_process`` with ``TRITON_INTERPRET=1`` (every machine, CI included);
* GPU tier: ``tests/test_triton_gpu.py``, the compiled kernels on CUDA tensors, collected with the
  rest of the suite in this (compiled-mode) process, and skipped where no GPU exists;
* compile check: ``fastprompt.kernels.compile_check`` in a subprocess without the interpreter.

This module never imports ``fastprompt.kernels`` itself.
"""
import csv
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

from fastprompt.ops import triton_backend  # noqa: E402

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
INTERPRETER_CASES = os.path.join(TESTS, "triton_interpreter_cases.py")


def _env(**changes):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTEST_ADDOPTS")}
    env.update(changes)
    return env


def test_interpreter_tier_in_its_own_process():
    """Every interpreter-tier test passes; on failure the child's summary names the failing tests.

    Run part of it directly with ``TRITON_INTERPRET=1 python -m pytest -q tests/triton_interpreter_cases.py -k ...``.
    """
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", INTERPRETER_CASES],
                          cwd=REPO, env=_env(TRITON_INTERPRET="1"), capture_output=True, text=True, timeout=3000)
    summary = done.stdout.strip().splitlines()[-1:] or ["(no output)"]
    assert done.returncode == 0, (f"the interpreter tier failed ({summary[0]}):\n"
                                  + done.stdout[-8000:] + done.stderr[-2000:])
    assert " passed" in summary[0] and "skipped" not in summary[0], done.stdout[-3000:]


def test_kernels_compile_for_a_gpu_without_one(tmp_path):
    """The interpreter accepts programs the GPU compiler rejects: compile every kernel for sm_90 the
    way the runtime specialises a real launch, and record registers and spills per kernel and
    dtype. Every tensor address offset must be int64 (row index x row stride overflows int32 for
    large sequence-first views)."""
    ptxas = os.path.join(os.path.dirname(importlib.util.find_spec("triton").origin), "backends", "nvidia",
                         "bin", "ptxas")
    if not os.path.exists(ptxas):
        pytest.skip("this triton has no NVIDIA backend (ptxas) to compile with")
    done = subprocess.run([sys.executable, "-m", "fastprompt.kernels.compile_check", "--arch", "90",
                           "--dtype", "fp32,bf16", "--seq-len", "77", "--prompt-len", "17", "--head-dim", "80",
                           "--out", str(tmp_path)],
                          env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    with open(tmp_path / "compile_check_sm90_d80.csv") as f:
        rows = list(csv.DictReader(f))
    kernels_seen = {(r["label"], r["dtype"]) for r in rows}
    assert len(rows) == 10 and len(kernels_seen) == 10, done.stdout  # 5 kernels x 2 dtypes
    for r in rows:
        assert int(r["registers"]) > 0, r
        assert int(r["int32_offsets"]) == 0, f"{r['label']} ({r['dtype']}) computes addresses in int32"


def test_cuda_is_refused_while_the_interpreter_is_requested(monkeypatch):
    """Before the kernels are imported, TRITON_INTERPRET=1 means they would be defined in interpreter
    mode: CUDA tensors are refused (auto then takes the next backend) with the reason."""
    monkeypatch.delitem(sys.modules, "fastprompt.kernels", raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    reason = triton_backend.triton_available(torch.device("cuda"))
    assert reason is not None and "TRITON_INTERPRET" in reason and "interpreter" in reason
    assert triton_backend.triton_available(torch.device("cpu")) is None  # the interpreter's own device
    monkeypatch.delenv("TRITON_INTERPRET")
    if not torch.cuda.is_available():
        assert triton_backend.triton_available(torch.device("cuda")) == "no CUDA device is available"


def test_importing_fastprompt_imports_no_triton_and_survives_without_it():
    code = ("import sys; import fastprompt; from fastprompt.ops import backend_status; "
            "assert 'triton' not in sys.modules and 'fastprompt.kernels' not in sys.modules, 'eager import'; "
            "sys.modules['triton'] = None; import fastprompt.ops.triton_backend as tb; tb._triton_found = None; "
            "print(backend_status('cpu')['triton'])")
    done = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "triton is not installed" in done.stdout
