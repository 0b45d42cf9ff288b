"""Writing the results tables: CSV, Markdown and a PNG plot, each written atomically.

CSV: one line per row, ``protocol, method, shots, dataset``, then per column ``<col>`` (mean),
``<col>_std``, ``<col>_seeds`` (seeds averaged, ``;``-separated) and ``published_<col>`` (the published
number, empty when none), then ``published_source`` and ``published_checked`` (``true`` / ``false``:
whether the row's published numbers were checked against that source; empty without them).
Markdown: ``mean ± std`` cells, the published numbers in ``(published)`` columns, a published number
not checked against its source marked ``†``; underneath, every published block of the method with
its source, its rows and whether it was checked, then the notes. PNG: the table as a bar chart (line
chart against the shots for few-shot and multi-task) with the published numbers as markers; it needs
matplotlib and is skipped with a note when matplotlib is not installed.
"""
from __future__ import annotations

import csv
import io
import os
from typing import Dict, List, Optional, Sequence

from ..train.state import atomic_write, write_text
from .published import Block
from .tables import DISPLAY, Table

__all__ = ["table_csv", "table_markdown", "plot_table", "write_tables", "UNCHECKED"]

UNCHECKED = "†"  # marks a published number not (yet) checked against its source


def _num(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.2f}"


def _csv_key(col: str) -> str:
    return f"k{col}" if col.isdigit() else col


def table_csv(table: Table) -> str:
    cols = [c for c, _ in table.columns]
    header = ["protocol", "method", "shots", "dataset"]
    for c in cols:
        k = _csv_key(c)
        header += [k, f"{k}_std", f"{k}_seeds", f"published_{k}"]
    header += ["published_source", "published_checked"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in table.rows:
        line = [table.protocol, table.method, "" if table.shots is None else table.shots, row.key]
        for c in cols:
            cell = row.cells.get(c)
            line += [_num(cell.mean) if cell else "", _num(cell.std) if cell else "",
                     ";".join(map(str, cell.seeds)) if cell else "", _num(row.published.get(c))]
        block = row.published_from if row.published else None
        line += [block.source, "true" if block.checked else "false"] if block else ["", ""]
        writer.writerow(line)
    return buf.getvalue()


def _cell_text(cell) -> str:
    if cell is None:
        return "–"
    return f"{cell.mean:.2f}" if cell.std is None else f"{cell.mean:.2f} ± {cell.std:.2f}"


def _published_text(row, col: str) -> str:
    value = row.published.get(col)
    if value is None:
        return "–"
    unchecked = row.published_from is not None and not row.published_from.checked
    return f"{value:.2f}{UNCHECKED if unchecked else ''}"


def _block_line(block: Block, columns: Dict[str, str]) -> str:
    """One published block as a sentence: its source, its rows, whether it was checked against it."""
    state = "checked against it" if block.checked else f"{UNCHECKED} not checked against it yet"
    if block.compared:
        rows = ", ".join(DISPLAY.get(r, r) for r in block.rows)
        return f"Published: {block.source} (rows: {rows}; {state})."
    values = "; ".join(f"{DISPLAY.get(r, r)}: " + ", ".join(f"{columns.get(k, k)} {v:.2f}" for k, v in cells.items())
                       for r, cells in block.rows.items())
    return f"Also published, not beside a row: {block.source}: {values} ({block.note}; {state})."


def table_markdown(table: Table) -> str:
    titles = [t for _, t in table.columns]
    has_pub = any(r.published for r in table.rows)
    head = [table.row_title] + titles + ([f"{t} (published)" for t in titles] if has_pub else []) + ["Seeds"]
    lines = [f"## {table.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table.rows:
        cells = [_cell_text(row.cells.get(c)) for c, _ in table.columns]
        pubs = [_published_text(row, c) for c, _ in table.columns] if has_pub else []
        seeds = sorted({s for cell in row.cells.values() for s in cell.seeds})
        label = f"**{row.label}**" if row.key == "average" else row.label
        lines.append("| " + " | ".join([label] + cells + pubs + [", ".join(map(str, seeds))]) + " |")
    lines.append("")
    lines.append("Accuracy in %; mean ± std over seeds (population std, as CoOp's parse_test_res.py).")
    if any(r.published_from is not None and not r.published_from.checked for r in table.rows if r.published):
        lines.append(f"{UNCHECKED} A published number not checked against its source yet: re-check it there before "
                     "quoting it.")
    columns = dict(table.columns)
    lines += [_block_line(b, columns) for b in table.blocks]
    lines += table.notes
    return "\n".join(lines) + "\n"


def plot_table(table: Table, path: str) -> bool:
    """The table as a PNG; ``False`` (nothing written) without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(table.rows) + 2), 3.8))
    if table.protocol in ("fewshot", "multitask"):  # accuracy against K (the shot columns; not "avg")
        shot_cols = [c for c, _ in table.columns if c.isdigit()]
        xs = [int(c) for c in shot_cols]
        for row in table.rows:
            pts = [(int(c), row.cells[c].mean) for c in shot_cols if c in row.cells]
            style = dict(linewidth=2.5, color="black") if row.key == "average" else dict(linewidth=1)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=row.label, **style)
            pub = [(int(c), row.published[c]) for c in shot_cols if c in row.published]
            if pub:
                ax.plot([p[0] for p in pub], [p[1] for p in pub], "k--", marker="x", label=f"{row.label} (published)")
        ax.set(xscale="log", xticks=xs, xlabel="shots per class")
        ax.set_xticklabels([str(x) for x in xs])
    else:
        n = len(table.columns)
        width = 0.8 / n
        for j, (col, title) in enumerate(table.columns):
            xs = [i + (j - (n - 1) / 2) * width for i in range(len(table.rows))]
            means = [r.cells[col].mean if col in r.cells else 0.0 for r in table.rows]
            errs = [(r.cells[col].std or 0.0) if col in r.cells else 0.0 for r in table.rows]
            ax.bar(xs, means, width, yerr=errs, capsize=2, label=title)
            pub = [(x, r.published[col]) for x, r in zip(xs, table.rows) if col in r.published]
            if pub:
                ax.plot([p[0] for p in pub], [p[1] for p in pub], "k_", markersize=14, markeredgewidth=2,
                        label="published" if j == 0 else None)
        ax.set_xticks(range(len(table.rows)))
        ax.set_xticklabels([r.label for r in table.rows], rotation=30, ha="right")
    ax.set(ylabel="accuracy (%)", title=table.title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)
    return True


def write_tables(tables: Sequence[Table], folder: str, plot: bool = True) -> Dict[str, List[str]]:
    """Write each table as ``<folder>/<name>.csv``, ``.md`` and ``.png``; returns the paths and notes."""
    os.makedirs(folder, exist_ok=True)
    written: List[str] = []
    notes: List[str] = []
    for table in tables:
        base = os.path.join(folder, table.name)
        write_text(base + ".csv", table_csv(table))
        write_text(base + ".md", table_markdown(table))
        written += [base + ".csv", base + ".md"]
        if plot:
            if plot_table(table, base + ".png"):
                written.append(base + ".png")
            else:
                notes.append("matplotlib is not installed: no PNG plots (pip install matplotlib)")
                plot = False
    return {"written": written, "notes": notes}
