"""Package attributes imported on first use (PEP 562), so importing a package costs nothing.

``import fastprompt.cli`` runs ``fastprompt/__init__.py`` (and ``fastprompt.train.cli`` runs
``fastprompt/train/__init__.py``) first; were those to import their learners, trainers and datasets
eagerly, ``fastprompt --help`` would wait seconds for torch. A package lists instead where each of
its public names lives, written as its import statements were, and the module holding a name is
imported when the name is first read::

    _EXPORTS = {".trainer": ("Trainer", "TrainSettings"),   # from .trainer import Trainer, TrainSettings
                ".": ("ops",)}                               # from . import ops
    __all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

Standard library only: it sits at the bottom of the layers.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Callable, Dict, List, MutableMapping, Sequence, Tuple

__all__ = ["lazy_exports"]


def lazy_exports(package: str, namespace: MutableMapping[str, object], exports: Dict[str, Sequence[str]]
                 ) -> Tuple[List[str], Callable[[str], object], Callable[[], List[str]]]:
    """``(__all__, __getattr__, __dir__)`` for ``package``, whose names load on first use.

    ``exports`` maps a module, relative to ``package`` (``".trainer"``, ``"..errors"``), to the
    names it defines that the package re-exports; the module ``"."`` lists submodules exported as
    themselves. A name read once is stored in ``namespace`` (the package's ``globals()``), so later
    reads do not come back here. A name not exported that is a submodule of ``package``
    (``fastprompt.models``) is imported too: the eager ``__init__`` left every module it imported
    reachable as an attribute. Anything else is the usual ``AttributeError``.
    """
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> object:
        module = where.get(name)
        if module == ".":
            value = importlib.import_module(f".{name}", package)
        elif module is not None:
            value = getattr(importlib.import_module(module, package), name)
        elif not name.startswith("_") and importlib.util.find_spec(f"{package}.{name}") is not None:
            value = importlib.import_module(f".{name}", package)
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value
        return value

    def __dir__() -> List[str]:
        return sorted(set(namespace) | set(where))

    return list(where), __getattr__, __dir__
