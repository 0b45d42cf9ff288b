"""The records every loader returns: ``Item`` (one image) and ``Dataset`` (train/val/test + class
names). Problems with the data on disk or with the arguments are :class:`fastprompt.errors.DataError`,
raised at load time with the file or value named.

``Item`` carries the three fields of Dassl's ``Datum`` that CoOp-family code uses (``impath``,
``label``, ``classname``; KaiyangZhou/Dassl.pytorch ``dassl/data/datasets/base_dataset.py``),
under the names ``path``, ``label`` and ``classname``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Sequence

from ..errors import DataError

__all__ = ["Item", "Dataset", "classnames_of", "items_to_rows", "parse_label"]


class Item(NamedTuple):
    """One labelled image: absolute ``path``, integer ``label`` (0-based), ``classname``."""

    path: str
    label: int
    classname: str


@dataclass
class Dataset:
    """A loaded dataset: ``classnames`` in label order and the ``train``/``val``/``test`` lists.

    ``image_dir`` is the folder the original split files are relative to (rows written by
    :func:`items_to_rows` are relative to it). ``fewshot_source`` says where the few-shot subset
    came from: ``"all"`` (no few-shot), ``"sampled"`` or the path of an original
    ``split_fewshot/*.pkl`` that was read.
    """

    name: str
    root: str
    image_dir: str
    classnames: List[str]
    train: List[Item]
    val: List[Item]
    test: List[Item]
    shots: int = 0
    seed: int = 1
    subsample: str = "all"
    fewshot_source: str = "all"
    notes: List[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def lab2cname(self) -> Dict[int, str]:
        return dict(enumerate(self.classnames))

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, {self.num_classes} classes, train={len(self.train)}, "
                f"val={len(self.val)}, test={len(self.test)}, shots={self.shots}, seed={self.seed}, "
                f"subsample={self.subsample!r})")


def parse_label(value, where: str) -> Optional[int]:
    """An integer label >= 0 from ``value`` (an int, or text such as ``"3"``); ``None`` for an
    empty value; :class:`DataError` naming ``where`` for anything else."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        label = int(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: label must be an integer, got {value!r}") from None
    if label < 0:
        raise DataError(f"{where}: label must be >= 0, got {label}")
    return label


def classnames_of(items: Sequence[Item], what: str, expected: Optional[int] = None) -> List[str]:
    """Class names in label order, read off ``items`` as Dassl's ``DatasetBase.get_lab2cname`` does.

    Dassl takes the names from the training items; a label in ``0..max`` with no item would
    leave a hole (the original then mislabels silently), so that is an error here naming the
    label. ``expected`` (the number of classes) also catches trailing empty classes.
    """
    names: Dict[int, str] = {}
    for item in items:
        if item.label not in names:
            names[item.label] = item.classname
    if not names:
        raise DataError(f"{what}: no items, so no classes")
    n = max(names) + 1 if expected is None else expected
    missing = [lab for lab in range(n) if lab not in names]
    if missing or min(names) < 0 or max(names) >= n:
        shown = ", ".join(str(m) for m in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise DataError(f"{what}: labels must cover 0..{n - 1} with at least one item each; "
                        f"empty class label(s): {shown or 'none'}, labels seen: "
                        f"{min(names)}..{max(names)}")
    return [names[lab] for lab in range(n)]


def items_to_rows(items: Sequence[Item], image_dir: str) -> List[list]:
    """``[[relative_path, label, classname], ...]``: the rows of a CoOp ``split_zhou_*.json``."""
    import os

    prefix = os.path.join(image_dir, "")
    out = []
    for it in items:
        rel = it.path[len(prefix):] if it.path.startswith(prefix) else it.path
        out.append([rel, it.label, it.classname])
    return out
