"""The change of every measurement between two benchmark runs (``suite.py --compare OLD.csv``).

Rows are matched by :data:`rows.KEY_COLUMNS` (what was measured, at which sizes), never by
position; an old file holding several runs contributes its latest row per key. For each match:
the time (``median_s``) old -> new and its relative change, the speed-up over the row's baseline
side, and the peak memory (``peak_mb``). Rows only in the new run are listed as new, keys only in
the old one as gone.

    python bench/suite/compare.py NEW.csv OLD.csv            # the last run of NEW against OLD
    python bench/suite/compare.py NEW.csv OLD.csv --run RUN_ID
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)  # run as a script: ``bench`` imports from the repository root
from bench.suite.rows import Row, describe, number, read_rows, row_key, select_run  # noqa: E402


def relative_change(old: Optional[float], new: Optional[float]) -> Optional[float]:
    """``new / old - 1`` (-0.25: a quarter less), or None when either is missing or old is 0."""
    if old is None or new is None or old == 0:
        return None
    return new / old - 1.0


@dataclass
class Change:
    label: str
    old: Row
    new: Row

    def _pair(self, column: str) -> Tuple[Optional[float], Optional[float]]:
        return number(self.old, column), number(self.new, column)

    @property
    def time_change(self) -> Optional[float]:
        return relative_change(*self._pair("median_s"))

    @property
    def peak_change(self) -> Optional[float]:
        return relative_change(*self._pair("peak_mb"))

    def line(self) -> str:
        parts = [self.label + ":"]
        old_s, new_s = self._pair("median_s")
        if old_s is not None or new_s is not None:
            parts.append(f"time {_num(old_s, ' s')} -> {_num(new_s, ' s')}{_percent(self.time_change)}")
        old_x, new_x = self._pair("speedup")
        if old_x is not None or new_x is not None:
            parts.append(f"speed-up {_num(old_x, 'x')} -> {_num(new_x, 'x')}")
        old_mb, new_mb = self._pair("peak_mb")
        if old_mb is not None or new_mb is not None:
            parts.append(f"peak {_num(old_mb, ' MiB')} -> {_num(new_mb, ' MiB')}{_percent(self.peak_change)}")
        return " ".join(parts[:1]) + " " + ", ".join(parts[1:])


def _num(value: Optional[float], unit: str) -> str:
    return "-" if value is None else f"{value:.4g}{unit}"


def _percent(change: Optional[float]) -> str:
    return "" if change is None else f" ({change * 100:+.1f}%)"


def compare_rows(new_rows: Sequence[Row], old_rows: Sequence[Row]):
    """``(changes, added, gone)``: a :class:`Change` per new row with an old match (the old file's
    last row of that key), the new rows without one, the old keys the new run did not measure."""
    old_by_key: Dict[Tuple[str, ...], Row] = {}
    for row in old_rows:
        old_by_key[row_key(row)] = row  # later rows (newer runs) win
    changes: List[Change] = []
    added: List[Row] = []
    seen = set()
    for row in new_rows:
        key = row_key(row)
        seen.add(key)
        if key in old_by_key:
            changes.append(Change(describe(row), old_by_key[key], row))
        else:
            added.append(row)
    gone = [row for key, row in old_by_key.items() if key not in seen]
    return changes, added, gone


def comparison_lines(new_rows: Sequence[Row], old_rows: Sequence[Row], old_name: str) -> List[str]:
    """The printed comparison: one line per matched row, then what is new and what is gone."""
    changes, added, gone = compare_rows(new_rows, old_rows)
    devices = lambda rows: ", ".join(sorted({str(r.get("device", "")) for r in rows})) or "?"  # noqa: E731
    lines = [f"compared with {old_name}: {len(changes)} matching rows, {len(added)} new, {len(gone)} not rerun "
             f"(old device: {devices(old_rows)}; new: {devices(new_rows)})"]
    lines += ["  " + change.line() for change in changes]
    lines += [f"  new: {describe(row)}" for row in added]
    lines += [f"  not rerun: {describe(row)}" for row in gone]
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("new", help="a suite.csv or scaling.csv")
    parser.add_argument("old", help="the CSV to compare against")
    parser.add_argument("--run", help="the run id of NEW to compare (default: its last run)")
    args = parser.parse_args(argv)
    new_rows = select_run(read_rows(args.new), args.run)
    print("\n".join(comparison_lines(new_rows, read_rows(args.old), args.old)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
