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
* :class:`FeatureCache` / :class:`FixedViews` — frozen image features computed once per image
  view for the text-prompt methods (``TRAIN.FEATURE_CACHE``), and a fixed number of seeded
  augmented views per training image (``TRAIN.FEATURE_CACHE_VIEWS``).
"""
from .config import read_yaml, resolve_config
from ..errors import ConfigError, TrainError
from ..features.cache import FeatureCache
from ..features.fixed_views import FixedViews
from .gpa import GaussianPromptAggregation, gaussian_epoch_weights
from .recipes import list_recipes, load_recipe, recipe_path
from .run import evaluate_checkpoint, train_run
from .schedule import EpochSchedule, build_optimizer
from .trainer import Trainer, TrainSettings

__all__ = ["GaussianPromptAggregation", "gaussian_epoch_weights", "Trainer", "TrainSettings", "EpochSchedule",
           "build_optimizer", "resolve_config", "read_yaml", "list_recipes", "load_recipe", "recipe_path",
           "train_run", "evaluate_checkpoint", "ConfigError", "TrainError", "FeatureCache", "FixedViews"]
