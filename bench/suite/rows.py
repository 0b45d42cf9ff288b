"""The suite's result rows: which columns identify a measurement, and reading runs back from a CSV.

Every row of ``suite.csv`` and ``scaling.csv`` is one side of one measurement (``side``:
"fastprompt", "reference", or an attention provider), with its time in ``median_s`` and its peak
memory in ``peak_mb``; rows written by one invocation share a ``run_id``. Two rows measure the same
thing when their :data:`KEY_COLUMNS` agree (the device, commit and versions may differ: that is
what a comparison is for).
"""
from __future__ import annotations

import csv
import datetime as _dt
from typing import Dict, Iterable, List, Optional, Tuple

KEY_COLUMNS = ("kind", "case", "side", "axis", "status", "model", "images", "classes", "n_ctx", "eval_images",
               "eval_batch", "shape", "mode", "dtype", "N", "L", "H", "d", "G", "P", "causal")

Row = Dict[str, object]


def _text(value) -> str:
    """One spelling per value, whether it came from Python (4, 4.0, True) or back from a CSV ("4")."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value)
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() and "." in text else text


def row_key(row: Row) -> Tuple[str, ...]:
    return tuple(_text(row.get(column)) for column in KEY_COLUMNS)


def number(row: Row, column: str) -> Optional[float]:
    """``row[column]`` as a float, or None when empty or missing."""
    value = row.get(column)
    if value is None or value == "":
        return None
    return float(value)


def read_rows(path: str) -> List[Row]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_ids(rows: Iterable[Row]) -> List[str]:
    """The run ids in the order they first appear."""
    seen: Dict[str, None] = {}
    for row in rows:
        seen.setdefault(str(row.get("run_id", "")), None)
    return list(seen)


def select_run(rows: List[Row], run_id: Optional[str] = None) -> List[Row]:
    """The rows of ``run_id`` (default: the last run in the file)."""
    ids = run_ids(rows)
    if not ids:
        return []
    wanted = ids[-1] if run_id is None else run_id
    if wanted not in ids:
        raise ValueError(f"run {wanted!r} is not in the file; its runs are {', '.join(ids)}")
    return [row for row in rows if str(row.get("run_id", "")) == wanted]


def latest_per_kind(rows: List[Row], kinds: Iterable[str] = ("train", "eval", "attention")) -> List[Row]:
    """For each of ``kinds`` and each case, the rows of the last run that measured it: a table stays
    whole when a later run measured only some parts or cases (``--parts eval --cases maple`` after a
    full run), in the order the cases first appear."""
    picked: List[Row] = []
    for kind in kinds:
        of_kind = [row for row in rows if row.get("kind") == kind]
        for case in dict.fromkeys(str(row.get("case")) for row in of_kind):
            of_case = [row for row in of_kind if str(row.get("case")) == case]
            last = run_ids(of_case)[-1]
            picked += [row for row in of_case if str(row.get("run_id", "")) == last]
    return picked


def describe(row: Row) -> str:
    """A short name of what a row measured, e.g. ``train coop fastprompt 4x100``."""
    kind, case, side = (_text(row.get(c)) for c in ("kind", "case", "side"))
    if kind == "attention":
        size = f"{_text(row.get('mode'))} N={_text(row.get('N'))} L={_text(row.get('L'))}"
    elif kind == "eval":
        size = f"{_text(row.get('eval_images'))} images/{_text(row.get('eval_batch'))} x {_text(row.get('classes'))}"
    else:
        size = f"{_text(row.get('images'))}x{_text(row.get('classes'))}"
    status = _text(row.get("status"))
    return " ".join(part for part in (kind, case, side, size, status) if part)


def new_run_id() -> str:
    """A run id: the UTC start time, e.g. ``20261201T043900Z``."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def uniform(rows: List[Row]) -> List[Row]:
    """``rows`` with one set of columns (their union, in first-seen order; missing values empty), as
    a CSV writer needs them."""
    columns: Dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return [{column: row.get(column, "") for column in columns} for row in rows]
