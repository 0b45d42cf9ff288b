"""Other methods' published numbers, shown beside fastprompt's results tables, each with its source.

One YAML file per method in ``fastprompt/protocols/published/`` (package data): ``method: <name>``,
then per protocol (``base2new``, ``fewshot``, ``crossdataset``, ``dg``) a list of blocks. A block is
numbers that share one source:

* ``source`` — where they are printed: a paper and its table, or a repository, commit and file;
* ``checked`` — ``true`` only when every number of the block was compared with that source (the
  file's header says when and how); ``false`` marks a number that still has to be checked;
* ``rows`` — ``<CoOp dataset folder or "average">: {<column>: accuracy %}``; the columns are
  ``base`` / ``novel`` / ``hm``, the shot counts, or ``accuracy``. The ``multitask`` protocol's rows
  are ``<multi-task dataset>/<SoftCPT variant>`` (``general10/NATA``) and its columns the shot counts
  and ``avg`` (their mean, which the loader recomputes);
* ``hm_of`` (base-to-novel blocks with an average HM) — how the source defines its average HM:
  ``averages`` (the HM of the average Base and the average Novel, CoCoOp Table 1) or ``datasets``
  (the mean of the per-dataset HMs); fastprompt's average row is computed the same way;
* ``average_over`` — the datasets the published average covers, when not the protocol's standard
  set (:func:`standard_coverage`);
* ``role`` — ``compared`` (default: shown beside fastprompt's rows; a row comes from one compared
  block at most) or ``reference`` (shown as a note, with its ``note`` saying why it is not beside).

:func:`published` validates a file when it reads it: a block without ``source`` or ``checked``, an
unknown key, row or column, a value outside 0-100, or an average that its own block's rows or
definition contradict is a :class:`~fastprompt.errors.ConfigError` naming the file, the protocol and
the block or row.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Optional, Tuple

from ..errors import ConfigError
from ..train.config import read_yaml
from .definitions import DATASETS_11, DEFAULT_SHOTS, DG_TARGETS, MULTITASK_DATASETS, PROTOCOLS, XD_TARGETS

__all__ = ["PUBLISHED_DIR", "HM_OF", "Block", "Published", "published", "load_published", "standard_coverage"]

PUBLISHED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "published")
HM_OF = ("averages", "datasets")
ROLES = ("compared", "reference")
_KEYS = {"source", "checked", "rows", "hm_of", "average_over", "role", "note"}
_COLUMNS = {"base2new": ("base", "novel", "hm"), "crossdataset": ("accuracy",), "dg": ("accuracy",)}
_ROWS = frozenset(DATASETS_11 + DG_TARGETS + ("average",))
# Published cells carry 2 decimals (POMP's 1): each is off by up to half a unit of its last place,
# and so is a mean of such cells; an average or HM recomputed from rounded cells may differ from the
# printed one by the two roundings together.
_ROUNDING = 0.011


def standard_coverage(protocol: str) -> Tuple[str, ...]:
    """The datasets a protocol's published average covers unless a block says otherwise."""
    return {"base2new": DATASETS_11, "fewshot": DATASETS_11, "crossdataset": XD_TARGETS, "dg": DG_TARGETS}[protocol]


@dataclasses.dataclass(frozen=True)
class Block:
    """Published numbers that share one source.

    ``rows``: ``{row: {column: accuracy %}}``, columns as strings (``"base"``, ``"16"``, ...);
    ``hm_of``: ``"averages"`` / ``"datasets"`` for a base-to-novel block with an average HM, else ``None``.
    """

    source: str
    checked: bool
    rows: Dict[str, Dict[str, float]]
    hm_of: Optional[str] = None
    average_over: Optional[Tuple[str, ...]] = None
    compared: bool = True
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Published:
    """One method's published numbers for one protocol: its blocks, in file order."""

    method: str
    protocol: str
    blocks: Tuple[Block, ...]

    def block_of(self, row: str) -> Optional[Block]:
        """The compared block that gives ``row`` (at most one does: the loader checks)."""
        return next((b for b in self.blocks if b.compared and row in b.rows), None)

    def value(self, row: str, column: Any) -> Optional[float]:
        block = self.block_of(row)
        return None if block is None else block.rows[row].get(str(column))

    @property
    def average_over(self) -> Tuple[str, ...]:
        """The datasets the compared average covers."""
        block = self.block_of("average")
        return (block.average_over if block and block.average_over else None) or standard_coverage(self.protocol)

    @property
    def hm_of(self) -> Optional[str]:
        """How the compared average HM is defined (``None``: no published average HM)."""
        block = self.block_of("average")
        return block.hm_of if block else None


def _columns(protocol: str) -> Tuple[str, ...]:
    if protocol == "multitask":
        return tuple(str(k) for k in DEFAULT_SHOTS["multitask"]) + ("avg",)
    return _COLUMNS.get(protocol) or tuple(str(k) for k in DEFAULT_SHOTS["fewshot"])


def _rows(protocol: str) -> frozenset:
    if protocol == "multitask":
        from ..train.softcpt_variants import VARIANTS

        return frozenset(f"{d}/{v}" for d in MULTITASK_DATASETS for v in VARIANTS)
    return _ROWS


def _check_shot_average(block: Block, fail) -> None:
    """A multitask row's ``avg`` is the mean of its five shot columns, up to the printed rounding."""
    shots = [str(k) for k in DEFAULT_SHOTS["multitask"]]
    for row, cells in block.rows.items():
        if "avg" in cells and all(k in cells for k in shots):
            expected = sum(cells[k] for k in shots) / len(shots)
            if abs(expected - cells["avg"]) > _ROUNDING:
                raise fail(f"row {row!r}: avg {cells['avg']} is not the mean of its shot columns ({expected:.2f})")


def _block(path: str, protocol: str, index: int, raw: Any) -> Block:
    rows = raw.get("rows") if isinstance(raw, dict) else None
    names = f" (rows {', '.join(map(str, rows))})" if isinstance(rows, dict) and rows else ""
    where = f"{path}: {protocol} block {index + 1}{names}"

    def fail(what: str) -> ConfigError:
        return ConfigError(f"{where}: {what}")

    if not isinstance(raw, dict):
        raise fail(f"expected a mapping with source, checked and rows, got {type(raw).__name__}")
    unknown = sorted(set(map(str, raw)) - _KEYS)
    if unknown:
        raise fail(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(_KEYS))})")
    for key in ("source", "checked", "rows"):
        if key not in raw:
            raise fail(f"has no {key!r}: every published number needs 'source' (a paper and its table, or a "
                       "repository, commit and file) and 'checked: true|false' (true only when compared with "
                       "that source)")
    source, checked = raw["source"], raw["checked"]
    if not isinstance(source, str) or not source.strip():
        raise fail(f"'source' must name a paper and table or a repository and file, got {source!r}")
    if not isinstance(checked, bool):
        raise fail(f"'checked' must be true or false, got {checked!r}")
    role = raw.get("role", "compared")
    if role not in ROLES:
        raise fail(f"'role' must be one of {', '.join(ROLES)}, got {role!r}")
    note = raw.get("note", "")
    if role == "reference" and not (isinstance(note, str) and note.strip()):
        raise fail("a 'reference' block needs a 'note' saying why its numbers are not beside fastprompt's rows")
    if not isinstance(rows, dict) or not rows:
        raise fail("'rows' must map datasets (or 'average') to {column: accuracy}")
    columns = _columns(protocol)
    known_rows = _rows(protocol)
    parsed: Dict[str, Dict[str, float]] = {}
    for row, cells in rows.items():
        if row not in known_rows:
            what = "'<dataset>/<SoftCPT variant>'" if protocol == "multitask" else "a CoOp dataset folder or 'average'"
            raise fail(f"row {row!r} is not {what} (known: {', '.join(sorted(known_rows))})")
        if not isinstance(cells, dict) or not cells:
            raise fail(f"row {row!r} must map columns ({', '.join(columns)}) to accuracies")
        parsed[row] = {}
        for column, value in cells.items():
            if str(column) not in columns:
                raise fail(f"row {row!r}: column {column!r} is not one of {', '.join(columns)}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
                raise fail(f"row {row!r}, column {column!r}: expected an accuracy in % (0-100), got {value!r}")
            parsed[row][str(column)] = float(value)
    average = parsed.get("average", {})
    hm_of = raw.get("hm_of")
    if "hm" in average and hm_of not in HM_OF:
        raise fail(f"its average has an HM: 'hm_of' must say how the source defines it, 'averages' (HM of the "
                   f"average Base and Novel) or 'datasets' (mean of the per-dataset HMs), got {hm_of!r}")
    if hm_of is not None and "hm" not in average:
        raise fail("'hm_of' defines an average HM, and the block has none")
    over = raw.get("average_over")
    if over is not None:
        if not average or not isinstance(over, list) or not over or not set(over) <= _ROWS - {"average"}:
            raise fail(f"'average_over' must list the CoOp dataset folders of the block's average row, got {over!r}")
        over = tuple(over)
    block = Block(source.strip(), checked, parsed, hm_of, over, role == "compared", note.strip())
    _check_average(block, protocol, fail)
    if protocol == "multitask":
        _check_shot_average(block, fail)
    return block


def _hm(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def _check_average(block: Block, protocol: str, fail) -> None:
    """The block's own average agrees with its rows and its ``hm_of``, up to the printed rounding."""
    average = block.rows.get("average")
    if not average:
        return
    if block.hm_of == "averages" and {"base", "novel"} <= set(average):
        expected = _hm(average["base"], average["novel"])
        if abs(expected - average["hm"]) > _ROUNDING:
            raise fail(f"average hm {average['hm']} is not the HM of its average base and novel ({expected:.2f}), "
                       "as 'hm_of: averages' says: check the numbers, or 'hm_of: datasets'")
    over = block.average_over or standard_coverage(protocol)
    if not all(d in block.rows for d in over):
        return  # not every dataset is in the block: nothing to recompute it from
    for column, value in average.items():
        if column == "hm" and block.hm_of == "averages":
            continue
        expected = sum((_hm(block.rows[d]["base"], block.rows[d]["novel"]) if column == "hm" and
                        "hm" not in block.rows[d] else block.rows[d][column]) for d in over) / len(over)
        if abs(expected - value) > _ROUNDING:
            raise fail(f"average {column} {value} is not the mean of the block's {len(over)} rows ({expected:.2f})")


def load_published(path: str) -> Dict[str, Published]:
    """Every protocol's published numbers in one method's file, validated (see the module docstring)."""
    data = read_yaml(path)
    method = os.path.splitext(os.path.basename(path))[0]
    if data.get("method") != method:
        raise ConfigError(f"{path}: 'method' must be {method!r} (the file's name), got {data.get('method')!r}")
    unknown = sorted(set(map(str, data)) - set(PROTOCOLS) - {"method"})
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)} (known: method, {', '.join(PROTOCOLS)})")
    out: Dict[str, Published] = {}
    for protocol in PROTOCOLS:
        if protocol not in data:
            continue
        raw = data[protocol]
        if not isinstance(raw, list) or not raw:
            raise ConfigError(f"{path}: {protocol} must be a list of blocks (source, checked, rows), "
                              f"got {type(raw).__name__}")
        blocks = tuple(_block(path, protocol, i, b) for i, b in enumerate(raw))
        seen: Dict[str, Block] = {}
        for block in blocks:
            for row in block.rows if block.compared else ():
                if row in seen:
                    raise ConfigError(f"{path}: {protocol} row {row!r} is in two compared blocks ({seen[row].source!r} "
                                      f"and {block.source!r}); mark one 'role: reference' with a note")
                seen[row] = block
        out[protocol] = Published(method, protocol, blocks)
    return out


def published(method: str, protocol: str) -> Optional[Published]:
    """The published numbers of ``method`` in ``protocol``; ``None`` when its file gives none."""
    path = os.path.join(PUBLISHED_DIR, f"{method}.yaml")
    if not os.path.isfile(path):
        return None
    return load_published(path).get(protocol)
