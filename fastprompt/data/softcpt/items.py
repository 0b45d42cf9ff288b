"""The records of a multi-task dataset (SoftCPT's General-10, Plant-6, Fashion-20).

The original (kding1225/softcpt, on the Dassl in ``dist/Dassl.pytorch``) keeps each image as a
``DatumMT`` with ``label`` and ``task`` lists (one entry each in every dataset it defines) and
the dataset as ``DatasetBaseMT``: ``taskid2tname`` (task names, the text SoftCPT's meta-network
reads), ``taskid2desc``, ``taskid2cname`` (each task's class list; ``num_classes`` is their
lengths), ``taskid2type`` (``'sl'``) and ``taskid2metric``. Labels are per task; the joint label
space the trainer scores is task order, then class order (``compute_cls_range`` of
``datasets/general10.py``), so a global label is the task's first joint index plus the label.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Tuple, Union

from ..items import Dataset, Item

__all__ = ["TaskItem", "TaskInfo", "MultiTaskDataset", "JointDataset"]


class TaskItem(NamedTuple):
    """One image of one task: absolute ``path``, ``task`` index, ``label`` within the task
    (0-based), ``classname`` (the task's name for that label)."""

    path: str
    task: int
    label: int
    classname: str


@dataclass
class TaskInfo:
    """One task: what the original's ``DatasetBaseMT`` tables hold for it, and where it came from.

    ``description`` is the original's ``taskid2desc`` entry as it is (a string; Fashion-20's is a
    list of strings, one per class, as its ``datasets/fashion20.py`` builds it). ``split_source``
    is ``"split_dk"`` (the original's file), ``"generated"`` (drawn as the original's first run
    draws it, kept in fastprompt's cache: ``split_path``), ``"split_zhou"`` (CoOp's split file)
    or ``"aircraft"`` (FGVC-Aircraft's own text files, every run); ``names_source`` is
    ``"split_dk meta"``, ``"task files"``, ``"task_info.csv"``, ``"fewshot pickle"`` or
    ``"fastprompt table"``; ``fewshot_source`` is ``"all"``, ``"sampled"``, or the pickle read.
    """

    name: str
    description: Union[str, List[str]]
    classnames: List[str]
    metric: str                     # "overall_acc" | "mean_acc"
    type: str = "sl"
    source: str = ""                # the original's source class, e.g. "DescribableTextures"
    folder: str = ""                # its folder under the root
    image_dir: str = ""             # absolute folder the split's paths are relative to
    split_source: str = ""
    split_path: str = ""
    names_source: str = ""
    fewshot_source: str = "all"

    @property
    def num_classes(self) -> int:
        return len(self.classnames)


@dataclass
class MultiTaskDataset:
    """A loaded multi-task dataset: ``tasks`` in task order and the merged item lists.

    ``train``/``val``/``test`` hold :class:`TaskItem` s in the original's merged order (task by
    task, each task's items in its own order). ``situation`` says how the splits were obtained
    (one of ``split_dk``, ``generated``, ``split_zhou``, or several joined by ``+``), and
    ``fewshot_source`` where the subset came from: ``"all"``, ``"sampled"`` (each task's draw,
    see :mod:`fastprompt.data.softcpt.load`; each task's ``fewshot_source`` says whether it was
    read back from fastprompt's record, ``"cache <path>"``), the path of the set's original
    ``split_fewshot_mt`` pickle, ``"source pickles"`` (every source's own pickle) or
    ``"source pickles+sampled"``.
    """

    name: str
    root: str
    tasks: List[TaskInfo]
    train: List[TaskItem]
    val: List[TaskItem]
    test: List[TaskItem]
    shots: int = 0
    seed: int = 1
    subsample: str = "all"
    subsample_tasks: str = "all"
    fewshot_source: str = "all"
    situation: str = ""
    notes: List[str] = field(default_factory=list)

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def task_names(self) -> List[str]:
        return [t.name for t in self.tasks]

    @property
    def task_classnames(self) -> List[List[str]]:
        return [list(t.classnames) for t in self.tasks]

    @property
    def metrics(self) -> List[str]:
        return [t.metric for t in self.tasks]

    @property
    def num_classes(self) -> List[int]:
        """Classes per task (the original's ``DatasetBaseMT.num_classes``)."""
        return [t.num_classes for t in self.tasks]

    @property
    def classnames(self) -> List[str]:
        """The joint class list: task order, then class order (``C_tot`` names)."""
        return [c for t in self.tasks for c in t.classnames]

    @property
    def class_ranges(self) -> List[Tuple[int, int]]:
        """``(start, end)`` of each task's classes in the joint list (the original's ``cls_range``)."""
        out, start = [], 0
        for t in self.tasks:
            out.append((start, start + t.num_classes))
            start += t.num_classes
        return out

    def global_label(self, item: TaskItem) -> int:
        """``item``'s index in the joint class list."""
        return self.class_ranges[item.task][0] + item.label

    def task_pairs(self) -> List[Tuple[str, List[str]]]:
        """``[(task name, class names), ...]``: what ``SoftCPTLearner`` takes as ``tasks``."""
        return [(t.name, list(t.classnames)) for t in self.tasks]

    def task_dataset(self, task: int) -> Dataset:
        """Task ``task`` alone as a single-task :class:`~fastprompt.data.items.Dataset` (labels within it)."""
        info = self.tasks[task]

        def pick(items):
            return [Item(it.path, it.label, it.classname) for it in items if it.task == task]

        return Dataset(info.folder or info.name, self.root, info.image_dir, list(info.classnames), pick(self.train),
                       pick(self.val), pick(self.test), self.shots, self.seed, self.subsample, info.fewshot_source)

    def joint(self) -> "JointDataset":
        """The tasks as one :class:`~fastprompt.data.items.Dataset` over the joint label space
        (labels ``global_label``, the merged order kept): what a training run reads, see :class:`JointDataset`."""

        def as_joint(items):
            return [Item(it.path, self.global_label(it), it.classname) for it in items]

        # what a run's log says of each task: its name (the meta-network's input), metric and sources
        told = [f"task {i} {t.name!r} ({t.source or t.folder}): {t.num_classes} classes, {t.metric}, split "
                f"{t.split_source}, name from {t.names_source}, few-shot {t.fewshot_source}"
                for i, t in enumerate(self.tasks)]
        return JointDataset(self.name, self.root, self.root, self.classnames, as_joint(self.train), as_joint(self.val),
                            as_joint(self.test), self.shots, self.seed, self.subsample, self.fewshot_source,
                            told + list(self.notes), multitask=self)

    def counts(self) -> Dict[str, List[int]]:
        """Images per task in each list."""
        out = {}
        for key, items in (("train", self.train), ("val", self.val), ("test", self.test)):
            n = [0] * self.num_tasks
            for it in items:
                n[it.task] += 1
            out[key] = n
        return out

    def __repr__(self) -> str:
        return (f"MultiTaskDataset({self.name!r}, {self.num_tasks} tasks, {sum(self.num_classes)} classes, "
                f"train={len(self.train)}, val={len(self.val)}, test={len(self.test)}, shots={self.shots}, "
                f"seed={self.seed}, situation={self.situation!r})")


@dataclass
class JointDataset(Dataset):
    """A :class:`MultiTaskDataset` as one dataset over the joint label space (``C_tot`` classes).

    Every item's label is its ``global_label`` (task order, then class order), so one label says
    both the task and the class: the original's ``[B, C_tot]`` label matrix of an item with one
    task (``DatasetWrapper.__getitem__``: -1 outside the task, 0 inside, 1 at the class) is a
    function of it, and so are SoftCPT's loss and the per-task evaluation. The item order is the
    merged one, the order the original's sampler draws from. ``multitask`` is the dataset itself
    (tasks, names, metrics); ``classnames`` the joint list (names repeat across tasks).
    """

    multitask: Optional[MultiTaskDataset] = None

    def task_pairs(self) -> List[Tuple[str, List[str]]]:
        """``[(task name, class names), ...]``, in task order."""
        return self.multitask.task_pairs()

    @property
    def class_ranges(self) -> List[Tuple[int, int]]:
        return self.multitask.class_ranges

    @property
    def original_main_draw(self) -> bool:
        """Whether the original's main process drew this few-shot subset with its global ``random``
        (what a replay of its streams must account for, as ``fewshot_source == "sampled"`` says for
        one dataset): Fashion-20 draws in its main process (``datasets/fashion20.py``); General-10 and
        Plant-6 build every source in a ``multiprocessing.Pool`` worker (``datasets/general10.py``,
        ``plant6.py``), whose draws leave the main process's ``random`` untouched."""
        from .sources import MULTITASK

        pooled = len(MULTITASK[self.multitask.name].sources) > 1
        return self.fewshot_source.endswith("sampled") and not pooled
