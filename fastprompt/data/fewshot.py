"""Few-shot subsets drawn exactly as the CoOp family draws them.

Dassl's ``DatasetBase.generate_fewshot_dataset`` (KaiyangZhou/Dassl.pytorch
``dassl/data/datasets/base_dataset.py``) groups the items by label in the order labels first
appear (``split_dataset_by_label``: a ``defaultdict`` filled in item order), then, per label,
takes ``random.sample(items, K)`` from Python's global ``random`` module; a label with fewer
than ``K`` items keeps all of them, in order, and draws nothing (CoOp's datasets call it with
the default ``repeat=False``; ``repeat=True`` would use ``random.choices(items, k=K)``).

CoOp's dataset classes (KaiyangZhou/CoOp ``datasets/*.py``) draw the training subset with ``K``
shots and then, from the same random stream, the validation subset with ``min(K, 4)`` shots;
ImageNet draws the training subset only. CoOp's ``train.py`` calls Dassl's
``set_random_seed(seed)`` (``random.seed``, ``np.random.seed``, ``torch.manual_seed``) and then
builds the trainer; between the two, nothing draws from ``random`` (logger set-up, printing the
config, ``collect_env_info`` and the trainer's constructor up to ``build_dataset`` do not), and
the dataset classes that read a ``split_zhou_*.json`` (or FGVCAircraft's text files, or the
ImageNet folders) consume nothing before the draw. So the draw starts from the fresh state of
``random.seed(seed)``, which is the state of ``random.Random(seed)``: this module uses such a
private generator and never touches the global one. ``random.seed``, ``sample`` and ``choices``
give the same results on CPython 3.8 (the original's environment) through 3.13 (checked), so
the same seed and split file give the same images the published runs trained on; a
``split_fewshot`` pickle left by such a run is read as it is (:mod:`fastprompt.data.load`).
"""
from __future__ import annotations

import random
from typing import Dict, List, Sequence, Tuple

from ..errors import DataError
from .items import Item

__all__ = ["split_by_label", "fewshot_subset", "sample_fewshot", "check_int", "VAL_SHOTS_CAP"]

VAL_SHOTS_CAP = 4  # CoOp: val = generate_fewshot_dataset(val, num_shots=min(num_shots, 4))


def check_int(value, what: str) -> int:
    """``value`` when it is an integer >= 0 (shots, seed), else a :class:`DataError` naming ``what``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise DataError(f"{what} must be an integer >= 0, got {value!r}")
    return value


def split_by_label(items: Sequence[Item]) -> Dict[int, List[Item]]:
    """Items grouped by label, labels in order of first appearance (a plain dict keeps it)."""
    groups: Dict[int, List[Item]] = {}
    for item in items:
        groups.setdefault(item.label, []).append(item)
    return groups


def fewshot_subset(items: Sequence[Item], shots: int, rng: random.Random,
                   repeat: bool = False) -> List[Item]:
    """``shots`` items per label drawn with ``rng``, as Dassl's ``generate_fewshot_dataset``.

    ``shots < 1`` returns the items unchanged (a copy). A label with fewer than ``shots`` items
    keeps them all without drawing, or, with ``repeat=True``, gets ``rng.choices(items, k=shots)``.
    """
    if shots < 1:
        return list(items)
    out: List[Item] = []
    for group in split_by_label(items).values():
        if len(group) >= shots:
            out.extend(rng.sample(group, shots))
        elif repeat:
            out.extend(rng.choices(group, k=shots))
        else:
            out.extend(group)
    return out


def sample_fewshot(train: Sequence[Item], val: Sequence[Item], shots: int, seed: int,
                   with_val: bool = True) -> Tuple[List[Item], List[Item]]:
    """The ``(train, val)`` few-shot subsets a CoOp run with ``--seed seed`` trains on.

    Train gets ``shots`` per class, then val ``min(shots, 4)`` from the same stream started at
    ``random.seed(seed)``. ``with_val=False`` (ImageNet) draws train only and returns ``val``
    unchanged.
    """
    if not isinstance(shots, int) or isinstance(shots, bool) or shots < 0:
        raise DataError(f"shots must be an integer >= 0 (0 = all images), got {shots!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise DataError(f"seed must be an integer >= 0, got {seed!r}")
    if shots == 0:
        return list(train), list(val)
    rng = random.Random(seed)
    new_train = fewshot_subset(train, shots, rng)
    new_val = fewshot_subset(val, min(shots, VAL_SHOTS_CAP), rng) if with_val else list(val)
    return new_train, new_val
