"""Errors of the run layer; each message names the file, key or value at fault and what to do."""
from __future__ import annotations

__all__ = ["ConfigError", "TrainError"]


class ConfigError(ValueError):
    """A configuration file, key or value that cannot be used."""


class TrainError(RuntimeError):
    """A run that cannot start or go on: an existing run directory, a diverged loss, a bad checkpoint."""
