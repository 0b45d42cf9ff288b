"""A deterministic synthetic image-classification dataset, generated on the fly.

Each class is a (colour, shape) pair such as ``"red circle"`` or ``"blue square"``. Images are
drawn with PIL: one jittered shape (position, size, rotation, colour) on a noisy, randomly
tinted background with a little clutter, so the task is learnable but not trivial. Nothing is
read from disk or downloaded; image ``i`` depends only on ``(seed, i)``.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageChops, ImageDraw
from torch.utils.data import DataLoader, Dataset

from .names import COLOURS, MAX_CLASSES, SHAPES

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def class_pairs(n_classes: int) -> List[Tuple[str, str]]:
    """The (colour, shape) pairs of the first ``n_classes`` classes.

    Classes come from a ``k x k`` grid of the first ``k`` colours and shapes, with
    ``k = max(4, ceil(sqrt(n_classes)))``, walked along shifted diagonals: "red circle",
    "blue square", "green triangle", "yellow star", then "red square", "blue triangle",
    "green star", "yellow circle", ... With more than ``k`` classes every colour and every shape
    occurs in several classes, so neither the colour nor the shape alone identifies the class.
    """
    if not 1 <= n_classes <= MAX_CLASSES:
        raise ValueError(f"n_classes must be between 1 and {MAX_CLASSES}, got {n_classes}")
    k = max(4, math.isqrt(n_classes - 1) + 1)
    colours = list(COLOURS)[:k]
    return [(colours[i % k], SHAPES[(i % k + i // k) % k]) for i in range(n_classes)]


def class_names(n_classes: int = 8) -> List[str]:
    """``["red circle", "blue square", ...]`` for the first ``n_classes`` classes."""
    return [f"{c} {s}" for c, s in class_pairs(n_classes)]


def _regular_polygon(n: int, phase: float = 0.0) -> np.ndarray:
    t = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    t = -np.pi / 2 + np.pi * np.arange(2 * points) / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _cross(arm: float = 0.35) -> np.ndarray:
    a = arm
    return np.array([(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1),
                     (-a, a), (-1, a), (-1, -a), (-a, -a)], dtype=np.float64)


# Unit-radius outlines (x, y), y pointing down as in image coordinates.
_OUTLINES = {
    "square": _regular_polygon(4, np.pi / 4),
    "triangle": _regular_polygon(3, -np.pi / 2),
    "star": _star(),
    "hexagon": _regular_polygon(6),
    "cross": _cross(),
    "diamond": _regular_polygon(4) * np.array([0.7, 1.0]),
    "pentagon": _regular_polygon(5, -np.pi / 2),
}


class SyntheticShapes(Dataset):
    """Coloured shapes on a noisy background; ``(image [3, S, S] float32, label)`` items.

    Args:
        n_classes: number of (colour, shape) classes, 1 to ``MAX_CLASSES`` (64).
        image_size: side ``S`` of the square images.
        n_per_class: images per class; ``len(ds) == n_classes * n_per_class`` and item ``i``
            has label ``i % n_classes`` (balanced, interleaved).
        seed: base seed; item ``i`` is a pure function of ``(seed, i)`` and the settings.
        jitter: randomise position, size, rotation, colour and background. With
            ``jitter=False`` each class is one centred, canonical image on a plain background.
        noise: strength of the background (tint, blotches, grain and clutter lines), ``0`` for
            a plain grey background, ``1`` (default) for the full noisy background. It only
            scales amplitudes, so the shape layout of item ``i`` does not depend on it.
        mean, std: per-channel normalisation (defaults: the CLIP statistics).
    """

    def __init__(self, n_classes: int = 8, image_size: int = 224, n_per_class: int = 16,
                 seed: int = 0, jitter: bool = True, noise: float = 1.0,
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD):
        if image_size < 8:
            raise ValueError(f"image_size must be at least 8, got {image_size}")
        if n_per_class < 1:
            raise ValueError(f"n_per_class must be positive, got {n_per_class}")
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"noise must be in [0, 1], got {noise}")
        self.pairs = class_pairs(n_classes)
        self.classnames = [f"{c} {s}" for c, s in self.pairs]
        self.n_classes = n_classes
        self.image_size = int(image_size)
        self.n_per_class = int(n_per_class)
        self.seed = int(seed)
        self.jitter = bool(jitter)
        self.noise = float(noise)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        # Normalisation as a per-channel lookup table over the 256 uint8 values.
        levels = np.arange(256, dtype=np.float64) / 255.0
        self._lut = np.stack([(levels - m) / s for m, s in zip(self.mean, self.std)]).astype(np.float32)

    def __len__(self) -> int:
        return self.n_classes * self.n_per_class

    def label(self, index: int) -> int:
        return index % self.n_classes

    def render(self, index: int) -> Image.Image:
        """The PIL RGB image of item ``index`` (before normalisation)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index %= len(self)
        colour_name, shape = self.pairs[self.label(index)]
        size = self.image_size
        rng = np.random.Generator(np.random.PCG64([self.seed, index]))

        if self.jitter:
            # Background: random muted tint plus blotches upsampled from a coarse grid, plus
            # fine grain at half resolution (nearest-upsampled). The same random numbers are
            # drawn whatever ``noise`` is; it only scales them.
            amp = self.noise
            tint = rng.uniform(-88, 72) + rng.normal(0, 15, size=3)
            coarse = max(2, size // 8)
            blotches = rng.normal(0, 28, size=(coarse, coarse, 3))
            half = (size + 1) // 2
            grain = rng.random((half, half), dtype=np.float32)
            bg = np.clip(128 + amp * (tint + blotches), 0, 255).astype(np.uint8)
            img = Image.fromarray(bg, "RGB").resize((size, size), Image.BILINEAR)
            if amp > 0:
                grain_img = Image.fromarray((grain * (40 * amp)).astype(np.uint8), "L")
                grain_img = grain_img.resize((size, size), Image.NEAREST).convert("RGB")
                img = ImageChops.add(img, grain_img, offset=-int(20 * amp))
        else:
            img = Image.new("RGB", (size, size), (128, 128, 128))
        draw = ImageDraw.Draw(img)

        if self.jitter:
            # Clutter: a few thin grey lines that are not part of the class.
            for _ in range(int(rng.integers(0, 3))):
                x0, y0, x1, y1 = (rng.uniform(0, size, 4)).tolist()
                g = int(128 + self.noise * (int(rng.integers(60, 200)) - 128))
                if self.noise > 0:
                    draw.line([(x0, y0), (x1, y1)], fill=(g, g, g), width=max(1, size // 64))
            radius = size * rng.uniform(0.18, 0.32)
            angle = rng.uniform(0, 2 * np.pi)
            aspect = rng.uniform(0.85, 1.15)
            where = rng.random(2)  # centre, as a fraction of the room left for it
            colour = tuple(int(v) for v in np.clip(np.array(COLOURS[colour_name]) + rng.normal(0, 12, 3), 0, 255))
        else:
            radius, angle, aspect, where = size * 0.3, 0.0, 1.0, np.array([0.5, 0.5])
            colour = COLOURS[colour_name]

        # Outline relative to the centre, then a centre that keeps it inside [2, size - 2], so the
        # border pixels always show the background.
        if shape == "circle":
            half = np.array([radius * aspect, radius / aspect])
            lo, hi = -half, half
        else:
            pts = _OUTLINES[shape] * np.array([aspect, 1.0 / aspect])
            c, s = math.cos(angle), math.sin(angle)
            rel = (pts @ np.array([[c, s], [-s, c]])) * radius
            lo, hi = rel.min(axis=0), rel.max(axis=0)
        room = np.maximum((size - 2 - hi) - (2 - lo), 0.0)
        centre = (2 - lo) + where * room
        if shape == "circle":
            draw.ellipse([*(centre + lo).tolist(), *(centre + hi).tolist()], fill=colour)
        else:
            draw.polygon([tuple(p) for p in (rel + centre).tolist()], fill=colour)
        return img

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        img = self.render(index)
        arr = np.asarray(img).transpose(2, 0, 1)
        out = np.empty(arr.shape, dtype=np.float32)
        for c in range(3):
            np.take(self._lut[c], arr[c], out=out[c])
        return torch.from_numpy(out), self.label(index % len(self))

    def tensors(self, indices: Optional[Sequence[int]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """All (or the given) items stacked: ``(images [N, 3, S, S], labels [N])``."""
        indices = range(len(self)) if indices is None else indices
        items = [self[i] for i in indices]
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.long)


def make_loaders(n_classes: int = 8, image_size: int = 224, shots: int = 16,
                 n_test_per_class: int = 25, batch_size: int = 16, seed: int = 0,
                 test_seed: Optional[int] = None, num_workers: int = 0,
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD):
    """Few-shot train loader and held-out test loader over ``SyntheticShapes``.

    The test split uses a different seed (``test_seed``, default ``seed + 1_000_003``) so no
    image is shared with training. The train loader shuffles with a generator seeded by
    ``seed``, so the batch order is reproducible too. Returns ``(train, test, classnames)``.
    """
    test_seed = seed + 1_000_003 if test_seed is None else test_seed
    train = SyntheticShapes(n_classes, image_size, shots, seed=seed, mean=mean, std=std)
    test = SyntheticShapes(n_classes, image_size, n_test_per_class, seed=test_seed, mean=mean, std=std)
    gen = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=len(train) >= batch_size,
                              generator=gen, num_workers=num_workers)
    test_loader = DataLoader(test, batch_size=max(batch_size, 64), shuffle=False, num_workers=num_workers)
    return train_loader, test_loader, train.classnames
