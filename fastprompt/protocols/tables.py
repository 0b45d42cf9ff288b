"""The results tables as the papers report them, from the finished runs of a grid.

* base-to-novel (CoCoOp, CVPR 2022, Table 1): per dataset, Base and Novel accuracy (mean ± std over
  seeds) and HM = the harmonic mean of the seed-averaged Base and Novel accuracies; the Average row
  averages Base and Novel over the datasets, and its HM is defined as the method's published source
  defines it (:attr:`fastprompt.protocols.published.Block.hm_of`): the HM of those averages (CoCoOp,
  and fastprompt's default when nothing is published) or the mean of the per-dataset HMs (PRE);
* few-shot (CoOp, IJCV 2022, Fig. 3): per dataset, accuracy for each K (1, 2, 4, 8, 16 shots);
* cross-dataset (CoCoOp Table 2): the ImageNet source, each target, the average over the targets;
* domain generalisation (CoCoOp Table 3): ImageNet, then -V2, -Sketch, -A, -R and their average;
* SoftCPT's multi-task few-shot learning (kding1225/softcpt README, results table): per multi-task
  dataset, one row per variant (SoftCPT-NATA, ... and the hard-sharing baselines), the average over
  the dataset's tasks of each task's own metric for each K and their mean over K ("Avg."), the
  published rows beside; and per variant and dataset, every task's metric for each K with the task
  average as the last row (per-task numbers are not published: nothing is beside them).

Means and standard deviations over seeds are ``np.mean`` / ``np.std`` (population std), as CoOp's
``parse_test_res.py`` computes them (KaiyangZhou/CoOp). Each row carries the published numbers of
the original method (:mod:`fastprompt.protocols.published`) and the block they come from (its source,
and whether they were checked against it); a published average is shown only when the table covers
the datasets it was computed over.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Optional, Sequence, Tuple

from ..train.softcpt_variants import VARIANTS
from .definitions import DATASETS_11, DEFAULT_SHOTS, DG_TARGETS, MULTITASK_DATASETS, SOURCE, XD_TARGETS
from .published import Block, published
from .results import RunResult

__all__ = ["Cell", "Row", "Table", "build_tables", "DISPLAY", "harmonic_mean"]

DISPLAY = {"imagenet": "ImageNet", "caltech-101": "Caltech101", "oxford_pets": "OxfordPets",
           "stanford_cars": "StanfordCars", "oxford_flowers": "Flowers102", "food-101": "Food101",
           "fgvc_aircraft": "FGVCAircraft", "sun397": "SUN397", "dtd": "DTD", "eurosat": "EuroSAT",
           "ucf101": "UCF101", "imagenetv2": "ImageNet-V2", "imagenet-sketch": "ImageNet-Sketch",
           "imagenet-adversarial": "ImageNet-A", "imagenet-rendition": "ImageNet-R", "average": "Average",
           "general10": "General-10", "plant6": "Plant-6", "fashion20": "Fashion-20",
           "NATA": "SoftCPT-NATA", "NATS": "SoftCPT-NATS", "CATA": "SoftCPT-CATA", "CSTA": "SoftCPT-CSTA",
           "CATS": "SoftCPT-CATS", "CSTS": "SoftCPT-CSTS", "hard-shared": "one prompt for all tasks (CoOp-MT)",
           "hard-per-task": "one prompt per task (joint)", "hard-per-class": "one prompt per class (joint)"}
_ORDER = {name: i for i, name in enumerate(DATASETS_11 + DG_TARGETS)}
TITLES = {"base2new": "Base-to-novel generalization", "fewshot": "Few-shot learning",
          "crossdataset": "Cross-dataset transfer (ImageNet source)",
          "dg": "Domain generalization (ImageNet source)", "multitask": "Multi-task few-shot learning"}


# the multitask tables' row order: datasets and variants as the protocol lists them
MULTITASK_ORDER = {name: i for i, name in enumerate(MULTITASK_DATASETS)}
VARIANT_ORDER = {name: i for i, name in enumerate(VARIANTS)}


def harmonic_mean(a: float, b: float) -> float:
    """HM of two accuracies (0 when both are 0), as CoCoOp defines it."""
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


@dataclasses.dataclass
class Cell:
    """A value over seeds: ``mean``, ``std`` (``None``: not a per-seed quantity, e.g. HM), the seeds."""

    mean: float
    std: Optional[float] = None
    seeds: Tuple[int, ...] = ()

    @classmethod
    def of(cls, by_seed: Dict[int, float]) -> "Cell":
        values = [by_seed[s] for s in sorted(by_seed)]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        return cls(mean, std, tuple(sorted(by_seed)))


@dataclasses.dataclass
class Row:
    """One line of a table: ``cells`` by column key; ``published`` the published numbers beside them
    (column -> accuracy %), all from the block ``published_from`` (``None`` when there are none)."""

    key: str                                   # a CoOp dataset folder name, or "average"
    cells: Dict[str, Cell]
    published: Dict[str, float]
    published_from: Optional[Block] = None

    @property
    def label(self) -> str:
        return DISPLAY.get(self.key, self.key)


@dataclasses.dataclass
class Table:
    protocol: str
    method: str
    shots: Optional[int]                        # None for the few-shot table (shots are columns)
    columns: List[Tuple[str, str]]              # (key, title)
    rows: List[Row]
    blocks: List[Block] = dataclasses.field(default_factory=list)  # the method's published blocks here
    notes: List[str] = dataclasses.field(default_factory=list)
    heading: Optional[str] = None               # a title other than the protocol's (pretraining transfer)
    tag: Optional[str] = None                   # appended to the name (multitask: dataset, "tasks")
    row_title: str = "Dataset"                  # what a row is (multitask: a method, or a task)

    @property
    def name(self) -> str:
        suffix = "" if self.shots in (None, 16) else f"_{self.shots}shots"
        return f"{self.protocol}_{self.method}{suffix}" + (f"_{self.tag}" if self.tag else "")

    @property
    def title(self) -> str:
        if self.heading:
            return self.heading
        shots = "" if self.shots is None else f", {self.shots} shots"
        return f"{TITLES[self.protocol]}: {self.method}{shots}"


def _sorted(names) -> List[str]:
    return sorted(names, key=lambda n: (_ORDER.get(n, len(_ORDER)), n))


_HM_NOTES = {
    "averages": "Average HM: the HM of the average Base and the average Novel",
    "datasets": "Average HM: the mean of the per-dataset HMs (not the HM of the average Base and Novel)",
}


def _average_row(rows: List[Row], columns: Sequence[str], per_seed: Dict[str, Dict[str, Dict[int, float]]],
                 hm: Optional[str]) -> Row:
    """Mean over the rows of each column; std over seeds of the per-seed averages when every row has
    the same seeds. ``hm``: how the average HM is defined — ``"averages"``: the HM of the averaged
    Base and Novel; ``"datasets"``: the mean of the rows' HMs; ``None`` (or ``False``): no HM column."""
    cells = {}
    for col in columns:
        if col == "hm":
            continue
        have = [r for r in rows if col in r.cells]
        if not have:
            continue
        mean = sum(r.cells[col].mean for r in have) / len(have)
        seed_sets = {r.cells[col].seeds for r in have}
        std, seeds = None, ()
        if len(seed_sets) == 1:
            seeds = seed_sets.pop()
            avg = {s: sum(per_seed[r.key][col][s] for r in have) / len(have) for s in seeds}
            std = Cell.of(avg).std
        cells[col] = Cell(mean, std, seeds)
    if hm and hm not in _HM_NOTES:
        raise ValueError(f"unknown average HM definition {hm!r} (averages or datasets)")
    if hm == "averages" and "base" in cells and "novel" in cells:
        cells["hm"] = Cell(harmonic_mean(cells["base"].mean, cells["novel"].mean))
    elif hm == "datasets" and rows and all("hm" in r.cells for r in rows):
        cells["hm"] = Cell(sum(r.cells["hm"].mean for r in rows) / len(rows))
    return Row("average", cells, {})


def _attach_published(table: Table, default_over: Sequence[str], covered: Sequence[str]) -> None:
    """Put the method's published numbers beside the rows they belong to, and name their sources.

    ``default_over``: the datasets a published average covers unless its block says otherwise;
    ``covered``: those the table's average covers. A published average is beside the table's only
    when the two are the same set."""
    pub = published(table.method, table.protocol)
    if pub is None:
        table.notes.append(f"No published {table.protocol} numbers for {table.method} (package data "
                           "fastprompt/protocols/published/).")
        return
    table.blocks = list(pub.blocks)
    average = pub.block_of("average")
    over = tuple(average.average_over or default_over) if average else tuple(default_over)
    shown = set(covered) == set(over)
    for row in table.rows:
        block = pub.block_of(row.key)
        if block is None or (row.key == "average" and not shown):
            continue
        values = {col: block.rows[row.key][col] for col, _ in table.columns if col in block.rows[row.key]}
        if values:
            row.published, row.published_from = values, block
    if average and not shown:
        columns = dict(table.columns)
        values = ", ".join(f"{columns.get(k, k)} {v:.2f}" for k, v in average.rows["average"].items())
        table.notes.append(f"The published average ({values}) covers {len(over)} datasets "
                           f"({', '.join(DISPLAY.get(d, d) for d in over)}); this table covers {len(covered)}, "
                           "so it is not beside a row.")


def _base2new(method: str, shots: int, runs: List[RunResult]) -> Table:
    per: Dict[str, Dict[str, Dict[int, float]]] = {}
    for r in runs:
        novel = r.evals.get((r.dataset, "new"))
        if novel is None:
            continue  # trained, not yet tested on the novel classes
        d = per.setdefault(r.dataset, {"base": {}, "novel": {}})
        d["base"][r.seed], d["novel"][r.seed] = r.accuracy, novel
    rows = []
    for name in _sorted(per):
        base, novel = Cell.of(per[name]["base"]), Cell.of(per[name]["novel"])
        rows.append(Row(name, {"base": base, "novel": novel, "hm": Cell(harmonic_mean(base.mean, novel.mean))}, {}))
    cols = [("base", "Base"), ("novel", "Novel"), ("hm", "HM")]
    # the average HM as the published source defines it, so that the two are the same quantity
    pub = published(method, "base2new")
    hm_of = (pub.hm_of if pub else None) or "averages"
    notes = ["HM: harmonic mean of the seed-averaged Base and Novel accuracies (CoCoOp)."]
    if len(rows) > 1:
        rows.append(_average_row(rows, [c for c, _ in cols], per, hm=hm_of))
        notes.append(f"{_HM_NOTES[hm_of]}, " + ("as the published average's source defines it." if pub and pub.hm_of
                                                else f"as CoCoOp defines it ({method} has no published average HM)."))
    table = Table("base2new", method, shots, cols, rows, notes=notes)
    _attach_published(table, DATASETS_11, list(per))
    return table


def _fewshot(method: str, runs: List[RunResult]) -> Table:
    per: Dict[str, Dict[str, Dict[int, float]]] = {}
    for r in runs:
        per.setdefault(r.dataset, {}).setdefault(str(r.shots), {})[r.seed] = r.accuracy
    shots = sorted({int(k) for d in per.values() for k in d})
    cols = [(str(k), f"{k} shot{'s' if k > 1 else ''}") for k in shots]
    rows = [Row(name, {k: Cell.of(v) for k, v in per[name].items()}, {}) for name in _sorted(per)]
    if len(rows) > 1:
        rows.append(_average_row(rows, [c for c, _ in cols], per, hm=None))
    table = Table("fewshot", method, None, cols, rows)
    _attach_published(table, DATASETS_11, list(per))
    return table


def _transfer(protocol: str, method: str, shots: int, runs: List[RunResult]) -> Optional[Table]:
    targets = XD_TARGETS if protocol == "crossdataset" else DG_TARGETS
    per: Dict[str, Dict[str, Dict[int, float]]] = {}
    for r in runs:
        per.setdefault(SOURCE, {"accuracy": {}})["accuracy"][r.seed] = r.accuracy
        for (dataset, subsample), value in r.evals.items():
            if subsample == "all" and dataset in targets:
                per.setdefault(dataset, {"accuracy": {}})["accuracy"][r.seed] = value
    found = [t for t in _sorted(per) if t != SOURCE]
    if not found:
        return None
    cols = [("accuracy", "Accuracy")]
    rows = [Row(name, {"accuracy": Cell.of(per[name]["accuracy"])}, {}) for name in [SOURCE] + found]
    if len(found) > 1:
        rows.append(_average_row(rows[1:], ["accuracy"], per, hm=None))
    table = Table(protocol, method, shots, cols, rows, notes=["Average: over the target datasets (not ImageNet)."])
    _attach_published(table, targets, found)
    return table


def _shot_columns(shots) -> List[Tuple[str, str]]:
    return [(str(k), f"{k} shot{'s' if k > 1 else ''}") for k in sorted(shots)]


def _shot_average(cells: Dict[str, Cell], shots: Sequence[str]) -> Optional[Cell]:
    """The mean over the shot columns' means ("Avg."; no std: a mean of means); None unless the row
    has every shot column."""
    if not shots or not all(k in cells for k in shots):
        return None
    return Cell(sum(cells[k].mean for k in shots) / len(shots))


def _multitask(runs: List[RunResult]) -> List[Table]:
    """The summary table of each multi-task dataset (variants x K) and each variant's per-task table."""
    from .grid import MULTITASK_PREFIX
    from .published import published

    pub = published("softcpt", "multitask")
    per: Dict[str, Dict[str, Dict[str, Dict[int, float]]]] = {}       # dataset -> variant -> K -> seed -> avg
    tasks: Dict[Tuple[str, str], Dict[str, Dict[str, Dict[int, float]]]] = {}  # (dataset, variant) -> task -> K
    for r in runs:
        if r.task_average is None or not r.method.startswith(MULTITASK_PREFIX):
            continue
        variant = r.method[len(MULTITASK_PREFIX):]
        per.setdefault(r.dataset, {}).setdefault(variant, {}).setdefault(str(r.shots), {})[r.seed] = r.task_average
        for task, value in r.tasks.items():
            tasks.setdefault((r.dataset, variant), {}).setdefault(task, {}).setdefault(str(r.shots), {})[r.seed] = value
    out: List[Table] = []
    for dataset in sorted(per, key=lambda d: (MULTITASK_ORDER.get(d, len(MULTITASK_ORDER)), d)):
        variants = per[dataset]
        shots = _shot_columns({int(k) for v in variants.values() for k in v})
        keys = [c for c, _ in shots]
        # Avg. only over the paper's five shot counts: a mean over others would sit beside its Avg. unlike it
        full = keys == [str(k) for k in DEFAULT_SHOTS["multitask"]]
        rows = []
        for variant in sorted(variants, key=lambda v: (VARIANT_ORDER.get(v, len(VARIANT_ORDER)), v)):
            cells = {k: Cell.of(v) for k, v in variants[variant].items()}
            avg = _shot_average(cells, keys) if full else None
            if avg is not None:
                cells["avg"] = avg
            row = Row(variant, cells, {})
            block = pub.block_of(f"{dataset}/{variant}") if pub else None
            if block is not None:
                row.published = {c: block.rows[f"{dataset}/{variant}"][c] for c in keys + ["avg"] * full
                                 if c in block.rows[f"{dataset}/{variant}"]}
                row.published_from = block if row.published else None
            rows.append(row)
        blocks = [b for b in (pub.blocks if pub else ()) if any(r.startswith(dataset + "/") for r in b.rows)]
        missing = [DISPLAY.get(r.key, r.key) for r in rows if not r.published]
        notes = [f"Each cell: the average over {DISPLAY.get(dataset, dataset)}'s tasks of each task's own metric "
                 "(overall or mean per-class accuracy, as the original's ClassificationMT), mean ± std over seeds"
                 + ("; Avg.: the mean over the shot columns." if full else
                    "; no Avg. column: it is the mean over 1, 2, 4, 8 and 16 shots, and the table has other shots.")]
        if missing:
            notes.append(f"No published numbers for {', '.join(missing)}: unverified, left empty.")
        out.append(Table("multitask", "softcpt", None, shots + [("avg", "Avg.")] * full, rows, blocks=blocks,
                         notes=notes,
                         heading=f"{TITLES['multitask']}: {DISPLAY.get(dataset, dataset)}, average over tasks",
                         tag=dataset, row_title="Method"))
        for variant in [r.key for r in rows]:
            per_task = tasks.get((dataset, variant), {})
            task_rows = [Row(t, {k: Cell.of(v) for k, v in per_task[t].items()}, {}) for t in per_task]
            task_rows.append(Row("average", {k: Cell.of(v) for k, v in variants[variant].items()}, {}))
            out.append(Table("multitask", MULTITASK_PREFIX + variant, None, shots, task_rows,
                             notes=["Per task: the task's own metric; Average: the mean over the tasks (the "
                                    "original's reported number). No per-task numbers are published "
                                    "(kding1225/softcpt gives the averages only): nothing is beside them."],
                             heading=f"{TITLES['multitask']}: {DISPLAY.get(variant, variant)} on "
                                     f"{DISPLAY.get(dataset, dataset)}, per task", tag=f"{dataset}_tasks",
                             row_title="Task"))
    return out


def build_tables(runs: Sequence[RunResult], protocols: Optional[Sequence[str]] = None) -> List[Table]:
    """Every table the runs make (per protocol, method and shot count), optionally of some protocols only."""
    groups: Dict[Tuple[str, str, Optional[int]], List[RunResult]] = {}
    multitask = [r for r in runs if r.kind == "multitask"]
    runs = [r for r in runs if r.kind != "multitask"]
    for r in runs:
        groups.setdefault((r.kind, r.method, None if r.kind == "fewshot" else r.shots), []).append(r)
    tables: List[Table] = []
    for (kind, method, shots), members in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0)):
        if kind == "base2new":
            made = [_base2new(method, shots, members)]
        elif kind == "fewshot":
            made = [_fewshot(method, members)]
        else:
            made = [_transfer(p, method, shots, members) for p in ("crossdataset", "dg")]
        tables += [t for t in made if t is not None and t.rows and (not protocols or t.protocol in protocols)]
    if multitask and (not protocols or "multitask" in protocols):
        tables += _multitask(multitask)
    return tables
