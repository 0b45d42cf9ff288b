"""PNG plots of the suite's rows (matplotlib, headless).

* ``speedup.png``: per method, the fastprompt speed-up over the reference of the training step and of
  the evaluation pass (the training step's target as a tick);
* ``memory.png``: per method, the peak memory of each side, training step and evaluation pass (log scale);
* ``scaling_classes.png`` / ``scaling_batch.png``: step time and peak memory vs the number of classes /
  the batch size, per method, fastprompt solid and reference dashed; an ``x`` where a side stopped
  (its budget), and on the classes axis the fitted line continued (dotted) to its projection at
  21,841 classes (star).

Without matplotlib :func:`write_plots` writes nothing and says so.
"""
from __future__ import annotations

import os
from typing import Dict, List, Sequence

from bench.suite.rows import Row, number

SIDE_STYLE = {"fastprompt": dict(linestyle="-", marker="o"), "reference": dict(linestyle="--", marker="s")}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _cases(rows: Sequence[Row], kind: str) -> List[str]:
    return list(dict.fromkeys(str(r["case"]) for r in rows if r.get("kind") == kind))


def _value(rows: Sequence[Row], kind: str, case: str, side: str, column: str):
    for row in rows:
        if (row.get("kind"), str(row.get("case")), row.get("side")) == (kind, case, side):
            return number(row, column)
    return None


def plot_speedup(rows: Sequence[Row], path: str) -> str:
    plt = _pyplot()
    cases = list(dict.fromkeys(_cases(rows, "train") + _cases(rows, "eval")))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(cases)), 4))
    width = 0.38
    for offset, kind, label in ((-width / 2, "train", "training step"), (width / 2, "eval", "evaluation")):
        values = [_value(rows, kind, c, "fastprompt", "speedup") for c in cases]
        if not any(values):  # a part this run did not measure: no empty bars labelled 0.0x
            continue
        bars = ax.bar([i + offset for i in range(len(cases))], [v or 0.0 for v in values], width, label=label)
        ax.bar_label(bars, labels=[f"{v:.1f}x" if v else "" for v in values], fontsize=7)
    targets = [_value(rows, "train", c, "fastprompt", "target") for c in cases]
    if any(targets):
        ax.scatter([i - width / 2 for i, t in enumerate(targets) if t], [t for t in targets if t], marker="_",
                   s=300, color="black", label="training-step target", zorder=3)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(cases)), cases)
    ax.set_ylabel("speed-up over the reference (x)")
    ax.set_title(f"fastprompt vs reference ({_device(rows)})", fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_memory(rows: Sequence[Row], path: str) -> str:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    width = 0.38
    for ax, kind, title in ((axes[0], "train", "training step"), (axes[1], "eval", "evaluation")):
        cases = _cases(rows, kind)
        if not cases:  # a part this run did not measure
            ax.set_title(f"peak memory, {title}: not measured in this run", fontsize=9)
            continue
        for offset, side in ((-width / 2, "fastprompt"), (width / 2, "reference")):
            values = [_value(rows, kind, c, side, "peak_mb") or 0.0 for c in cases]
            ax.bar([i + offset for i in range(len(cases))], values, width, label=side)
        ax.set_xticks(range(len(cases)), cases, rotation=30)
        ax.set_yscale("log")
        ax.set_title(f"peak memory, {title}", fontsize=9)
    axes[0].set_ylabel("MiB above the model (log)")
    axes[0].legend(fontsize=8)
    fig.suptitle(_device(rows), fontsize=8)
    return _save(fig, path)


def plot_scaling(rows: Sequence[Row], axis: str, path: str) -> str:
    """Time and memory vs ``axis`` ("classes" or "batch") from scaling rows (measured, stopped, fit)."""
    plt = _pyplot()
    column = "classes" if axis == "classes" else "images"
    rows = [r for r in rows if r.get("kind") == "scaling" and r.get("axis") == axis]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, method in enumerate(dict.fromkeys(str(r["case"]) for r in rows)):
        color = colors[i % len(colors)]
        for side, style in SIDE_STYLE.items():
            mine = [r for r in rows if str(r["case"]) == method and r.get("side") == side]
            measured = [r for r in mine if r.get("status") == "measured"]
            if not measured:
                continue
            xs = [number(r, column) for r in measured]
            for ax, value in ((axes[0], "median_s"), (axes[1], "peak_mb")):
                ax.plot(xs, [number(r, value) for r in measured], color=color, label=f"{method} {side}", **style)
                if any(r.get("status") == "stopped" for r in mine):
                    ax.plot(xs[-1], number(measured[-1], value), marker="x", markersize=12, color="black")
            fit = [r for r in mine if r.get("status") == "fit" and number(r, "projected_units")
                   and number(r, "projected_s") > 0]  # a fit of noise can fall below 0: nothing to draw
            if fit:
                x_end = number(fit[0], "projected_units")
                for ax, value, projected in ((axes[0], "median_s", "projected_s"),
                                             (axes[1], "peak_mb", "projected_mb")):
                    ax.plot([xs[-1], x_end], [number(measured[-1], value), number(fit[0], projected)], color=color,
                            linestyle=":")
                    ax.plot(x_end, number(fit[0], projected), marker="*", markersize=10, color=color)
    label = "number of classes" if axis == "classes" else "batch size (images)"
    ticks = sorted({number(r, column) for r in rows if r.get("status") == "measured"}
                   | {number(r, "projected_units") for r in rows if number(r, "projected_units")})
    from matplotlib.ticker import FuncFormatter, NullFormatter

    for ax, ylabel in ((axes[0], "step time (s)"), (axes[1], "peak memory (MiB above the model)")):
        ax.set_xscale("log")
        ax.set_xticks(ticks)  # the sizes measured (and projected to), written plainly
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    note = "x: the side stopped (budget)" + (", star: fitted projection to 21,841 classes" if axis == "classes" else "")
    fig.suptitle(f"training step vs {label}; {_device(rows)}; {note}", fontsize=8)
    return _save(fig, path)


def _device(rows: Sequence[Row]) -> str:
    return ", ".join(sorted({str(r.get("device", "")) for r in rows if r.get("device")})) or "device not recorded"


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def write_plots(suite_rows: Sequence[Row], scaling_rows: Sequence[Row], out_dir: str) -> List[str]:
    """Every plot the rows allow, into ``out_dir/plots/``; one message per plot written (or why none)."""
    try:
        _pyplot()
    except ImportError:
        return ["no plots: matplotlib is not installed (pip install matplotlib, or the '.[train]' extra)"]
    folder = os.path.join(out_dir, "plots")
    written: Dict[str, str] = {}
    if any(r.get("kind") in ("train", "eval") for r in suite_rows):
        written["speed-up"] = plot_speedup(suite_rows, os.path.join(folder, "speedup.png"))
        written["memory"] = plot_memory(suite_rows, os.path.join(folder, "memory.png"))
    for axis in ("classes", "batch"):
        if any(r.get("axis") == axis and r.get("status") == "measured" for r in scaling_rows):
            written[f"scaling vs {axis}"] = plot_scaling(scaling_rows, axis,
                                                         os.path.join(folder, f"scaling_{axis}.png"))
    return [f"wrote {name} plot {path}" for name, path in written.items()]
