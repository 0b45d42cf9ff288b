"""The raw sizes of the training images, read from their headers: all a plan needs of them.

The original's random crop draws a number of times that depends on the decoded image's size
(:func:`fastprompt.replay.draw_counts.crop_draws`); Dassl's ``read_image`` is
``Image.open(path).convert("RGB")``, whose size is the header's (no EXIF rotation). Opening a
file reads its header only, so sizing 10,000 images takes about a second; a run reads them once
and keeps them.

An image that cannot be opened here is a :class:`~fastprompt.errors.DataError` before training:
the original would crash on it, and skipping it (``DATASET.MAX_UNREADABLE``) would move every
later draw of the epoch off the original's.
"""
from __future__ import annotations

from typing import List, Sequence

from PIL import Image

from ..data.images import DECODE_ERRORS
from ..errors import DataError
from .draw_counts import Size

__all__ = ["read_image_sizes"]


def read_image_sizes(paths: Sequence[str]) -> List[Size]:
    """``[(width, height)]`` of each image, from its header, in the order of ``paths``."""
    sizes = []
    for path in paths:
        try:
            with Image.open(path) as img:
                sizes.append((int(img.size[0]), int(img.size[1])))
        except DECODE_ERRORS as exc:
            raise DataError(f"training image {path} cannot be read ({type(exc).__name__}: {exc}); replaying the "
                            f"original's batches cannot skip an image (every later random crop would move): "
                            f"replace or remove the file") from None
    return sizes
