"""transformers 5 imports Hugging Face's ``kernels`` distribution when it builds a model; from the root
of a fastprompt checkout the top-level ``kernels/`` folder (fastprompt's Triton sources) shadows it
and every Hugging Face text tower build failed with ``cannot import name 'CUDAProperties'``.
:func:`fastprompt.models.load_hf_kernels_first` imports the distribution first."""
import importlib.metadata
import os
import subprocess
import sys

import pytest

import fastprompt

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(fastprompt.__file__)))
pytestmark = pytest.mark.skipif(
    not os.path.isdir(os.path.join(CHECKOUT, "kernels")), reason="fastprompt is not run from a source checkout")


def _kernels_installed() -> bool:
    try:
        importlib.metadata.version("kernels")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def _run_in_checkout(code: str) -> subprocess.CompletedProcess:
    # `python -c` puts the working directory first on sys.path, as `python -m pytest` does.
    return subprocess.run([sys.executable, "-c", code], cwd=CHECKOUT, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not _kernels_installed(), reason="Hugging Face's kernels distribution is not installed")
def test_the_checkout_hides_the_distribution_and_the_guard_imports_the_real_one():
    plain = _run_in_checkout("import importlib.util; print(importlib.util.find_spec('kernels').origin)")
    assert plain.stdout.strip().startswith(CHECKOUT + os.sep), plain  # the trap exists from the checkout root
    guarded = _run_in_checkout("from fastprompt.models import load_hf_kernels_first; load_hf_kernels_first(); "
                               "import kernels; print(kernels.__file__); print(hasattr(kernels, 'CUDAProperties'))")
    assert guarded.returncode == 0, guarded.stderr
    where, has_api = guarded.stdout.split()
    assert not where.startswith(CHECKOUT + os.sep) and has_api == "True"


def test_a_hugging_face_text_tower_builds_from_the_checkout_root():
    pytest.importorskip("transformers")
    built = _run_in_checkout("from fastprompt.testing.scaled_models import scaled_clip; "
                             "model, _ = scaled_clip('roberta-ViT-B-32'); print(type(model.text).__name__)")
    assert built.returncode == 0, built.stderr[-2000:]
    assert built.stdout.split()[-1] == "HFTextEncoder"


def test_nothing_is_imported_when_the_distribution_is_absent(monkeypatch):
    """Without the distribution nothing lands in sys.modules (transformers then goes without it)."""
    from fastprompt import models

    monkeypatch.delitem(sys.modules, "kernels", raising=False)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if os.path.abspath(p or os.curdir) != CHECKOUT]
                        + [CHECKOUT])
    monkeypatch.setattr(models.importlib, "import_module",
                        lambda name: (_ for _ in ()).throw(ImportError(f"No module named {name!r}")))
    saved = list(sys.path)
    models.load_hf_kernels_first()
    assert "kernels" not in sys.modules and sys.path == saved
