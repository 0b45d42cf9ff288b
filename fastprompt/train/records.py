"""What a run writes as it goes: ``log.txt``, ``metrics.jsonl``, TensorBoard events, ``curves.png``.

``metrics.jsonl`` holds one JSON object per line: ``{"kind": "step", "epoch", "batch", "step",
"loss" (that optimizer step's: the mean over its accumulated batches and the ranks),
"epoch_mean_loss" (the epoch's so far), "lr", "images_per_s", "skipped_images", "time"}`` every
``TRAIN.PRINT_FREQ`` batches (and at the last batch of an epoch), ``{"kind": "epoch", ..., "loss" (epoch mean), "seconds"}`` after
each epoch and ``{"kind": "eval", "split", "accuracy", "macro_f1", ...}`` after each evaluation.
Lines are appended and flushed one by one; a resumed run appends to the same files (the lines
of steps redone after the last checkpoint appear twice, the later ones being the resumed run's).
Only rank 0 of a distributed run writes.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

from ..atomic_io import FULL_ERRNOS, StorageFullError

__all__ = ["RunRecords", "read_metrics", "plot_curves"]


class RunRecords:
    """Appends to ``log.txt`` / ``metrics.jsonl`` in ``run_dir`` and mirrors scalars to TensorBoard."""

    def __init__(self, run_dir: Optional[str], enabled: bool = True, tensorboard: bool = True, echo: bool = True):
        self.enabled = enabled and run_dir is not None
        self.echo = echo
        self.run_dir = run_dir
        self._log = self._metrics = self._tb = None
        if not self.enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        self._log = open(os.path.join(run_dir, "log.txt"), "a", encoding="utf-8")
        self._metrics = open(os.path.join(run_dir, "metrics.jsonl"), "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: optional
                SummaryWriter = None
            if SummaryWriter is not None:
                self._tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))

    def log(self, text: str) -> None:
        """A line for the user: stderr (above the progress bar) and ``log.txt``."""
        if self.echo:
            try:
                from tqdm import tqdm
                tqdm.write(text, file=sys.stderr)
            except ImportError:  # pragma: no cover
                print(text, file=sys.stderr)
        if self._log is not None:
            _append(self._log, f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

    def metric(self, record: Dict[str, Any]) -> None:
        if self._metrics is None:
            return
        record = {**record, "time": round(time.time(), 3)}
        _append(self._metrics, json.dumps(record, sort_keys=True) + "\n")
        if self._tb is not None:
            step = record.get("step", 0)
            prefix = record.get("split", "train") if record["kind"] == "eval" else record["kind"]
            for key, value in record.items():
                if key not in ("step", "epoch", "batch", "time") and isinstance(value, (int, float)) \
                        and not isinstance(value, bool):
                    self._tb.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        for f in (self._log, self._metrics):
            if f is not None:
                f.close()
        if self._tb is not None:
            self._tb.close()
        self._log = self._metrics = self._tb = None


def _append(f, text: str) -> None:
    """Append ``text`` and flush; full storage is a :class:`StorageFullError` naming the file (one line
    for the command line), not a bare ``OSError`` traceback."""
    try:
        f.write(text)
        f.flush()
    except OSError as exc:
        if exc.errno in FULL_ERRNOS:
            raise StorageFullError(f.name, exc.errno, str(exc), appending=True) from None
        raise


def read_metrics(path: str) -> List[Dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (a torn last line, from a killed run, is skipped)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def plot_curves(metrics_path: str, png_path: str) -> bool:
    """Training loss and learning rate per step, evaluation accuracy per epoch; False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from .state import atomic_write

    records = read_metrics(metrics_path)
    steps = {r["step"]: r for r in records if r.get("kind") == "step"}  # a resumed run's lines win
    evals = [r for r in records if r.get("kind") == "eval"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    xs = sorted(steps)
    axes[0].plot(xs, [steps[s]["loss"] for s in xs], label="step")
    if all("epoch_mean_loss" in steps[s] for s in xs):  # runs recorded before it kept only a running mean
        axes[0].plot(xs, [steps[s]["epoch_mean_loss"] for s in xs], label="epoch mean so far")
        axes[0].legend()
    axes[0].set(title="training loss", xlabel="step")
    axes[1].plot(xs, [steps[s]["lr"] for s in xs])
    axes[1].set(title="learning rate", xlabel="step", yscale="log")
    for split in sorted({r["split"] for r in evals}):
        pts = [(r["epoch"], r["accuracy"]) for r in evals if r["split"] == split]
        axes[2].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=split)
    axes[2].set(title="accuracy (%)", xlabel="epoch")
    if evals:
        axes[2].legend()
    fig.tight_layout()
    atomic_write(png_path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)
    return True
