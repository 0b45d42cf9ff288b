"""An exclusive lock on a folder for the life of the job that writes into it.

Two jobs writing into one folder (two ``fastprompt train`` on one ``--output-dir``, a second
``fastprompt data pack`` into the same shards) interleave their logs and leave one job's
configuration beside the other's prompts; checking that the folder is free and then writing is a
race. So a job takes ``<folder>/.fastprompt.lock`` before its first check and holds it to its end:
``train``, ``pretrain`` and ``eval`` (writing into a run), ``run`` (the grid's folder), and
``data pack``.

The lock is ``flock(LOCK_EX | LOCK_NB)`` on the open file: the kernel drops it when the holder
exits, however it exits, so after a ``kill -9`` the next job takes it at once (nothing stale to
clean up). Over NFS, Linux turns ``flock`` into byte-range locks that the server arbitrates, so
jobs on different hosts exclude each other too. The file holds the holder's pid, host, command
and start time, which a refused job names. POSIX only (``fcntl``).
"""
from __future__ import annotations

import datetime
import errno
import json
import os
import socket
import sys
import time
from typing import Optional

from .errors import FolderInUseError

__all__ = ["LOCK_FILE", "FolderLock"]

LOCK_FILE = ".fastprompt.lock"


class FolderLock:
    """``with FolderLock(folder, "fastprompt train"):`` — the folder is this job's until the block ends.

    Args:
        folder: the folder (created if missing).
        job: what holds it, for the message another job gets (e.g. ``"fastprompt train"``).

    Raises:
        FolderInUseError: another process holds the folder (the message names its pid, host,
            command and start time).
    """

    def __init__(self, folder: str, job: str):
        self.folder = os.path.abspath(os.path.expanduser(folder))
        self.path = os.path.join(self.folder, LOCK_FILE)
        self.job = job
        self._fd: Optional[int] = None

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        import fcntl

        if self._fd is not None:
            return
        os.makedirs(self.folder, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                    raise
                raise FolderInUseError(f"{self.folder} is in use by {self._holder()}; wait for it to end or "
                                       "choose another folder") from None
            # A holder that released the lock also unlinks the file: if this descriptor's file is
            # no longer the one at the path, the lock taken is on a dead file. Take the new one.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"job": self.job, "pid": os.getpid(), "host": socket.gethostname(),
                                 "command": " ".join(sys.argv),
                                 "started": datetime.datetime.now().isoformat(timespec="seconds")}).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # while still holding it, so no job locks a file about to vanish
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def _holder(self) -> str:
        # the holder writes its details right after taking the lock: a refusal in between waits a moment
        for attempt in range(5):
            try:
                with open(self.path, encoding="utf-8") as f:
                    info = json.load(f)
                return (f"{info.get('job', 'another job')} (pid {info.get('pid')} on {info.get('host')}, started "
                        f"{info.get('started')}: {info.get('command')})")
            except (OSError, ValueError, AttributeError):
                time.sleep(0.1)
        return "another process (it has not written its details)"
