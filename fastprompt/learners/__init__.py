"""Prompt learners: one file per method, all sharing the ``PromptLearner`` API."""
from .base import LEARNERS, LearnerConfig, PretrainedNotAvailableError, PromptLearner
from .cocoop import CoCoOpConfig, CoCoOpLearner
from .coop import CoOpConfig, CoOpLearner

__all__ = ["PromptLearner", "LearnerConfig", "LEARNERS", "PretrainedNotAvailableError",
           "CoOpLearner", "CoOpConfig", "CoCoOpLearner", "CoCoOpConfig"]
