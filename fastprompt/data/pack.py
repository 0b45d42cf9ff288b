"""``fastprompt data pack``: an ImageNet-21K-P folder tree to WebDataset tar shards, resumably.

    pack_folder("/data", "/shards/in21k-16shot", shots=16, seed=42, shard_size=1000)

Output folder::

    shard-000000.tar ...      WebDataset shards (webdataset/webdataset): per sample
                              ``<key>.jpg|.webp|.png`` (the file's bytes as they are),
                              ``<key>.cls`` (label, ASCII) and ``<key>.wnid``
    classes.json, classnames.txt   the class table the labels index (imagenet21k_classes)
    pack_plan.json            the arguments and the ordered sample list (written first)
    pack_state.json           per finished shard: samples written, corrupt files skipped
    shards.json               the index, written when every shard is done

The sample list is the POMP training subset (:func:`fastprompt.data.imagenet21k.load_imagenet21k`:
``shots`` per class drawn with ``seed``), shuffled with a generator seeded from ``seed`` so that
every shard mixes classes, and cut into shards of ``shard_size`` samples. Each shard is written to
a temporary file in the output folder, fsynced and renamed, then recorded in ``pack_state.json``
(atomic too), so a shard file is either complete or absent. A rerun with the same arguments reads
``pack_plan.json`` back (the listing is not redone) and continues after the shards already done;
other arguments are refused unless ``overwrite``. A file that does not decode (PIL) is skipped,
named in ``pack_state.json`` and counted; a shard then holds fewer samples.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

from ..atomic_io import TEMP_PREFIX, atomic_write
from ..errors import DataError
from ..folder_lock import FolderLock
from .fewshot import sample_fewshot
from .imagenet21k import SPLIT_FOLDERS, load_imagenet21k
from .imagenet21k_classes import ClassTable, read_class_table
from .items import Item
from .listing import atomic_write_text

__all__ = ["PackArgs", "PackSummary", "pack_folder", "SHARD_PATTERN", "INDEX_FILE"]

logger = logging.getLogger("fastprompt.data")
SHARD_PATTERN = "shard-{:06d}.tar"
PLAN_FILE, STATE_FILE, INDEX_FILE = "pack_plan.json", "pack_state.json", "shards.json"
_FORMAT = 1
_KEEP = {"JPEG": "jpg", "WEBP": "webp", "PNG": "png"}


@dataclass(frozen=True)
class PackArgs:
    """What a pack is made of; a rerun must give the same to resume."""

    src: str
    shots: int = 16
    seed: int = 1
    shard_size: int = 1000
    split: str = "train"
    universe: str = "folders"
    names: str = "lemmas"
    classnames_file: Optional[str] = None


@dataclass
class PackSummary:
    out: str
    shards: int
    samples: int
    corrupt: int
    resumed_shards: int
    corrupt_files: List[str] = field(default_factory=list)


def _read_json(path: str) -> Optional[dict]:
    if not os.path.exists(path):
        return None
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path} ({exc}); remove it (or pass overwrite) to start the pack afresh") from None


def _write_json(path: str, data) -> None:
    atomic_write_text(path, json.dumps(data, separators=(",", ":")) + "\n")


def _plan_items(args: PackArgs) -> Tuple[List[Item], ClassTable, str]:
    """The ordered samples of the pack, its class table and the split folder they are under."""
    train = args.split == "train"
    ds = load_imagenet21k(args.src, args.shots if train else 0, args.seed, universe=args.universe, names=args.names,
                          classnames_file=args.classnames_file, with_val=not train)
    items = ds.train if train else ds.test
    if not train and args.shots:  # a few-shot val pack: the same per-class draw
        items, _ = sample_fewshot(items, [], args.shots, args.seed, with_val=False)
    table = ds.class_table
    base = ds.image_dir if train else os.path.join(ds.root, SPLIT_FOLDERS["val"])
    items = list(items)
    random.Random(f"fastprompt-pack-{args.seed}").shuffle(items)
    return items, table, base


def _digest(rows) -> str:
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode("utf-8")).hexdigest()


def _load_sample(base: str, row) -> Tuple[Optional[Tuple[str, bytes]], Optional[str]]:
    """``((extension, bytes), None)`` for a decodable image, ``(None, reason)`` otherwise."""
    from PIL import Image

    path = os.path.join(base, row[0])
    try:
        with open(path, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
            img.load()
            if fmt not in _KEEP:  # anything else is re-encoded losslessly
                buf = io.BytesIO()
                img.convert("RGB").save(buf, "PNG")
                data, fmt = buf.getvalue(), "PNG"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return None, f"{path}: {type(exc).__name__}: {exc}"
    return (_KEEP[fmt], data), None


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o444, 0
    tar.addfile(info, io.BytesIO(data))


def _write_shard(out: str, index: int, base: str, rows: List[list], table: ClassTable, pool, bar,
                 n_corrupt: List[int]) -> dict:
    """Write one shard atomically; returns its state entry (``n_corrupt[0]``: the running count)."""
    final = os.path.join(out, SHARD_PATTERN.format(index))
    written, corrupt = 0, []

    def write(tmp: str) -> None:
        nonlocal written
        with open(tmp, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for row, (sample, reason) in zip(rows, pool.map(lambda r: _load_sample(base, r), rows)):
                bar.update(1)
                if sample is None:
                    corrupt.append(reason)
                    n_corrupt[0] += 1
                    logger.warning("fastprompt data pack: skipping %s", reason)
                    bar.set_postfix(corrupt=n_corrupt[0], refresh=False)
                    continue
                ext, data = sample
                rel, label = row
                key = f"{index:06d}_{written:05d}"
                _add(tar, f"{key}.{ext}", data)
                _add(tar, f"{key}.cls", str(label).encode("ascii"))
                _add(tar, f"{key}.wnid", table.wnids[label].encode("ascii"))
                written += 1

    atomic_write(final, write)  # a shard file is complete or absent
    return {"file": os.path.basename(final), "samples": written, "corrupt": corrupt,
            "bytes": os.path.getsize(final)}


def _start(out: str, args: PackArgs, overwrite: bool) -> Tuple[dict, ClassTable]:
    """The plan of ``out``: read back (same arguments) or made now and written first."""
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(out):  # temporary files of an interrupted shard
        if name.startswith(TEMP_PREFIX) and name.endswith(".tar"):
            os.unlink(os.path.join(out, name))
    plan_path = os.path.join(out, PLAN_FILE)
    plan = None if overwrite else _read_json(plan_path)
    if plan is not None:
        if plan.get("format") != _FORMAT or plan.get("args") != asdict(args):
            raise DataError(f"{out} holds a pack made with other arguments ({plan.get('args')}); use a new output "
                            "folder, the same arguments to resume, or overwrite to start again")
        return plan, read_class_table(out)
    if overwrite:
        for name in os.listdir(out):
            if name in (PLAN_FILE, STATE_FILE, INDEX_FILE) or (name.startswith("shard-") and name.endswith(".tar")):
                os.unlink(os.path.join(out, name))
    items, table, base = _plan_items(args)
    if not items:
        raise DataError(f"{args.src}: no images to pack")
    prefix = os.path.join(base, "")
    rows = [[it.path[len(prefix):] if it.path.startswith(prefix) else it.path, it.label] for it in items]
    table.extra = {"split": args.split, "shots": args.shots, "seed": args.seed}
    table.write(out)
    plan = {"format": _FORMAT, "args": asdict(args), "base": base, "n_samples": len(rows),
            "n_shards": (len(rows) + args.shard_size - 1) // args.shard_size, "digest": _digest(rows), "rows": rows}
    _write_json(plan_path, plan)
    return plan, table


def pack_folder(src: str, out: str, shots: int = 16, seed: int = 1, shard_size: int = 1000, *, split: str = "train",
                universe: str = "folders", names: str = "lemmas", classnames_file: Optional[str] = None,
                workers: int = 4, overwrite: bool = False, progress: bool = True) -> PackSummary:
    """Pack (or finish packing) ``src`` into ``out``; see the module docstring.

    Raises:
        DataError: no tree at ``src``, ``shard_size < 1``, ``out`` holds a pack of other arguments.
        FolderInUseError: another process packs into ``out`` (:mod:`fastprompt.folder_lock`).
    """
    if not isinstance(shard_size, int) or shard_size < 1:
        raise DataError(f"shard_size must be an integer >= 1, got {shard_size!r}")
    if split not in ("train", "val"):
        raise DataError(f"split must be 'train' or 'val', got {split!r}")
    out = os.path.abspath(os.path.expanduser(out))
    args = PackArgs(os.path.abspath(os.path.expanduser(src)), shots, seed, shard_size, split, universe, names,
                    os.path.abspath(classnames_file) if classnames_file else None)
    with FolderLock(out, "fastprompt data pack"):  # one packer per folder: two would interleave shards
        return _pack(out, args, overwrite, workers, progress)


def _pack(out: str, args: PackArgs, overwrite: bool, workers: int, progress: bool) -> PackSummary:
    from tqdm import tqdm

    shard_size = args.shard_size
    plan, table = _start(out, args, overwrite)
    state_path = os.path.join(out, STATE_FILE)
    state = (None if overwrite else _read_json(state_path)) or {"digest": plan["digest"], "shards": {}}
    if state.get("digest") != plan["digest"]:
        raise DataError(f"{state_path} belongs to another plan; remove it to redo every shard")
    done: Dict[str, dict] = {k: v for k, v in state["shards"].items()
                             if os.path.isfile(os.path.join(out, v["file"]))}
    rows, n_shards = plan["rows"], plan["n_shards"]
    resumed = len(done)
    todo = [i for i in range(n_shards) if str(i) not in done]
    bar = tqdm(total=len(rows), initial=sum(min(shard_size, len(rows) - int(i) * shard_size) for i in done),
               unit="img", desc=f"pack {os.path.basename(out)}", disable=not progress, dynamic_ncols=True)
    n_corrupt = [sum(len(v["corrupt"]) for v in done.values())]
    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            for i in todo:
                entry = _write_shard(out, i, plan["base"], rows[i * shard_size:(i + 1) * shard_size], table, pool, bar,
                                     n_corrupt)
                done[str(i)] = entry
                _write_json(state_path, {"digest": plan["digest"], "shards": done})
    finally:
        bar.close()
    shards = [done[str(i)] for i in range(n_shards)]
    corrupt_files = [c for s in shards for c in s["corrupt"]]
    index = {"format": _FORMAT, "num_classes": len(table), "samples": sum(s["samples"] for s in shards),
             "corrupt": len(corrupt_files), "args": asdict(args),
             "shards": [{"file": s["file"], "samples": s["samples"], "bytes": s.get("bytes")} for s in shards]}
    _write_json(os.path.join(out, INDEX_FILE), index)
    return PackSummary(out, n_shards, index["samples"], len(corrupt_files), resumed, corrupt_files)
