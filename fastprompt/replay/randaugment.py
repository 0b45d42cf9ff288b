"""Dassl's ``RandAugment2``: POMP's ``randaugment2`` training augmentation.

Source: KaiyangZhou/Dassl.pytorch ``dassl/data/transforms/randaugment.py`` (``RandAugment2``,
``randaugment_list2``; the ops credit ildoonet/pytorch-randaugment and kakaobrain/fast-autoaugment),
used by amazon-science/prompt-pretraining (POMP, Ren et al., NeurIPS 2023) through
``INPUT.TRANSFORMS [..., "randaugment2", ...]`` in its ``*_randaug2`` configs. Dassl's
``build_transform`` puts it after the random resized crop and flip, before ``ToTensor``, with
``n = INPUT.RANDAUGMENT_N`` (default 2) and ``p = 0.6``.

Per image: ``n`` ops are drawn with replacement (``random.choices``) from the 15 below; each is
skipped when ``random.random() > p``, otherwise applied with the value ``low + m * (high - low)``,
``m = random.random()``. The geometric ops (rotate, shear, translate) then flip the sign of the
value with probability 1/2 (``random.random() > 0.5``). Translations are fractions of the image
size; affine maps and rotation use PIL's defaults (nearest neighbour, black fill). Random numbers
come from Python's ``random`` module, in the original's order, so a seeded sample
(:class:`fastprompt.data.order.SeededSamples`) gets the same augmentation however it is loaded,
and :mod:`fastprompt.replay.draw_counts` can advance a ``random.Random`` exactly as an image's
augmentation does without touching the image (:data:`SIGNED_OPS`: the ops that draw a sign).
"""
from __future__ import annotations

import random
from typing import Callable, Dict, Tuple

from PIL import Image, ImageEnhance, ImageOps

__all__ = ["RANDAUGMENT2_OPS", "SIGNED_OPS", "RandAugment2", "apply_op"]

# (op, low, high): randaugment_list2 of Dassl, in its order.
RANDAUGMENT2_OPS: Tuple[Tuple[str, float, float], ...] = (
    ("AutoContrast", 0, 1),
    ("Brightness", 0.1, 1.9),
    ("Color", 0.1, 1.9),
    ("Contrast", 0.1, 1.9),
    ("Equalize", 0, 1),
    ("Identity", 0, 1),
    ("Invert", 0, 1),
    ("Posterize", 4, 8),
    ("Rotate", -30, 30),
    ("Sharpness", 0.1, 1.9),
    ("ShearX", -0.3, 0.3),
    ("ShearY", -0.3, 0.3),
    ("Solarize", 0, 256),
    ("TranslateX", -0.3, 0.3),
    ("TranslateY", -0.3, 0.3),
)


# The geometric ops: each draws one more ``random.random()`` for its sign (``_random_sign``).
SIGNED_OPS = frozenset({"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"})


def _random_sign(value: float) -> float:
    return -value if random.random() > 0.5 else value


def _affine(img: Image.Image, coeffs) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, coeffs)


def _enhance(kind) -> Callable[[Image.Image, float], Image.Image]:
    return lambda img, v: kind(img).enhance(v)


def _shear_x(img, v):
    return _affine(img, (1, _random_sign(v), 0, 0, 1, 0))


def _shear_y(img, v):
    return _affine(img, (1, 0, 0, _random_sign(v), 1, 0))


def _translate_x(img, v):
    return _affine(img, (1, 0, _random_sign(v) * img.size[0], 0, 1, 0))


def _translate_y(img, v):
    return _affine(img, (1, 0, 0, 0, 1, _random_sign(v) * img.size[1]))


_OPS: Dict[str, Callable[[Image.Image, float], Image.Image]] = {
    "AutoContrast": lambda img, v: ImageOps.autocontrast(img),
    "Brightness": _enhance(ImageEnhance.Brightness),
    "Color": _enhance(ImageEnhance.Color),
    "Contrast": _enhance(ImageEnhance.Contrast),
    "Equalize": lambda img, v: ImageOps.equalize(img),
    "Identity": lambda img, v: img,
    "Invert": lambda img, v: ImageOps.invert(img),
    "Posterize": lambda img, v: ImageOps.posterize(img, int(v)),
    "Rotate": lambda img, v: img.rotate(_random_sign(v)),
    "Sharpness": _enhance(ImageEnhance.Sharpness),
    "ShearX": _shear_x,
    "ShearY": _shear_y,
    "Solarize": lambda img, v: ImageOps.solarize(img, v),
    "TranslateX": _translate_x,
    "TranslateY": _translate_y,
}


def apply_op(name: str, img: Image.Image, value: float) -> Image.Image:
    """Op ``name`` of :data:`RANDAUGMENT2_OPS` at ``value`` (geometric ops draw their sign)."""
    try:
        op = _OPS[name]
    except KeyError:
        raise ValueError(f"unknown RandAugment2 op {name!r} (ops: {[o[0] for o in RANDAUGMENT2_OPS]})") from None
    return op(img, value)


class RandAugment2:
    """``n`` random ops per PIL image, each kept with probability ``p`` at a random magnitude."""

    def __init__(self, n: int = 2, p: float = 0.6):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"RandAugment2: n (INPUT.RANDAUGMENT_N) must be an int >= 0, got {n!r}")
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"RandAugment2: p must lie in [0, 1], got {p!r}")
        self.n, self.p = n, float(p)
        self.ops = RANDAUGMENT2_OPS

    def __call__(self, img: Image.Image) -> Image.Image:
        for name, low, high in random.choices(self.ops, k=self.n):
            if random.random() > self.p:
                continue
            img = apply_op(name, img, low + random.random() * (high - low))
        return img

    def __repr__(self) -> str:
        return f"RandAugment2(n={self.n}, p={self.p})"
