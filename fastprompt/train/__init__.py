"""Training-loop utilities shared by the learners (method-specific, model-agnostic).

* :class:`GaussianPromptAggregation` / :func:`gaussian_epoch_weights` — PromptSRC's
  Gaussian-weighted aggregation of the prompts over epochs.
"""
from .gpa import GaussianPromptAggregation, gaussian_epoch_weights

__all__ = ["GaussianPromptAggregation", "gaussian_epoch_weights"]
