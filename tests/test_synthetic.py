"""The embedded synthetic shapes dataset: deterministic, well-formed, normalised, vectorised."""
import sys

import numpy as np
import pytest
import torch

from fastprompt.data import (CLIP_MEAN, CLIP_STD, MAX_CLASSES, SyntheticShapes, class_names,
                             make_loaders)


def test_item_shape_dtype_and_label():
    ds = SyntheticShapes(n_classes=8, image_size=64, n_per_class=3)
    assert len(ds) == 24
    for i in (0, 5, 23):
        x, y = ds[i]
        assert x.shape == (3, 64, 64) and x.dtype == torch.float32
        assert isinstance(y, int) and y == i % 8
        assert torch.isfinite(x).all()


@pytest.mark.parametrize("size", [8, 33, 224])
def test_image_sizes(size):
    x, _ = SyntheticShapes(n_classes=4, image_size=size, n_per_class=1)[3]
    assert x.shape == (3, size, size)


def test_labels_cover_all_classes_balanced():
    ds = SyntheticShapes(n_classes=5, image_size=16, n_per_class=4)
    labels = [ds[i][1] for i in range(len(ds))]
    assert min(labels) == 0 and max(labels) == 4
    assert np.bincount(labels).tolist() == [4] * 5


def test_deterministic_given_seed_and_index():
    a = SyntheticShapes(n_classes=8, image_size=48, n_per_class=4, seed=3)
    b = SyntheticShapes(n_classes=8, image_size=48, n_per_class=4, seed=3)
    for i in (0, 7, 31):
        assert torch.equal(a[i][0], b[i][0])
        assert torch.equal(a[i][0], a[i][0])  # re-rendering gives the same image
    # access order does not matter
    xa = [a[i][0] for i in (5, 2, 9)]
    xb = [b[i][0] for i in (9, 2, 5)][::-1]
    assert all(torch.equal(p, q) for p, q in zip(xa, xb))


def test_seed_and_index_change_the_image():
    a = SyntheticShapes(image_size=48, n_per_class=4, seed=0)
    b = SyntheticShapes(image_size=48, n_per_class=4, seed=1)
    assert not torch.equal(a[0][0], b[0][0])
    assert not torch.equal(a[0][0], a[8][0])  # same class, different item


def test_negative_index_and_out_of_range():
    ds = SyntheticShapes(n_classes=4, image_size=16, n_per_class=2)
    assert torch.equal(ds[-1][0], ds[7][0]) and ds[-1][1] == ds[7][1]
    with pytest.raises(IndexError):
        ds[8]


def test_normalisation_statistics_sane():
    ds = SyntheticShapes(n_classes=8, image_size=64, n_per_class=8)
    x, _ = ds.tensors()
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3))
    assert (mean.abs() < 0.75).all(), mean
    assert ((std > 0.4) & (std < 1.6)).all(), std
    lo = torch.tensor([(0 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD)]).view(3, 1, 1)
    hi = torch.tensor([(1 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD)]).view(3, 1, 1)
    assert (x >= lo - 1e-5).all() and (x <= hi + 1e-5).all()


def test_normalisation_is_exact_on_plain_background():
    # noise=0: plain grey 128 background; the shape never touches the border pixels.
    ds = SyntheticShapes(n_classes=8, image_size=40, n_per_class=2, noise=0.0)
    expected = torch.tensor([(128 / 255 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD)])
    for i in range(len(ds)):
        x, _ = ds[i]
        for r, c in ((0, 0), (0, 39), (39, 0), (39, 39)):
            torch.testing.assert_close(x[:, r, c], expected, rtol=0, atol=1e-6)


def test_custom_mean_std():
    ds = SyntheticShapes(n_classes=2, image_size=16, n_per_class=1, noise=0.0, mean=(0.5,) * 3, std=(0.5,) * 3)
    x, _ = ds[0]
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    torch.testing.assert_close(x[:, 0, 0], torch.full((3,), 128 / 255 * 2 - 1), rtol=0, atol=1e-6)


def test_noise_only_scales_background_not_layout():
    plain = SyntheticShapes(n_classes=4, image_size=64, n_per_class=1, noise=0.0)
    noisy = SyntheticShapes(n_classes=4, image_size=64, n_per_class=1, noise=1.0)
    # The shape's pixels (far from grey) are in the same place in both.
    p = np.asarray(plain.render(0)).astype(int)
    n = np.asarray(noisy.render(0)).astype(int)
    mask = np.abs(p - 128).sum(-1) > 60
    assert mask.sum() > 100
    assert np.abs(p[mask] - n[mask]).mean() < 5
    assert np.asarray(noisy.render(0)).std() > np.asarray(plain.render(0)).std()


def test_jitter_false_is_canonical():
    ds = SyntheticShapes(n_classes=4, image_size=32, n_per_class=3, jitter=False)
    # Every item of a class is the same canonical image, whatever the seed.
    other = SyntheticShapes(n_classes=4, image_size=32, n_per_class=3, jitter=False, seed=9)
    assert torch.equal(ds[0][0], ds[4][0]) and torch.equal(ds[0][0], other[8][0])
    assert not torch.equal(ds[0][0], ds[1][0])


def test_classnames():
    assert class_names(4) == ["red circle", "blue square", "green triangle", "yellow star"]
    for n in range(1, MAX_CLASSES + 1):
        names = class_names(n)
        assert len(names) == n and len(set(names)) == n
        assert all(len(name.split(" ")) == 2 for name in names)
    ds = SyntheticShapes(n_classes=8, image_size=16, n_per_class=1)
    assert ds.classnames == class_names(8)
    # With more classes than colours, a colour alone does not identify the class.
    colours = [name.split(" ")[0] for name in ds.classnames]
    assert len(set(colours)) < len(colours)


@pytest.mark.parametrize("kwargs", [dict(n_classes=0), dict(n_classes=MAX_CLASSES + 1), dict(image_size=4),
                                    dict(n_per_class=0), dict(noise=1.5), dict(noise=-0.1)])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        SyntheticShapes(**kwargs)


def _python_calls(ds, index):
    """Python and C function calls made while producing item ``index`` (after a first, warm-up call)."""
    ds[index]
    count = 0

    def profile(frame, event, arg):
        nonlocal count
        count += event in ("call", "c_call")

    sys.setprofile(profile)
    try:
        ds[index]
    finally:
        sys.setprofile(None)
    return count


def test_generation_is_vectorised():
    """Rendering is a fixed number of whole-image operations: the work per image, counted in
    function calls (not timed: a test must not depend on the machine's load), is a few hundred
    and does not grow with the image size (a loop over rows or pixels would add 224 or 50,176
    calls per 224-px image)."""
    items = range(0, 32, 3)
    small, large = (SyntheticShapes(n_classes=8, image_size=size, n_per_class=4) for size in (32, 448))
    default = SyntheticShapes(n_classes=8, image_size=224, n_per_class=4)
    per_image = [_python_calls(default, i) for i in items]
    assert max(per_image) < 1000, per_image
    small_calls, large_calls = (sum(_python_calls(ds, i) for i in items) for ds in (small, large))
    assert large_calls <= 1.25 * small_calls, (small_calls, large_calls)


def test_make_loaders():
    train, test, names = make_loaders(n_classes=4, image_size=32, shots=3, n_test_per_class=5, batch_size=4, seed=0)
    assert names == class_names(4)
    assert len(train.dataset) == 12 and len(test.dataset) == 20
    x, y = next(iter(train))
    assert x.shape == (4, 3, 32, 32) and y.dtype == torch.int64
    # reproducible batch order, and the test split shares no image with training
    again, _, _ = make_loaders(n_classes=4, image_size=32, shots=3, n_test_per_class=5, batch_size=4, seed=0)
    assert torch.equal(next(iter(again))[1], y)
    train_x, _ = train.dataset.tensors()
    test_x, _ = test.dataset.tensors()
    assert not (train_x.flatten(1)[:, None] == test_x.flatten(1)[None]).all(-1).any()
