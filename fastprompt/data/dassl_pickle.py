"""Read the pickles that CoOp-family runs leave in a dataset folder, without ``dassl`` and
without executing anything.

CoOp's dataset classes (KaiyangZhou/CoOp ``datasets/*.py``) save the few-shot subset of a run
as ``split_fewshot/shot_{K}-seed_{S}.pkl`` (``{"train": [Datum, ...], "val": [Datum, ...]}``;
ImageNet's holds ``"train"`` only) and ImageNet's listing as ``preprocessed.pkl``
(``{"train": [...], "test": [...]}``), where ``Datum`` is
``dassl.data.datasets.base_dataset.Datum`` (KaiyangZhou/Dassl.pytorch): a plain object whose
state is ``_impath``, ``_label``, ``_domain``, ``_classname``.

:func:`load_datum_pickle` unpickles with a ``find_class`` that resolves only that class (to a
local stand-in that accepts nothing but those four fields) and, for protocol 0/1 pickles, the
``copyreg`` reconstructor restricted to it. Any other global (``os.system``, ``builtins.eval``,
a numpy type, ...) stops the load with :class:`~fastprompt.data.items.DataError`: nothing from
the file is ever called.

SoftCPT (kding1225/softcpt) bundles a Dassl whose ``base_dataset.py`` adds ``DatumMT`` (state
``_impath`` str, ``_label`` list of int, ``_domain`` int, ``_task`` list of int, ``_box`` None);
its dataset classes pickle ``split_fewshot_mt/shot_{K}-seed_{S}.pkl`` of those, and the
multi-task classes (``datasets/general10.py``, ``plant6.py``) add the task tables
``taskid2cname`` (lists of str), ``taskid2tname``, ``taskid2desc``, ``taskid2type``,
``taskid2metric``. :func:`load_datum_mt_pickle` admits ``DatumMT`` (to its own stand-in) and
nothing else new: a ``Datum`` pickle is refused there, a ``DatumMT`` one by
:func:`load_datum_pickle`.
"""
from __future__ import annotations

import io
import os
import pickle
from typing import Dict, List, NamedTuple, Tuple

from ..errors import DataError
from .items import Item

__all__ = ["load_datum_pickle", "load_datum_mt_pickle", "MTRecord", "DATUM_GLOBALS", "DATUM_MT_GLOBALS", "rebase_path",
           "inside"]

DATUM_GLOBALS = {("dassl.data.datasets.base_dataset", "Datum"), ("dassl.data.datasets", "Datum")}
DATUM_MT_GLOBALS = {("dassl.data.datasets.base_dataset", "DatumMT"), ("dassl.data.datasets", "DatumMT")}
_FIELDS = {"_impath": str, "_label": int, "_domain": int, "_classname": str}


class _Datum:
    """Stand-in for Dassl's ``Datum``: holds the four fields, validated, and nothing else."""

    __slots__ = ("_impath", "_label", "_domain", "_classname")

    def __init__(self, impath="", label=0, domain=0, classname=""):
        self.__setstate__({"_impath": impath, "_label": label, "_domain": domain, "_classname": classname})

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2 and state[0] is None:
            state = state[1]  # (dict_state, slot_state) form
        if not isinstance(state, dict) or not set(state) <= set(_FIELDS):
            raise pickle.UnpicklingError(f"unexpected Datum state {type(state).__name__}")
        self._impath, self._label, self._domain, self._classname = "", 0, 0, ""
        for key, value in state.items():
            kind = _FIELDS[key]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise pickle.UnpicklingError(f"Datum field {key} has type {type(value).__name__}")
            setattr(self, key, value)


def _int_list(value) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


class _DatumMT:
    """Stand-in for SoftCPT's ``DatumMT``: the five fields, validated (``_box`` only ``None``)."""

    __slots__ = ("_impath", "_label", "_domain", "_task", "_box")
    _CHECKS = {"_impath": lambda v: isinstance(v, str), "_label": _int_list,
               "_domain": lambda v: isinstance(v, int) and not isinstance(v, bool), "_task": _int_list,
               "_box": lambda v: v is None}

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2 and state[0] is None:
            state = state[1]
        if not isinstance(state, dict) or not set(state) <= set(self._CHECKS):
            raise pickle.UnpicklingError(f"unexpected DatumMT state {type(state).__name__}")
        self._impath, self._label, self._domain, self._task, self._box = "", (), 0, (), None
        for key, value in state.items():
            if not self._CHECKS[key](value):
                raise pickle.UnpicklingError(f"DatumMT field {key} has type {type(value).__name__}")
            setattr(self, key, value)


def _reconstructor(cls, base, state):
    """``copyreg._reconstructor`` limited to the stand-ins on ``object`` (protocol 0/1 pickles);
    ``cls`` is whatever ``find_class`` admitted, so a Datum pickle never yields a DatumMT."""
    if cls not in (_Datum, _DatumMT) or base is not object or state is not None:
        raise pickle.UnpicklingError("copyreg._reconstructor used for something other than a Datum")
    return cls.__new__(cls)


class _DatumUnpickler(pickle.Unpickler):
    admitted = (DATUM_GLOBALS, _Datum)

    def find_class(self, module, name):
        if (module, name) in self.admitted[0]:
            return self.admitted[1]
        if (module, name) in {("copyreg", "_reconstructor"), ("copy_reg", "_reconstructor")}:
            return _reconstructor
        if (module, name) in {("builtins", "object"), ("__builtin__", "object")}:
            return object
        raise pickle.UnpicklingError(f"refused global {module}.{name}")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused persistent id")


class _DatumMTUnpickler(_DatumUnpickler):
    admitted = (DATUM_MT_GLOBALS, _DatumMT)


def _to_items(value, path: str, key: str) -> List[Item]:
    if not isinstance(value, list):
        raise DataError(f"{path}: '{key}' is a {type(value).__name__}, expected a list of Dassl Datum")
    out = []
    for i, d in enumerate(value):
        if not isinstance(d, _Datum):
            raise DataError(f"{path}: '{key}'[{i}] is a {type(d).__name__}, expected a Dassl Datum")
        out.append(Item(d._impath, d._label, d._classname))
    return out


def _unpickle(path: str, unpickler, what: str, required) -> dict:
    """The dict a restricted ``unpickler`` reads from ``path``, with the ``required`` keys."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        obj = unpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, OverflowError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not a pickle of {what} lists ({exc}); it was not loaded. "
                        "Delete or move it to let fastprompt draw the subset itself") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise DataError(f"{path}: expected a dict of {what} lists, found {type(obj).__name__}")
    for key in required:
        if key not in obj:
            raise DataError(f"{path}: no '{key}' list (keys: {sorted(obj)})")
    return obj


def load_datum_pickle(path: str, required=("train",)) -> Dict[str, List[Item]]:
    """``{"train": [Item...], "val": [...], ...}`` from a Dassl ``Datum`` pickle at ``path``.

    Raises :class:`DataError` naming the file when it holds anything but a dict of ``Datum``
    lists (a foreign global is refused before it is resolved) or lacks a ``required`` key.
    """
    obj = _unpickle(path, _DatumUnpickler, "Dassl Datum", required)
    return {key: _to_items(value, path, key) for key, value in obj.items()}


class MTRecord(NamedTuple):
    """One ``DatumMT`` as read: ``path``, ``labels`` and ``tasks`` (parallel int tuples)."""

    path: str
    labels: Tuple[int, ...]
    tasks: Tuple[int, ...]


_MT_RECORD_KEYS = ("train", "val", "test")


def _str_table(value) -> bool:
    """A list of str, or of lists of str (the ``taskid2*`` tables), and nothing else."""
    return isinstance(value, list) and all(
        isinstance(v, str) or (isinstance(v, list) and all(isinstance(w, str) for w in v)) for v in value)


def load_datum_mt_pickle(path: str, required=("train", "val")) -> Dict[str, list]:
    """The dict of a SoftCPT ``split_fewshot_mt`` pickle at ``path``: ``train``/``val``/``test``
    as lists of :class:`MTRecord`, each other entry (the ``taskid2*`` tables) a list of str or
    of lists of str, as it is.

    Raises :class:`DataError` naming the file for any other global, value or shape, or a missing
    ``required`` key. The records' contents (labels in range, tasks, paths) are the caller's to
    check against the dataset they claim to subsample.
    """
    obj = _unpickle(path, _DatumMTUnpickler, "SoftCPT DatumMT", required)
    out: Dict[str, list] = {}
    for key, value in obj.items():
        if key in _MT_RECORD_KEYS:
            if not isinstance(value, list):
                raise DataError(f"{path}: '{key}' is a {type(value).__name__}, expected a list of DatumMT")
            for i, d in enumerate(value):
                if not isinstance(d, _DatumMT):
                    raise DataError(f"{path}: '{key}'[{i}] is a {type(d).__name__}, expected a SoftCPT DatumMT")
            out[key] = [MTRecord(d._impath, tuple(d._label), tuple(d._task)) for d in value]
        elif _str_table(value):
            out[key] = value
        else:
            raise DataError(f"{path}: '{key}' is not a table of names ({type(value).__name__}); the pickle is not "
                            "one SoftCPT writes: move it away")
    return out


def rebase_path(path: str, dataset_dir: str, folder: str) -> str:
    """A pickled path of a dataset folder that has since moved, re-rooted at ``dataset_dir``.

    The path is kept when it lies under ``dataset_dir``; otherwise the part after its last
    ``/<folder>/`` component is joined to ``dataset_dir`` (kept as it is when it has none).
    """
    if path.startswith(os.path.join(dataset_dir, "")):
        return path
    parts = path.replace("\\", "/").split("/")
    idx = max((i for i, p in enumerate(parts[:-1]) if p == folder), default=None)
    return path if idx is None else os.path.join(dataset_dir, *parts[idx + 1:])


def inside(path: str, folder: str) -> bool:
    """``path`` lies lexically inside ``folder`` (``..`` resolved, links not followed: an images
    folder linked to other storage is fine)."""
    root = os.path.join(os.path.normpath(os.path.abspath(folder)), "")
    return os.path.normpath(os.path.abspath(path)).startswith(root)
