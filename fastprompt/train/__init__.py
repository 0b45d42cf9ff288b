"""The run layer: recipes, configuration, the trainer, checkpoints and resume, evaluation.

* :func:`train_run` / :func:`evaluate_checkpoint` — a run from a resolved configuration
  (``fastprompt train`` / ``fastprompt eval``), into a run directory it can resume from;
* :func:`resolve_config`, :func:`read_yaml`, :func:`list_recipes`, :func:`load_recipe` — recipes
  (the original training configurations, package data), fastprompt and original Dassl YAML files,
  ``KEY VALUE`` overrides;
* :class:`Trainer` / :class:`TrainSettings` — one training loop for every learner;
  :class:`EpochSchedule` — Dassl's warm-up + cosine schedule;
* :class:`GaussianPromptAggregation` / :func:`gaussian_epoch_weights` — PromptSRC's
  Gaussian-weighted aggregation of the prompts over epochs;
* :class:`FeatureCache` / :class:`FixedViews` (from :mod:`fastprompt.features`) — frozen image
  features computed once per image view for the text-prompt methods (``TRAIN.FEATURE_CACHE``),
  and a fixed number of seeded augmented views per training image (``TRAIN.FEATURE_CACHE_VIEWS``).

The run's start-up (processes, run directory, model, records) is :mod:`.startup`, shared with
:mod:`fastprompt.pretrain`; the protocols (:mod:`fastprompt.protocols`) and pretraining stand on
this room and are never imported by it.
"""
from ..errors import ConfigError, TrainError
from ..features import FeatureCache, FixedViews
from .config import list_recipes, load_recipe, read_yaml, recipe_path, resolve_config
from .gpa import GaussianPromptAggregation, gaussian_epoch_weights
from .run import evaluate_checkpoint, train_run
from .schedule import EpochSchedule, build_optimizer
from .trainer import Trainer, TrainSettings

__all__ = ["GaussianPromptAggregation", "gaussian_epoch_weights", "Trainer", "TrainSettings", "EpochSchedule",
           "build_optimizer", "resolve_config", "read_yaml", "list_recipes", "load_recipe", "recipe_path",
           "train_run", "evaluate_checkpoint", "ConfigError", "TrainError", "FeatureCache", "FixedViews"]
