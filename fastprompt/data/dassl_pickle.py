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
"""
from __future__ import annotations

import io
import pickle
from typing import Dict, List

from ..errors import DataError
from .items import Item

__all__ = ["load_datum_pickle", "DATUM_GLOBALS"]

DATUM_GLOBALS = {("dassl.data.datasets.base_dataset", "Datum"), ("dassl.data.datasets", "Datum")}
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


def _reconstructor(cls, base, state):
    """``copyreg._reconstructor`` limited to ``_Datum`` on ``object`` (protocol 0/1 pickles)."""
    if cls is not _Datum or base is not object or state is not None:
        raise pickle.UnpicklingError("copyreg._reconstructor used for something other than a Datum")
    return _Datum.__new__(_Datum)


class _DatumUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in DATUM_GLOBALS:
            return _Datum
        if (module, name) in {("copyreg", "_reconstructor"), ("copy_reg", "_reconstructor")}:
            return _reconstructor
        if (module, name) in {("builtins", "object"), ("__builtin__", "object")}:
            return object
        raise pickle.UnpicklingError(f"refused global {module}.{name}")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused persistent id")


def _to_items(value, path: str, key: str) -> List[Item]:
    if not isinstance(value, list):
        raise DataError(f"{path}: '{key}' is a {type(value).__name__}, expected a list of Dassl Datum")
    out = []
    for i, d in enumerate(value):
        if not isinstance(d, _Datum):
            raise DataError(f"{path}: '{key}'[{i}] is a {type(d).__name__}, expected a Dassl Datum")
        out.append(Item(d._impath, d._label, d._classname))
    return out


def load_datum_pickle(path: str, required=("train",)) -> Dict[str, List[Item]]:
    """``{"train": [Item...], "val": [...], ...}`` from a Dassl ``Datum`` pickle at ``path``.

    Raises :class:`DataError` naming the file when it holds anything but a dict of ``Datum``
    lists (a foreign global is refused before it is resolved) or lacks a ``required`` key.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        obj = _DatumUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, OverflowError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not a pickle of Dassl Datum lists ({exc}); it was not loaded. "
                        "Delete or move it to let fastprompt draw the subset itself") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise DataError(f"{path}: expected a dict of Datum lists, found {type(obj).__name__}")
    for key in required:
        if key not in obj:
            raise DataError(f"{path}: no '{key}' list (keys: {sorted(obj)})")
    return {key: _to_items(value, path, key) for key, value in obj.items()}

