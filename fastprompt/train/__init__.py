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

Its names are imported on first use (:mod:`fastprompt.lazy`), so ``fastprompt.train.cli`` builds
its parsers without torch.
"""
from ..lazy import lazy_exports

_EXPORTS = {
    "..errors": ("ConfigError", "TrainError"),
    "..features": ("FeatureCache", "FixedViews"),
    ".config": ("list_recipes", "load_recipe", "read_yaml", "recipe_path", "resolve_config"),
    ".gpa": ("GaussianPromptAggregation", "gaussian_epoch_weights"),
    ".run": ("evaluate_checkpoint", "train_run"),
    ".schedule": ("EpochSchedule", "build_optimizer"),
    ".trainer": ("Trainer", "TrainSettings"),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
