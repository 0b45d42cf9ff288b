"""ImageDataset (PIL decode, bad images skipped and counted across workers) and transforms."""
import io
import logging
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from fastprompt.data import ImageDataset, Item, load_image, make_loader, skip_collate
from fastprompt.data.transforms import test_transform as eval_transform
from fastprompt.data.transforms import train_transform, transforms_for_model

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _jpeg(path, w, h, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, "JPEG", quality=90)
    return str(path)


@pytest.fixture
def images(tmp_path):
    good = [Item(_jpeg(tmp_path / f"g{i}.jpg", 40 + 7 * i, 30 + 5 * i, i), i % 2, "c") for i in range(6)]
    trunc = tmp_path / "truncated.jpg"
    trunc.write_bytes(open(good[0].path, "rb").read()[:200])
    (tmp_path / "garbage.jpg").write_bytes(b"not an image at all")
    bad = [Item(str(trunc), 0, "c"), Item(str(tmp_path / "garbage.jpg"), 1, "c"), Item(str(tmp_path / "gone.jpg"), 0, "c")]
    return good, bad


def test_bad_images_are_skipped_and_counted(images, caplog):
    good, bad = images
    items = [good[0], bad[0], good[1], bad[1], good[2], bad[2]] + good[3:]
    ds = ImageDataset(items, eval_transform(16))
    with caplog.at_level(logging.WARNING, logger="fastprompt.data"):
        samples = [ds[i] for i in range(len(ds))]
    assert [s is None for s in samples] == [False, True, False, True, False, True, False, False, False]
    assert ds.skipped == 3
    for b in bad:
        assert b.path in caplog.text
    batch = skip_collate(samples[:4])
    assert batch[0].shape == (2, 3, 16, 16) and batch[1].tolist() == [0, 1]
    assert skip_collate([None, None]) is None


def test_skip_count_is_shared_with_dataloader_workers(images):
    good, bad = images
    ds = ImageDataset(good + bad, eval_transform(16))
    loader = make_loader(ds, batch_size=4, shuffle=False, num_workers=2)
    seen = sum(len(b[1]) for b in loader if b is not None)
    assert seen == len(good) and ds.skipped == len(bad)


def test_replace_keeps_the_batch_size(images):
    good, bad = images
    ds = ImageDataset([bad[0], good[1], bad[1]], eval_transform(16), on_error="replace")
    assert ds[0][1] == good[1].label and ds[2][1] == good[1].label and ds.skipped == 3
    with pytest.raises(OSError):
        ImageDataset([bad[1]], on_error="raise")[0]
    with pytest.raises(ValueError, match="on_error"):
        ImageDataset([], on_error="ignore")


def test_transforms_match_dassl(images):
    good, _ = images
    img = Image.open(good[5].path).convert("RGB")
    want = T.Compose([T.Resize(24, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop((24, 24)),
                      T.ToTensor(), T.Normalize(MEAN, STD)])(img)
    assert torch.equal(eval_transform(24)(img), want)
    torch.manual_seed(0)
    a = train_transform(24)(img)
    torch.manual_seed(0)
    b = T.Compose([T.RandomResizedCrop((24, 24), scale=(0.08, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                   T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])(img)
    assert torch.equal(a, b)


def test_transforms_for_model_follow_the_preprocess_config():
    model = SimpleNamespace(visual=SimpleNamespace(preprocess_cfg={
        "size": (64, 64), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bilinear",
        "resize_mode": "shortest"}))
    train, test = transforms_for_model(model)
    img = Image.new("RGB", (100, 80), (10, 200, 30))
    assert train(img).shape == (3, 64, 64) and test(img).shape == (3, 64, 64)
    assert "bilinear" in repr(test) and "0.5" in repr(test)
    model.visual.preprocess_cfg["resize_mode"] = "squash"
    _, squash = transforms_for_model(model)
    assert squash(img).shape == (3, 64, 64) and "CenterCrop" not in repr(squash)


def test_draft_decodes_large_jpegs_smaller(tmp_path):
    path = _jpeg(tmp_path / "big.jpg", 1200, 900)
    assert load_image(path).size == (1200, 900)
    small = load_image(path, draft_size=224)
    assert min(small.size) >= 224 and small.size[0] < 1200
    full = eval_transform(224)(load_image(path))
    fast = eval_transform(224)(load_image(path, draft_size=224))
    assert fast.shape == full.shape
    png = tmp_path / "big.png"
    Image.open(path).save(png)
    assert load_image(str(png), draft_size=224).size == (1200, 900)  # only JPEG has a draft mode
