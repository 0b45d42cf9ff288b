"""The draw-only replicas advance the streams exactly as the real transforms do (fastprompt.replay.draw_counts).

Each test runs the real torchvision transforms and the project's RandAugment2 on real PIL images
under the global streams, and the replica from the same starting states on private generators;
both must end at the same generator states, bitwise (an off-by-one draw changes every state).
"""
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from fastprompt.errors import ConfigError
from fastprompt.replay.draw_counts import AugmentDraws, crop_draws
from fastprompt.replay.randaugment import RANDAUGMENT2_OPS, RandAugment2
from fastprompt.replay.streams import capture, generator_at, installed, random_at
from fastprompt.train.views import MultiView

# tiny, square, wide and tall beyond the 3/4..4/3 ratio range (the crop needs several attempts or
# falls back to the centre), ordinary photos and a large one
SIZES = [(1, 1), (2, 1), (1, 3), (5, 7), (33, 33), (400, 20), (20, 400), (1000, 3), (3, 700), (250, 30),
         (64, 48), (48, 64), (500, 375), (375, 500), (2000, 1500)]
MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)


@pytest.fixture(autouse=True)
def _keep_global_streams():
    with installed(capture()):
        yield


def _noise(size, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _real_vs_replica(transform, views, images, seed):
    """Run ``transform`` ``views`` times per image on the global streams and the replica alongside;
    returns the replica's draws and asserts equal end states after every image."""
    torch.manual_seed(seed)
    random.seed(seed)
    draws = AugmentDraws.from_transform(transform, views)
    start = capture()
    gen, rng = generator_at(start.torch), random_at(start.python)
    recorded = []
    for img in images:
        recorded.append(draws.advance(gen, rng, img.size))
        for _ in range(views):
            transform(img)
        end = capture()
        assert torch.equal(gen.get_state(), end.torch), f"torch stream differs after an image of size {img.size}"
        assert rng.getstate() == end.python, f"Python stream differs after an image of size {img.size}"
    return recorded


@pytest.mark.parametrize("views", [1, 3])
def test_crop_flip_randaugment2_draws_match_the_real_transforms(views):
    images = [_noise(s, i) for i, s in enumerate(SIZES)]
    crop = T.RandomResizedCrop(24, interpolation=T.InterpolationMode.BICUBIC)
    full = T.Compose([crop, T.RandomHorizontalFlip(), RandAugment2(2), T.ToTensor(), T.Normalize(MEAN, STD)])
    recorded = _real_vs_replica(full, views, images, seed=3)
    assert all(len(r) == views for r in recorded)
    wide = recorded[SIZES.index((1000, 3))][0].crop
    assert wide == (0, (1000 - 4) // 2, 3, 4)  # no attempt fits: torchvision's centre fallback at ratio 4/3
    for transform in (T.Compose([crop, T.ToTensor()]), T.Compose([T.RandomHorizontalFlip(0.3), T.ToTensor()]),
                      T.Compose([RandAugment2(3, 0.9)]),
                      T.Compose([T.RandomResizedCrop((20, 30), scale=(0.5, 0.9), ratio=(0.2, 5.0)),
                                 T.RandomHorizontalFlip(), T.ToTensor()])):
        _real_vs_replica(transform, views, images, seed=11)


def test_the_replicas_record_what_the_real_transforms_drew():
    img = _noise((300, 200))
    for seed in range(20):
        torch.manual_seed(seed)
        i, j, h, w = T.RandomResizedCrop.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3))
        flipped = bool(torch.rand(1) < 0.5)
        gen = torch.Generator().manual_seed(seed)
        view = AugmentDraws.from_transform(T.Compose([T.RandomResizedCrop(8), T.RandomHorizontalFlip()])).advance(
            gen, random.Random(), img.size)[0]
        assert (view.crop, view.flip, view.ops) == ((i, j, h, w), flipped, ())
    assert crop_draws(torch.Generator().manual_seed(0), 7, 7, (1.0, 1.0), (1.0, 1.0))[2:] == (7, 7)


def test_every_randaugment2_op_and_its_sign_draw_is_replicated():
    """600 images through RandAugment2 with n = 2, p = 1: every op is applied, the signed ones too."""
    images = [_noise((17 + k % 5, 13 + k % 7), k) for k in range(300)]
    recorded = _real_vs_replica(T.Compose([RandAugment2(2, 1.0)]), 2, images, seed=5)
    applied = {name for item in recorded for view in item for name, _ in view.ops}
    assert applied == {name for name, _, _ in RANDAUGMENT2_OPS}
    rotations = [v for item in recorded for view in item for name, v in view.ops if name == "Rotate"]
    assert min(rotations) < 0 < max(rotations)  # the sign was drawn


def test_multiview_and_refused_transforms():
    tf = T.Compose([T.RandomResizedCrop(8), T.ToTensor()])
    assert AugmentDraws.from_transform(MultiView(tf, 4)).views == 4
    assert not AugmentDraws.from_transform(tf).draws_python
    assert AugmentDraws.from_transform(T.Compose([RandAugment2(1)])).draws_python
    with pytest.raises(ConfigError, match="ColorJitter.*INPUT.TRANSFORMS"):
        AugmentDraws.from_transform(T.Compose([T.RandomResizedCrop(8), T.ColorJitter(0.4), T.ToTensor()]))
    with pytest.raises(ConfigError, match="K_TRANSFORMS must be an int >= 1"):
        AugmentDraws.from_transform(tf, 0)
