"""The ahead-of-time build: ``FASTPROMPT_BUILD_EXT=1`` makes setup.py compile the CPU extension,
and the package then uses that prebuilt module with just-in-time builds switched off.

A copy of the sources is built in a temporary directory (about a minute), so the checkout and the
JIT cache are left alone. The CUDA half of the AOT build is not exercised here (CUDA_HOME is
unset for the build); tests/test_cuda_build.py compiles the CUDA sources through the JIT path.
"""
import os
import shutil
import subprocess
import sys

import pytest

from fastprompt.ops import jit
from fastprompt.testing import FP32

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHECK = """
import torch
from fastprompt.ops import jit
from fastprompt.ops import prompt_attention, resolve_backend
print("STATE", jit.extension_state("cpu"))
print("AUTO", resolve_backend("auto", torch.device("cpu")).name)
gen = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(3, 5, 2, 32, generator=gen) for _ in range(3))
pk, pv = torch.randn(1, 4, 2, 32, generator=gen), torch.randn(1, 4, 2, 32, generator=gen)
out, lse = prompt_attention(q, k, v, pk, pv, causal=True, backend="cpu")
ref, ref_lse = prompt_attention(q, k, v, pk, pv, causal=True, backend="eager")
print("ERR", float((out - ref).abs().max()), float((lse - ref_lse).abs().max()))
print("LOADED", jit.extension_state("cpu"))
"""


@pytest.mark.slow
def test_setup_py_builds_the_cpu_extension_ahead_of_time(tmp_path):
    pytest.importorskip("setuptools", reason="setup.py needs setuptools in this environment")
    problem = jit.toolchain_problem("cpu")
    if problem is not None:
        pytest.skip(f"no C++ toolchain: {problem}")
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "build", "*.egg-info")
    for name in ("csrc", "fastprompt", "kernels"):
        shutil.copytree(os.path.join(REPO, name), src / name, ignore=ignore)
    for name in ("setup.py", "README.md"):
        shutil.copy(os.path.join(REPO, name), src / name)

    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH")}
    env["FASTPROMPT_BUILD_EXT"] = "1"
    build = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=src, env=env,
                           capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    built = [p.name for p in (src / "fastprompt").glob("_prompt_attention_cpu*.so")]
    assert len(built) == 1, built

    env = dict(os.environ, PYTHONPATH=str(src), FASTPROMPT_DISABLE_JIT="1",
               FASTPROMPT_JIT_DIR=str(tmp_path / "empty-jit-cache"))
    run = subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in run.stdout.splitlines() if " " in line)
    assert lines["STATE"].startswith("prebuilt module fastprompt._prompt_attention_cpu"), lines
    assert lines["AUTO"] == "cpu"
    assert all(float(x) < FP32.parity for x in lines["ERR"].split()), lines["ERR"]  # absolute, on O(1) values
    assert lines["LOADED"].startswith("loaded (") and str(src) in lines["LOADED"], lines
    assert not (tmp_path / "empty-jit-cache").exists() or not any((tmp_path / "empty-jit-cache").rglob("*.so"))
