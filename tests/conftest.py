"""Shared fixtures. Everything is seeded, random-weight and offline; GPU tests are skipped at
collection (by marker), never by probing a device at import time."""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch

from fastprompt.testing import random_clip, tiny_clip

torch.set_num_threads(min(2, torch.get_num_threads()))

CLASSNAMES = ["red circle", "blue_square", "green triangle", "yellow star", "dog", "sea lion",
              "jack-o'-lantern", "Granny Smith"]


def _shard(items, config):
    """``FASTPROMPT_TEST_SHARD=i/n`` keeps every n-th collected test starting at the i-th (0-based),
    so n processes (sharing one Triton cache) split a tier between them."""
    spec = os.environ.get("FASTPROMPT_TEST_SHARD", "").strip()
    if not spec:
        return
    try:
        index, count = (int(x) for x in spec.split("/"))
        assert 0 <= index < count
    except (ValueError, AssertionError):
        raise pytest.UsageError(f"FASTPROMPT_TEST_SHARD must look like 'i/n' with 0 <= i < n, got {spec!r}")
    keep = [item for i, item in enumerate(items) if i % count == index]
    config.hook.pytest_deselected(items=[item for i, item in enumerate(items) if i % count != index])
    items[:] = keep


def pytest_collection_modifyitems(config, items):
    _shard(items, config)
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; none is present")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_model():
    """Small open_clip CLIP with nn.MultiheadAttention blocks."""
    return tiny_clip(seed=0)


@pytest.fixture(scope="session")
def tiny_custom_model():
    """Small open_clip CLIP with open_clip's own Attention module (custom blocks)."""
    return tiny_clip(seed=1, custom_blocks=True)


@pytest.fixture(scope="session")
def vit_b16():
    """The real ViT-B-16 architecture with seeded random weights (for the slow tier)."""
    return random_clip("ViT-B-16", seed=0)


@pytest.fixture
def classnames():
    return list(CLASSNAMES)


@pytest.fixture(scope="session")
def dtd_tree(tmp_path_factory):
    """A generated DTD tree (CoOp layout): 4 classes of 6 train, 2 val, 2 test 16 px images — what
    ``tests/train_job.py``'s runs train on. Read-only: a test that changes data makes its own."""
    from fastprompt.testing.fake_trees import make_split_dataset, tiny_jpeg

    root = tmp_path_factory.mktemp("dtd_tree")
    make_split_dataset(str(root), "dtd", [(6, 2, 2)] * 4, image_bytes=tiny_jpeg(16))
    return str(root)
