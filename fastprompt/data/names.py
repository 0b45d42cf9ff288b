"""The data layer's names that the command line lists in its ``--help``, standard library only.

``fastprompt demo --help`` states the synthetic dataset's class count and ``fastprompt data pack``
/ ``fastprompt pretrain`` list the ImageNet-21K universes; importing the modules that use them
(:mod:`.synthetic`, :mod:`.imagenet21k_classes`) would import numpy, PIL and torch first, so the
constants live here and those modules import them.
"""
from __future__ import annotations

from typing import Dict, Tuple

__all__ = ["COLOURS", "SHAPES", "MAX_CLASSES", "UNIVERSES", "NAME_STYLES"]

# The synthetic shapes dataset: each class is a (colour, shape) pair, colours as RGB.
COLOURS = {
    "red": (220, 30, 30),
    "blue": (30, 70, 230),
    "green": (30, 180, 50),
    "yellow": (240, 220, 20),
    "purple": (140, 40, 200),
    "orange": (255, 140, 0),
    "cyan": (20, 210, 220),
    "pink": (255, 120, 190),
}
SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross", "diamond", "pentagon")
MAX_CLASSES = len(COLOURS) * len(SHAPES)

# ImageNet-21K class universes: universe -> (timm table, expected number of classes)
UNIVERSES: Dict[str, Tuple[str, int]] = {
    "winter21": ("imagenet21k_miil_w21_synsets.txt", 10450),
    "fall11": ("imagenet21k_miil_synsets.txt", 11221),
    "full": ("imagenet22k_synsets.txt", 21841),
}
NAME_STYLES = ("lemmas", "first")  # how a class is named from its WordNet lemmas
