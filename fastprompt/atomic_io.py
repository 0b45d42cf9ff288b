"""Atomic file writes: a reader (or a crash) sees the old file or the whole new one, never half.

Every file fastprompt writes (checkpoints, run state, logs' companions, caches, shards' tables) goes
through :func:`atomic_write`: a temporary file in the target's folder, ``fsync``, ``os.replace``
over the target, then ``fsync`` of the folder so the rename itself survives a power loss.
Standard library only (any layer may import it).
"""
from __future__ import annotations

import os
import tempfile
from typing import Callable

__all__ = ["atomic_write", "atomic_write_text"]


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


TEMP_PREFIX = ".tmp-"  # temporary files are ".tmp-<random>-<target name>" beside their target


def _umask() -> int:
    """The process's umask, read without changing it (``/proc``; elsewhere set and restored)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, fsync it and rename it over ``path``; the folder must exist.
    On any error the temporary file is removed and ``path`` is left as it was. The file gets the
    mode a plain ``open`` would give it (``0o666`` less the umask), not ``mkstemp``'s private
    ``0o600``: a cluster group reading a run's files or a shard set must not be locked out."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX, suffix="-" + os.path.basename(path))
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def atomic_write_text(path: str, text: str) -> None:
    """:func:`atomic_write` of ``text`` (UTF-8), creating the folder if needed."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)
