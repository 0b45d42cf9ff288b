"""The expected failures of fastprompt, and how a command reports one (DESIGN §7.2).

An expected failure is the user's to fix: a data folder, a configuration, a run directory. Each
message names the file, key or value at fault and what to do; a command prints it as one line on
stderr and exits 2 (:func:`report_failure`). Anything else is a bug and keeps its traceback.

* :class:`DataError` — a dataset that cannot be loaded as asked (a missing file, a value out of
  range, an unreadable split);
* :class:`ConfigError` — a configuration file, key or value that cannot be used;
* :class:`TrainError` — a run that cannot start or go on (an existing run directory, a diverged
  loss, a bad checkpoint);
* :class:`FolderInUseError` — another job holds the folder this one would write into
  (:mod:`fastprompt.folder_lock`);
* :class:`PretrainedNotAvailableError` — pretrained weights that are not on this machine and
  cannot be fetched (:mod:`fastprompt.learners.pretrained` says which file, and where it goes);
* :class:`PretrainedFileError` — a weights file given as ``pretrained`` that is not a readable
  checkpoint of the model (a text file, a truncated download, another architecture's weights);
* :class:`~fastprompt.atomic_io.StorageFullError` — a file not written because the storage is full
  (no space, a quota, a file-size limit); the file on disk is the one from before.
"""
from __future__ import annotations

import sys

from .atomic_io import StorageFullError

__all__ = ["DataError", "ConfigError", "TrainError", "FolderInUseError", "PretrainedNotAvailableError",
           "PretrainedFileError", "StorageFullError", "EXPECTED_ERRORS", "report_failure"]


class DataError(ValueError):
    """A dataset cannot be loaded as asked: a file is missing, a value is out of range, ...

    The message names the file or the value and says what to do about it.
    """


class ConfigError(ValueError):
    """A configuration file, key or value that cannot be used."""


class TrainError(RuntimeError):
    """A run that cannot start or go on: an existing run directory, a diverged loss, a bad checkpoint."""


class FolderInUseError(RuntimeError):
    """Another process writes into the folder (a run directory, a shard folder): the message names it."""


class PretrainedNotAvailableError(RuntimeError):
    """The requested pretrained weights are not on this machine and cannot be fetched."""


class PretrainedFileError(ConfigError):
    """A ``pretrained`` weights file (or folder) that cannot be loaded into the model: not a torch
    or safetensors file, damaged, or the weights of another architecture. A ``ValueError``."""


# What the run commands (train, eval, run, results, pretrain) report as one line; a missing file
# named on the command line is the user's to fix as well, and so is a full disk.
EXPECTED_ERRORS = (ConfigError, TrainError, DataError, FolderInUseError, PretrainedNotAvailableError,
                   FileNotFoundError, StorageFullError)


def report_failure(command: str, exc: Exception) -> int:
    """Print ``exc`` as ``fastprompt COMMAND: error: ...`` on stderr (with the file a
    ``FileNotFoundError`` names); returns the exit status, 2."""
    msg = str(exc)
    if isinstance(exc, FileNotFoundError) and exc.filename and exc.filename not in msg:
        msg = f"{msg}: {exc.filename}"
    print(f"fastprompt {command}: error: {msg}", file=sys.stderr)
    return 2
