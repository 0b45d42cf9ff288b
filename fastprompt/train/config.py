"""Run configuration: recipes, fastprompt YAML, the originals' Dassl YAML files and ``KEY VALUE`` overrides.

A configuration is a nested dict in Dassl's spelling (``OPTIM.LR``, ``TRAINER.COOP.N_CTX``, ...).
It is resolved the way the originals' ``train.py`` ``setup_cfg`` does it (KaiyangZhou/CoOp
``train.py``): Dassl's defaults plus the method's trainer section, then the dataset config file,
then the method config file (a recipe, or any original ``configs/trainers/<Trainer>/*.yaml``
unchanged), then the command-line arguments, then the trailing ``KEY VALUE`` list. As with YACS,
every key must already exist (a typo is an error that suggests the closest keys), and a string
value is read as a Python literal when it is one (``"1e-5"`` -> 1e-05, ``"(224, 224)"`` -> a
tuple, ``"True"`` -> True); the result must have the type of the default (an int where a float is
expected is accepted).

The method is, in this order: the caller's (``--method``), the file's ``METHOD`` key (fastprompt
YAML and recipes), its ``TRAINER.NAME``, the folder the file sits in (``configs/trainers/CoOp/``),
the only ``TRAINER`` section the file sets.

Named recipes are the original training configurations, shipped as package data (``recipes/``):
``<method>/<the original config file's name>``, e.g. ``coop/vit_b16_ep50``, ``coop/rn50_ep50``,
``cocoop/vit_b16_c4_ep10_batch1_ctxv1``, ``maple/vit_b16_c2_ep5_batch4_2ctx``,
``promptsrc/vit_b16_c2_ep20_batch4_4+4ctx``. Each file carries every value of the original
(optimizer, learning rate, epochs, batch size, warm-up, schedule, precision, method settings, the
values the original scripts pass on the command line) and names its source in its header.
"""
from __future__ import annotations

import ast
import copy
import difflib
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from ..errors import ConfigError
from .defaults import _set, base_defaults, flatten
from .key_audit import check_config, element_type
from .methods import BASE_DEFAULT, METHODS, method_of_trainer
from .model_keys import check_input_size, follow_model, shape_from_name

__all__ = ["read_yaml", "resolve_config", "parse_overrides", "get", "set_value", "dump_yaml", "flatten", "RECIPE_DIR",
           "list_recipes", "recipe_path", "load_recipe"]


def _literal(value: Any) -> Any:
    """YACS's reading of a value from a file or the command line: a Python literal when it is one."""
    if isinstance(value, dict):
        return {k: _literal(v) for k, v in value.items()}
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return value
    return value


def read_yaml(path: str) -> Dict[str, Any]:
    """The mapping in a YAML file, values read as YACS does; errors name the file."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:  # its text spans lines: the problem and where, on one
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML{where}: {what}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} does not hold a mapping of config keys (got {type(data).__name__})")
    return _literal(data)


def get(cfg: Dict[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def set_value(cfg: Dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    node[leaf] = value


def _coerce(key: str, value: Any, default: Any, source: str) -> Any:
    if default is None or value is None or type(value) is type(default):
        return _checked_items(key, value, default, source)
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, (tuple, list)) and isinstance(value, (tuple, list)):
        return type(default)(_checked_items(key, value, default, source))
    if isinstance(default, bool) and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    # KgCoOp's CTX_INIT is a bool in its own train.py but a phrase in CoOp's: both are accepted.
    if key.endswith(".CTX_INIT") and isinstance(value, (str, bool)):
        return value
    raise ConfigError(f"{key} expects {type(default).__name__} (default {default!r}), got {value!r} from {source}")


def _checked_items(key: str, value: Any, default: Any, source: str) -> Any:
    """A sequence value with the item type and count its key declares (``INPUT.SIZE (64, 'a')`` is
    an error, not a size); ints are accepted where floats are expected, and empty where the default
    is (``INPUT.SIZE []``: the model's)."""
    item, count = element_type(key)
    if item is None or not isinstance(value, (list, tuple)) or (not value and not default):
        return value
    numeric = item is float
    ok = all((isinstance(v, item) or (numeric and isinstance(v, int))) and not isinstance(v, bool) for v in value)
    if not ok or (count is not None and len(value) != count):
        what = f"{count} " if count is not None else ""
        raise ConfigError(f"{key} expects a list of {what}{item.__name__} values, got {value!r} from {source}")
    return type(value)(float(v) for v in value) if numeric else value


def _unknown_key(key: str, known: Iterable[str], source: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"unknown config key {key} in {source}{hint}")


def _merge(cfg: Dict[str, Any], tree: Dict[str, Any], source: str, set_at: Dict[str, int], layer: int) -> None:
    """Set the keys of ``tree`` (a file) in ``cfg``, recording ``layer`` as where each was set."""
    known = flatten(cfg)
    for key, value in flatten(tree).items():
        if key == "METHOD":
            continue
        if key not in known:
            # an empty mapping in the file (e.g. "TRAINER:" with nothing under it) sets nothing
            if isinstance(value, dict):
                continue
            raise _unknown_key(key, known, source)
        set_value(cfg, key, _coerce(key, value, known[key], source))
        set_at[key] = layer


def parse_overrides(tokens: Sequence[str]) -> List[Tuple[str, Any]]:
    """``["OPTIM.LR", "0.01", "TRAINER.COOP.CSC", "True"]`` -> ``[("OPTIM.LR", 0.01), ...]``."""
    tokens = list(tokens)
    if len(tokens) % 2:
        raise ConfigError(f"overrides come in KEY VALUE pairs; {tokens[-1]!r} has no value")
    out = []
    for key, value in zip(tokens[0::2], tokens[1::2]):
        if key.startswith("-"):
            raise ConfigError(f"unexpected option {key!r} among the KEY VALUE overrides (options go before them)")
        out.append((key, _literal(value)))
    return out


def _infer_method(tree: Dict[str, Any], path: Optional[str]) -> Optional[str]:
    if tree.get("METHOD"):
        return method_of_trainer(tree["METHOD"])
    trainer = tree.get("TRAINER") or {}
    if isinstance(trainer, dict) and trainer.get("NAME"):
        return method_of_trainer(trainer["NAME"])
    if path:
        found = method_of_trainer(os.path.basename(os.path.dirname(os.path.abspath(path))))
        if found:
            return found
    sections = [k for k in (trainer if isinstance(trainer, dict) else {}) if k != "NAME"]
    candidates = {m for m, s in METHODS.items() if s.section in sections}
    return candidates.pop() if len(candidates) == 1 else None


def _defaults_for(method: str) -> Dict[str, Any]:
    cfg = base_defaults()
    # every method's section, so that a file written for a sibling trainer (e.g. PRE's configs that
    # also set TRAINER.COOP) loads; the method's own section gets its own repository's defaults.
    for spec in METHODS.values():
        cfg["TRAINER"].setdefault(spec.section, spec.section_defaults())
    own = METHODS[method]
    cfg["TRAINER"][own.section] = own.section_defaults()
    for key, entry in own.outside.items():  # the keys outside the section its train.py adds or re-defaults
        if entry.default is not BASE_DEFAULT:
            _set(cfg, key, copy.deepcopy(entry.default))
    cfg["TRAINER"]["NAME"] = own.trainer_names[0]
    cfg["METHOD"] = method
    return cfg


def resolve_config(files: Sequence[Tuple[str, Dict[str, Any]]], *, method: Optional[str] = None,
                   arguments: Optional[Dict[str, Any]] = None, overrides: Sequence[str] = ()) -> Dict[str, Any]:
    """The resolved configuration.

    Args:
        files: ``(path or label, mapping)`` in merge order (dataset config first, then the method's).
        method: the method when the caller names it; otherwise inferred (module docstring).
        arguments: dotted keys set from command-line options (``DATASET.ROOT``, ``SEED``, ...).
        overrides: the trailing ``KEY VALUE`` tokens, applied last.
    """
    if method is None:
        for label, tree in reversed(list(files)):
            method = _infer_method(tree, label if os.path.exists(str(label)) else None)
            if method:
                break
    elif method_of_trainer(method) is None:
        raise ConfigError(f"unknown method {method!r} (known: {', '.join(METHODS)})")
    else:
        method = method_of_trainer(method)
    pairs = parse_overrides(overrides)
    for key, value in pairs:
        if key in ("METHOD", "TRAINER.NAME") and method_of_trainer(value):
            method = method_of_trainer(value)
    if method is None:
        labels = ", ".join(str(label) for label, _ in files) or "no config file"
        raise ConfigError(f"cannot tell the method from {labels}: pass --method (one of {', '.join(METHODS)}) "
                          "or set TRAINER.NAME")
    cfg = _defaults_for(method)
    defaults = flatten(cfg)
    set_at: Dict[str, int] = {}  # key -> the layer that set it last: files 0, 1, ..., then the command line
    for layer, (label, tree) in enumerate(files):
        _merge(cfg, copy.deepcopy(tree), str(label), set_at, layer)
    known = flatten(cfg)
    for key, value in list((arguments or {}).items()) + pairs:
        if key == "METHOD" or (key == "TRAINER.NAME" and method_of_trainer(value)):
            continue
        if key not in known:
            raise _unknown_key(key, known, "the command line")
        set_value(cfg, key, _coerce(key, value, known[key], "the command line"))
        set_at[key] = len(files)
    cfg["METHOD"] = method
    cfg["TRAINER"]["NAME"] = METHODS[method].trainer_names[0]
    _audit(cfg, defaults, set_at)
    return cfg


def _audit(cfg: Dict[str, Any], defaults: Dict[str, Any], set_at: Dict[str, int]) -> None:
    """Every key honoured or refused (:mod:`.key_audit`), and the input size checked against the
    backbone's where open_clip's config tells it without building the model (:mod:`.model_keys`;
    the built model is checked again). The prompt depths are checked on the built model's towers
    (:func:`~fastprompt.train.build.build_learner`), in a run's order of checks."""
    shape = shape_from_name(cfg["MODEL"]["BACKBONE"]["NAME"])
    follow_model(cfg, set_at, shape)
    check_config(cfg, flatten(cfg), defaults)
    check_input_size(cfg, shape)


def dump_yaml(cfg: Dict[str, Any]) -> str:
    """The configuration as YAML (tuples written as lists), keys in their resolved order."""
    import yaml

    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        return v

    return yaml.safe_dump(plain(cfg), sort_keys=False, default_flow_style=None, width=120)


# ---- named recipes -----------------------------------------------------------------------------
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
