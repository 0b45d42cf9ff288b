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


def pytest_collection_modifyitems(config, items):
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
