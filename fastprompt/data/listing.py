"""Directory listings, cached under the user cache directory.

Listing ImageNet (1,000 folders, 1.28M files) takes minutes on network storage, so the raw
``os.listdir`` result of a set of folders is kept in ``<cache>/listings/<hash>.json`` and reused
while every folder still has the same device, inode and modification time (adding, removing or
renaming a file changes its folder's mtime). The stored order is the order ``os.listdir`` gave,
which is what CoOp's ImageNet loader iterates (``dassl.utils.listdir_nohidden``, unsorted); a
copy of the tree elsewhere has new inodes and mtimes, so it is listed afresh.

The cache directory is ``$FASTPROMPT_CACHE``, else ``$XDG_CACHE_HOME/fastprompt``, else
``~/.cache/fastprompt``. Nothing is ever written into a dataset folder. Writes are atomic
(temporary file, fsync, rename); a cache that cannot be written is skipped with one warning.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import Dict, Iterable, List, Optional, Sequence

from ..atomic_io import atomic_write_text
from ..errors import DataError
from ..keyed_file import cache_dir

__all__ = ["list_dirs", "missing_paths", "atomic_write_text", "listdir_nohidden"]

logger = logging.getLogger("fastprompt.data")
_FORMAT = 1
# A folder modified this recently may still change within its mtime granularity (1-2 s on some
# file systems) without its mtime moving, so its listing is not stored.
_SETTLE_S = 2.0
_warned_unwritable = False


def _signature(dirs: Sequence[str]) -> List[List[int]]:
    sig = []
    for d in dirs:
        try:
            st = os.stat(d)
        except OSError as exc:
            raise DataError(f"cannot list {d}: {exc.strerror or exc}") from None
        sig.append([st.st_dev, st.st_ino, st.st_mtime_ns])
    return sig


def _cache_file(dirs: Sequence[str], root: Optional[str]) -> str:
    h = hashlib.sha256(("\0".join(dirs)).encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return os.path.join(root or cache_dir(), "listings", f"{h}.json")


def _read_cache(path: str, dirs: Sequence[str], sig) -> Optional[List[List[str]]]:
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if (not isinstance(data, dict) or data.get("format") != _FORMAT or data.get("dirs") != list(dirs)
            or data.get("sig") != sig or not isinstance(data.get("names"), list)
            or len(data["names"]) != len(dirs)):
        return None
    return data["names"]


def _write_cache(path: str, dirs: Sequence[str], sig, names) -> None:
    global _warned_unwritable
    try:
        atomic_write_text(path, json.dumps({"format": _FORMAT, "dirs": list(dirs), "sig": sig,
                                            "names": names}, separators=(",", ":")))
    except OSError as exc:
        if not _warned_unwritable:
            logger.warning("fastprompt: cannot write the listing cache %s (%s); listing without it "
                           "(set FASTPROMPT_CACHE to a writable folder)", path, exc.strerror or exc)
            _warned_unwritable = True


def list_dirs(dirs: Iterable[str], cache: bool = True, cache_root: Optional[str] = None) -> List[List[str]]:
    """``[os.listdir(d) for d in dirs]`` (raw order, hidden names included), cached.

    The cached copy is used only while every folder has the device, inode and mtime it had when
    it was listed. ``cache_root`` overrides :func:`fastprompt.keyed_file.cache_dir`.
    """
    dirs = [os.path.abspath(d) for d in dirs]
    sig = _signature(dirs)
    path = _cache_file(dirs, cache_root) if cache else None
    if path is not None:
        hit = _read_cache(path, dirs, sig)
        if hit is not None:
            return hit
    names = []
    for d in dirs:
        try:
            names.append(os.listdir(d))
        except OSError as exc:
            raise DataError(f"cannot list {d}: {exc.strerror or exc}") from None
    if path is not None:
        settled = time.time_ns() - int(_SETTLE_S * 1e9)
        if _signature(dirs) == sig and all(s[2] < settled for s in sig):
            _write_cache(path, dirs, sig, names)
    return names


def listdir_nohidden(names: Iterable[str], sort: bool = False) -> List[str]:
    """Names not starting with ``.``, as ``dassl.utils.listdir_nohidden`` (optionally sorted)."""
    out = [n for n in names if not n.startswith(".")]
    if sort:
        out.sort()
    return out


def missing_paths(paths: Iterable[str], cache: bool = True, cache_root: Optional[str] = None) -> List[str]:
    """The ``paths`` that are not on disk, found by listing each parent folder once."""
    by_dir: Dict[str, List[str]] = {}
    for p in paths:
        by_dir.setdefault(os.path.dirname(p), []).append(p)
    present_dirs = [d for d in by_dir if os.path.isdir(d)]
    listed = dict(zip(present_dirs, map(set, list_dirs(present_dirs, cache, cache_root)))) if present_dirs else {}
    missing = []
    for d, group in by_dir.items():
        names = listed.get(d)
        if names is None:
            missing.extend(group)
        else:
            missing.extend(p for p in group if os.path.basename(p) not in names)
    return missing


def require_files(paths: Iterable[str], source: str, cache: bool, cache_root: Optional[str], hint: str) -> None:
    """:class:`DataError` naming ``source`` and up to five of the ``paths`` not on disk."""
    missing: Sequence[str] = missing_paths(paths, cache, cache_root)
    if missing:
        shown = "\n  ".join(missing[:5])
        more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DataError(f"{source} names {len(missing)} image(s) that are not on disk:\n  {shown}{more}\n{hint}")
