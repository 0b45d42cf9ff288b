"""Datasets that need no files: ``SyntheticShapes`` (coloured shapes, generated on the fly)."""
from .synthetic import (CLIP_MEAN, CLIP_STD, COLOURS, MAX_CLASSES, SHAPES, SyntheticShapes,
                        class_names, class_pairs, make_loaders)

__all__ = ["SyntheticShapes", "make_loaders", "class_names", "class_pairs", "CLIP_MEAN", "CLIP_STD",
           "COLOURS", "SHAPES", "MAX_CLASSES"]
