"""ImageNet-21K class universes and class names from timm's packaged WordNet tables (no download).

A *class universe* is the ordered list of WordNet ids (wnids) whose names make up the text side of
ImageNet-21K prompt pretraining (POMP, Ren et al., NeurIPS 2023; RPP, Chen et al. 2024):

* ``winter21`` — 10,450 classes: ImageNet-21K-P processed from the winter-2021 release (Ridnik et
  al., "ImageNet-21K Pretraining for the Masses", NeurIPS 2021 Datasets; Alibaba-MIIL/ImageNet21K).
  The universe of amazon-science/prompt-pretraining, whose loader reads the folders of
  ``imagenet21k_train`` only.
* ``fall11`` — 11,221 classes: ImageNet-21K-P processed from ``fall11_whole.tar`` (a superset of
  ``winter21``).
* ``full`` — 21,841 classes: every synset of ``fall11_whole.tar`` ("over twenty-thousand classes").
* ``folders`` — the class folders actually present, sorted (what POMP's loader does).

All lists are sorted by wnid, so a label is the wnid's index in its universe; for a ``winter21``
tree, ``winter21`` and ``folders`` give the same labels as the original. The tables are timm's
``timm/data/_info/imagenet21k_miil_w21_synsets.txt``, ``imagenet21k_miil_synsets.txt`` and
``imagenet22k_synsets.txt``; names come from ``imagenet_synset_to_lemma.txt`` (WordNet lemmas
joined by ``", "``, e.g. ``"organism, being"``). POMP names its classes from the MIIL semantic tree
(``imagenet21k_miil_tree.pth``, ``class_description``), also WordNet-derived but not shipped with
any package; a ``classnames.txt`` exported from it (``<wnid> <name>`` per line, CoOp's format) can be
passed as ``classnames_file`` and then takes precedence.

A :class:`ClassTable` (wnids, names, universe, name source) is written next to the data
(``classes.json`` + a CoOp-style ``classnames.txt``) and into runs, so the names used are on record.
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import DataError
from .imagenet import read_classnames
from .listing import atomic_write_text
from .names import NAME_STYLES, UNIVERSES

__all__ = ["UNIVERSES", "NAME_STYLES", "ClassTable", "universe_wnids", "wordnet_lemmas", "build_class_table",
           "read_class_table", "CLASS_TABLE_FILE"]

CLASS_TABLE_FILE = "classes.json"
_FORMAT = 1
_LEMMA_TABLE = "imagenet_synset_to_lemma.txt"


def _timm_table(name: str) -> str:
    import pkgutil

    try:
        data = pkgutil.get_data("timm.data", f"_info/{name}")
    except (ImportError, OSError) as exc:
        raise DataError(f"cannot read timm's packaged table timm/data/_info/{name} ({exc}); "
                        "install timm >= 0.9 (open_clip_torch depends on it)") from None
    if data is None:
        raise DataError(f"timm's package has no timm/data/_info/{name}; install timm >= 0.9")
    return data.decode("utf-8")


@functools.lru_cache(maxsize=None)
def universe_wnids(universe: str) -> Tuple[str, ...]:
    """The sorted wnids of ``universe`` (``winter21`` 10,450, ``fall11`` 11,221, ``full`` 21,841)."""
    if universe not in UNIVERSES:
        raise DataError(f"unknown ImageNet-21K universe {universe!r}; choose one of "
                        f"{', '.join(UNIVERSES)} or 'folders' (the class folders present)")
    table, expected = UNIVERSES[universe]
    wnids = tuple(line.strip() for line in _timm_table(table).splitlines() if line.strip())
    if len(wnids) != expected or len(set(wnids)) != expected:
        raise DataError(f"timm's {table} lists {len(wnids)} ({len(set(wnids))} distinct) wnids, expected "
                        f"{expected} for {universe}; is the installed timm modified?")
    return tuple(sorted(wnids))


@functools.lru_cache(maxsize=None)
def wordnet_lemmas() -> Dict[str, str]:
    """``{wnid: "lemma, lemma, ..."}`` for all 21,843 ImageNet synsets (timm's lemma table)."""
    out = {}
    for line in _timm_table(_LEMMA_TABLE).splitlines():
        wnid, _, lemmas = line.partition("\t")
        if wnid:
            out[wnid.strip()] = lemmas.strip()
    return out


@dataclass
class ClassTable:
    """Label ``i`` is ``wnids[i]`` named ``names[i]``.

    ``universe``: ``winter21`` / ``fall11`` / ``full`` / ``folders``; ``source``: where the names
    came from (``timm lemmas``, ``timm first lemma`` or a ``classnames.txt`` path).
    """

    wnids: List[str]
    names: List[str]
    universe: str
    source: str
    extra: Dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.wnids)

    @functools.cached_property
    def label_of(self) -> Dict[str, int]:
        return {w: i for i, w in enumerate(self.wnids)}

    def to_json(self) -> dict:
        return {"format": _FORMAT, "universe": self.universe, "source": self.source, "num_classes": len(self),
                "extra": self.extra, "classes": [[w, n] for w, n in zip(self.wnids, self.names)]}

    def write(self, folder: str) -> str:
        """Write ``classes.json`` and ``classnames.txt`` (``<wnid> <name>`` lines) into ``folder``
        (atomically); returns the JSON path."""
        path = os.path.join(folder, CLASS_TABLE_FILE)
        atomic_write_text(path, json.dumps(self.to_json(), indent=0, ensure_ascii=False) + "\n")
        atomic_write_text(os.path.join(folder, "classnames.txt"),
                          "".join(f"{w} {n}\n" for w, n in zip(self.wnids, self.names)))
        return path


def read_class_table(path: str) -> ClassTable:
    """A :class:`ClassTable` from ``classes.json`` (or the folder holding it)."""
    if os.path.isdir(path):
        path = os.path.join(path, CLASS_TABLE_FILE)
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise DataError(f"cannot read the class table {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from None
    classes = data.get("classes") if isinstance(data, dict) else None
    if classes is None or data.get("format") != _FORMAT or not isinstance(classes, list) or not classes:
        raise DataError(f"{path} is not a fastprompt class table (format {_FORMAT} with a 'classes' list)")
    try:
        wnids, names = (list(x) for x in zip(*classes))
    except (TypeError, ValueError):
        raise DataError(f"{path}: 'classes' must be [wnid, name] pairs") from None
    if len(set(wnids)) != len(wnids):
        raise DataError(f"{path}: duplicate wnids in the class table")
    return ClassTable(wnids, names, str(data.get("universe", "")), str(data.get("source", "")),
                      dict(data.get("extra") or {}))


def _names(wnids: Sequence[str], style: str, classnames_file: Optional[str]) -> Tuple[List[str], str]:
    if style not in NAME_STYLES:
        raise DataError(f"names must be one of {NAME_STYLES}, got {style!r}")
    given: Dict[str, str] = dict(read_classnames(classnames_file)) if classnames_file else {}
    lemmas = wordnet_lemmas()
    missing = [w for w in wnids if w not in given and w not in lemmas]
    if missing:
        raise DataError(f"no class name for {len(missing)} wnid(s) ({', '.join(missing[:5])}"
                        f"{' ...' if len(missing) > 5 else ''}) in timm's {_LEMMA_TABLE}"
                        + (f" or {classnames_file}" if classnames_file else "")
                        + "; pass classnames_file=<wnid> <name> lines for them")
    out = []
    for w in wnids:
        if w in given:
            out.append(given[w])
        else:
            out.append(lemmas[w] if style == "lemmas" else lemmas[w].split(", ")[0])
    source = "timm lemmas" if style == "lemmas" else "timm first lemma"
    if given:
        source = f"{classnames_file} (else {source})"
    return out, source


def build_class_table(folders: Optional[Sequence[str]] = None, universe: str = "folders", names: str = "lemmas",
                      classnames_file: Optional[str] = None, where: str = "the data") -> ClassTable:
    """The class table for a set of class folders (wnids) under ``universe``.

    ``universe="folders"`` uses the sorted ``folders``; a named universe uses its timm table and
    requires every folder to belong to it (:class:`DataError` naming the strays otherwise). Classes
    of the universe with no folder stay in the table (their names are negatives on the text side).
    """
    if universe == "folders":
        if not folders:
            raise DataError(f"universe='folders' needs class folders, and {where} has none")
        wnids = sorted(set(folders))
    else:
        wnids = list(universe_wnids(universe))
        if folders:
            members = set(wnids)
            strays = sorted(f for f in set(folders) if f not in members)
            if strays:
                raise DataError(f"{len(strays)} class folder(s) of {where} are not in the {universe} universe "
                                f"({len(wnids)} classes): {', '.join(strays[:5])}{' ...' if len(strays) > 5 else ''}"
                                "; choose a larger universe (winter21 < fall11 < full) or universe='folders'")
    label_names, source = _names(wnids, names, classnames_file)
    return ClassTable(wnids, label_names, universe, source)
