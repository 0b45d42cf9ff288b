"""Named recipes: the original training configurations, shipped as package data.

``<method>/<the original config file's name>``, e.g. ``coop/vit_b16_ep50``, ``coop/rn50_ep50``,
``cocoop/vit_b16_c4_ep10_batch1_ctxv1``, ``maple/vit_b16_c2_ep5_batch4_2ctx``,
``promptsrc/vit_b16_c2_ep20_batch4_4+4ctx``. Each file carries every value of the original
(optimizer, learning rate, epochs, batch size, warm-up, schedule, precision, method settings, the
values the original scripts pass on the command line) and names its source in its header.
"""
from __future__ import annotations

import difflib
import os
from typing import Any, Dict, List

from .config import read_yaml
from ..errors import ConfigError

__all__ = ["RECIPE_DIR", "list_recipes", "recipe_path", "load_recipe"]

RECIPE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recipes")


def list_recipes() -> List[str]:
    """Every recipe name, sorted (``method/config``)."""
    names = []
    for method in sorted(os.listdir(RECIPE_DIR)):
        folder = os.path.join(RECIPE_DIR, method)
        if os.path.isdir(folder):
            names += [f"{method}/{f[:-5]}" for f in sorted(os.listdir(folder)) if f.endswith(".yaml")]
    return names


def recipe_path(name: str) -> str:
    """The file of recipe ``name``; a ``ConfigError`` listing the recipes when there is none."""
    key = name[:-5] if name.endswith(".yaml") else name
    path = os.path.join(RECIPE_DIR, *key.split("/"))
    if "/" in key and ".." not in key.split("/") and os.path.isfile(path + ".yaml"):
        return path + ".yaml"
    names = list_recipes()
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
    method = key.split("/")[0]
    same_method = [n for n in names if n.startswith(method + "/")]
    shown = same_method or names
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"no recipe named {name!r}.{hint} Recipes{' of ' + method if same_method else ''}: "
                      f"{', '.join(shown)}")


def load_recipe(name: str) -> Dict[str, Any]:
    return read_yaml(recipe_path(name))
