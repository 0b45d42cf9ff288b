"""Compiles the CUDA extension (csrc/prompt_attention/cuda) for sm_80 and sm_90 plus PTX, GPU or not.

CI has nvcc but no GPU: this test is what fails the build when the CUDA sources stop compiling.
The result lands in the JIT cache (~/.cache/fastprompt/ext/...), keyed by a hash of the sources
and flags, so later runs on the same machine only load it. Loading needs no GPU driver: it
registers the CUDA kernels of the torch ops. Skipped only where no CUDA toolkit exists.
"""
import os
import shutil
import subprocess

import pytest
import torch

from fastprompt.ops import jit


def _toolkit():
    home = jit.cuda_home()
    if home is None or not os.path.exists(os.path.join(home, "bin", "nvcc")):
        pytest.skip("no CUDA toolkit (nvcc) found: set CUDA_HOME to compile the CUDA extension")
    if torch.version.cuda is None:
        pytest.skip("this torch build has no CUDA support, so it cannot load CUDA extensions")
    return home


def test_cuda_extension_compiles_for_sm80_sm90_and_ptx(monkeypatch):
    home = _toolkit()
    monkeypatch.delenv("FASTPROMPT_DISABLE_JIT", raising=False)  # this test is the build itself
    monkeypatch.delenv("FASTPROMPT_CUDA_ARCH_LIST", raising=False)  # the default targets
    directory = jit.build_extension("cuda")
    library = directory / "_prompt_attention_cuda.so"
    assert library.exists() and (directory / "BUILD_OK").exists()
    assert jit.load_extension("cuda").build_tag() == jit.build_tag("cuda")
    for op in ("fastprompt::cpp_prompt_attention_fwd", "fastprompt::cpp_prompt_attention_bwd"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA"), op

    ninja_file = (directory / "build.ninja").read_text()
    for flag in ("arch=compute_80,code=sm_80", "arch=compute_90,code=sm_90", "arch=compute_90,code=compute_90"):
        assert flag in ninja_file, f"{flag} missing from the nvcc flags"

    cuobjdump = os.path.join(home, "bin", "cuobjdump")
    if not os.path.exists(cuobjdump):
        cuobjdump = shutil.which("cuobjdump")
    if cuobjdump is None:
        return  # the build flags are still checked by the tag above
    elf = subprocess.run([cuobjdump, "--list-elf", str(library)], capture_output=True, text=True).stdout
    ptx = subprocess.run([cuobjdump, "--list-ptx", str(library)], capture_output=True, text=True).stdout
    assert "sm_80" in elf and "sm_90" in elf, elf
    assert "sm_90" in ptx, ptx


def test_deterministic_reduction_split_covers_every_group_member_once(monkeypatch):
    """The deterministic dpk / dpv reduction (torch.use_deterministic_algorithms(True)) gives each
    block one share of one group's members and sums the shares in a fixed order. The kernel and
    the launcher take the shares from split.h; the extension exposes the same code on the host,
    so its partition is checked here without a GPU: every member of every group in exactly one
    block, in order, and a block never mixes groups."""
    _toolkit()
    monkeypatch.delenv("FASTPROMPT_DISABLE_JIT", raising=False)
    monkeypatch.delenv("FASTPROMPT_CUDA_ARCH_LIST", raising=False)
    ext = jit.load_extension("cuda")
    gen = torch.Generator().manual_seed(0)
    for n, groups in ((1, 1), (7, 3), (100, 1), (100, 7), (5, 9), (1000, 32)):
        group = torch.randint(0, groups, (n,), generator=gen)
        group[0] = groups - 1  # the last group is never empty; others may be
        offsets = torch.searchsorted(group.sort(stable=True).values, torch.arange(groups + 1)).tolist()
        for splits in (1, 2, 3, ext.reduction_splits(n, groups, key_tiles=5, heads=8)):
            ranges = ext.split_ranges(offsets if groups > 1 else [], n, splits)
            assert len(ranges) == groups * splits
            for g in range(groups):
                mine = ranges[g * splits:(g + 1) * splits]
                assert all(r[0] == g for r in mine)
                covered = [pos for _, begin, end in mine for pos in range(begin, end)]
                assert covered == list(range(offsets[g], offsets[g + 1])), (n, groups, splits, g)
    assert ext.reduction_splits(n=1000, groups=1, key_tiles=5, heads=8) == 26  # ~1024 blocks
    assert ext.reduction_splits(n=64, groups=32, key_tiles=5, heads=8) == 1
    assert ext.reduction_splits(n=3, groups=1, key_tiles=1, heads=1) == 3  # at most the mean group size
