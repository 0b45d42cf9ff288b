"""Benchmark results as data: CSV rows that say what was measured where, and the exit status.

Every row starts with ``common_fields``: when, on which device, at which commit
(``git rev-parse HEAD``, ``-dirty`` when tracked files differ from it; read when the benchmark
starts) and with which versions.
``report_rows`` appends the rows and turns missed targets into a non-zero exit status, unless
the benchmark was started with ``--no-fail`` (``add_report_arguments``).
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import functools
import importlib.metadata
import os
import platform
import subprocess
from typing import Dict, List, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def add_report_arguments(parser: argparse.ArgumentParser, default_csv: str) -> None:
    """``--csv PATH`` (rows are appended there) and ``--no-fail`` (report missed targets, exit 0)."""
    parser.add_argument("--csv", default=default_csv, help="append the result rows to this CSV")
    parser.add_argument("--no-fail", action="store_true",
                        help="only report missed targets (exit status 0); by default a missed target exits 1")


@functools.lru_cache(maxsize=None)
def commit() -> str:
    """The checked-out commit of this repository, ``-dirty`` when tracked files other than the results
    (``bench/results/``: what earlier runs wrote, not code that runs) have changes."""
    def git(*args):
        return subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()
    try:
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)bench/results")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


# Read once, when the benchmark starts (imports this module): the tree whose code it then loads and
# measures, not whatever the tree holds when the first row is written minutes later.
commit()


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ""


@functools.lru_cache(maxsize=None)
def versions() -> Dict[str, str]:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda or "",
            "triton": _version("triton"), "open_clip": _version("open_clip_torch"),
            "fastprompt": _version("fastprompt")}


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu} ({torch.get_num_threads()} threads)"


def common_fields(device) -> Dict[str, object]:
    """The columns every row starts with: time, device, commit and versions."""
    return {"timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "device": device_name(device), **versions(), "commit": commit()}


def append_csv(path: str, rows: List[Dict[str, object]]) -> None:
    """Append rows (dicts with the same keys) to ``path``, writing a header for a new file.

    When the rows bring columns the file does not have yet, the file is rewritten (atomically)
    with the union of the columns, older rows leaving the new ones empty.
    """
    if not rows:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fields = list(rows[0])
    old_rows: List[Dict[str, str]] = []
    if os.path.exists(path) and os.path.getsize(path) > 0:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            old_fields = list(reader.fieldnames or [])
            if old_fields == fields:
                old_rows = None
            else:
                old_rows = list(reader)
                fields = old_fields + [name for name in fields if name not in old_fields]
    if old_rows is None:  # same columns: a plain append
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=fields).writerows(rows)
        return
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(old_rows + rows)
    os.replace(tmp, path)


def report_rows(path: str, rows: List[Dict[str, object]], below: Sequence[str] = (), no_fail: bool = False) -> int:
    """Append ``rows`` to the CSV at ``path``, say so and list the targets missed; the exit status:
    1 when a target was missed (0 with ``no_fail``)."""
    append_csv(path, rows)
    print(f"appended {len(rows)} rows to {path}")
    if not below:
        return 0
    print("below target: " + "; ".join(below))
    if no_fail:
        print(f"{len(below)} target(s) missed; --no-fail: exit status 0")
        return 0
    print(f"{len(below)} target(s) missed: exit status 1 (--no-fail only reports them)")
    return 1
