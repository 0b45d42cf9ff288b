"""Atomic file writes: a reader (or a crash) sees the old file or the whole new one, never half.

Every file fastprompt writes (checkpoints, run state, logs' companions, caches, shards' tables) goes
through :func:`atomic_write`: a temporary file in the target's folder, ``fsync``, ``os.replace``
over the target, then ``fsync`` of the folder so the rename itself survives a power loss.
A write that fails because the storage is full — no space (``ENOSPC``), a quota (``EDQUOT``),
a file-size limit (``EFBIG``) — is a :class:`StorageFullError` naming the file and the reason; the
temporary file is removed and the target left as it was, so the error can say so. Standard library
only (any layer may import it).
"""
from __future__ import annotations

import errno
import os
import re
import tempfile
from typing import Callable, Optional, Union

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "StorageFullError", "FULL_ERRNOS"]

# errnos of a write the storage refused for want of room: no space, a quota, a file-size limit
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class StorageFullError(OSError):
    """A file could not be written because the storage is full (no space, a quota, a file-size limit).

    ``errno``/``strerror``: the operating system's reason (``None`` where a library reported the
    failure without one); ``filename``: the file that was being written. ``str()`` is one line
    naming both, and that the file on disk is the one from before the write.
    """

    def __init__(self, path: str, err: Optional[int], detail: str, appending: bool = False):
        super().__init__(err, os.strerror(err) if err else detail, path)
        reason = f"{os.strerror(err)} ({errno.errorcode.get(err, err)})" if err else detail
        if appending:  # a log's append is not atomic: its last line may be cut (readers skip a torn line)
            kept = "its last line may be cut short; free space, then rerun with --resume"
        else:
            kept = "it is left as it was before" if os.path.exists(path) else "no file was created"
        self.message = f"cannot write {path}: {reason}; {kept}"

    def __str__(self) -> str:
        return self.message


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


# How libraries that write files themselves report a refused write without an OSError: safetensors
# ("I/O error: File too large (os error 27)") and torch's zip writer ("PytorchStreamWriter failed
# writing file data/0: file write failed"; the errno is not kept).
_OS_ERROR_CODE = re.compile(r"\(os error (\d+)\)")
_TORCH_WRITE_FAILED = ("PytorchStreamWriter failed writing file", "file write failed")


def full_storage_errno(exc: BaseException) -> Union[int, None, bool]:
    """The errno when ``exc`` is a write the storage refused for want of room; ``None`` when it is
    one whose errno the library dropped (torch's stream writer); ``False`` when it is not one."""
    if isinstance(exc, OSError):
        return exc.errno if exc.errno in FULL_ERRNOS else False
    text = str(exc)
    code = _OS_ERROR_CODE.search(text)
    if code is not None:
        return int(code.group(1)) if int(code.group(1)) in FULL_ERRNOS else False
    return None if any(marker in text for marker in _TORCH_WRITE_FAILED) else False


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, fsync it and rename it over ``path``; the folder must exist.
    On any error the temporary file is removed and ``path`` is left as it was; a write the storage
    refused for want of room (see :func:`full_storage_errno`) is then a :class:`StorageFullError`.
    The file gets the mode a plain ``open`` would give it (``0o666`` less the umask), not
    ``mkstemp``'s private ``0o600``: a cluster group reading a run's files or a shard set must not
    be locked out."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX, suffix="-" + os.path.basename(path))
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        code = full_storage_errno(exc) if isinstance(exc, Exception) else False
        if code is not False:
            raise StorageFullError(path, code, "the write failed (is the disk full?): " + str(exc).splitlines()[0]) \
                from exc
        raise
    _fsync_dir(directory)


def atomic_write_bytes(path: str, data: Union[bytes, bytearray, memoryview]) -> None:
    """:func:`atomic_write` of ``data`` through Python's own file I/O, so that a refused write keeps
    its errno: serialise with a library into memory first (``torch.save`` to a ``BytesIO``,
    ``safetensors.torch.save``), then write with this."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)


def atomic_write_text(path: str, text: str) -> None:
    """:func:`atomic_write` of ``text`` (UTF-8), creating the folder if needed."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)
