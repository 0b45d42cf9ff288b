"""The original papers' published numbers, shown beside fastprompt's results tables.

One YAML file per method in ``fastprompt/train/published/`` (package data); each protocol section
(``base2new``, ``fewshot``, ``crossdataset``, ``dg``) has a ``source`` (paper and table), optional
``average_over`` (the datasets the published average covers, when not the protocol's standard set)
and ``rows``: ``<CoOp dataset folder or "average">: {<column>: accuracy %}``; the columns are
``base`` / ``novel`` / ``hm``, the shot counts, or ``accuracy``. Each file's header names the papers
and how sure each cell is.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Optional, Tuple

from ..train.config import read_yaml

__all__ = ["PUBLISHED_DIR", "Published", "published"]

PUBLISHED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "published")


@dataclasses.dataclass(frozen=True)
class Published:
    """One method's published numbers for one protocol."""

    source: str
    rows: Dict[str, Dict[Any, float]]
    average_over: Optional[Tuple[str, ...]] = None

    def value(self, row: str, column: Any) -> Optional[float]:
        cells = self.rows.get(row) or {}
        value = cells.get(column, cells.get(str(column)))
        return None if value is None else float(value)


def published(method: str, protocol: str) -> Optional[Published]:
    """The published numbers of ``method`` in ``protocol``; ``None`` when the papers give none."""
    path = os.path.join(PUBLISHED_DIR, f"{method}.yaml")
    if not os.path.isfile(path):
        return None
    section = read_yaml(path).get(protocol)
    if not section:
        return None
    over = section.get("average_over")
    return Published(str(section.get("source", "")), dict(section.get("rows") or {}),
                     tuple(over) if over else None)
