"""Dataset loading and image decoding speed.

1. ``load_dataset("imagenet", ...)`` on a generated ImageNet tree (``--classes`` folders of
   ``--per-class`` train files each, ``--val-per-class`` val files; the files are empty, only
   the listing is measured): *cold* (empty fastprompt cache: every folder is listed) and *warm*
   (the listing cache hit), for all images and for a 16-shot draw. The folders' mtimes are set a
   minute back, as on a dataset that is not being written to (the cache skips folders modified
   in the last two seconds). The OS page cache is not dropped, so "cold" is a listing from
   memory-resident directories; on network storage the cold listing is much slower and the warm
   load is not.
2. Decoded images/s of the training transform (random resized crop + flip + normalise, 224 px)
   on ``--decode-images`` generated ``--decode-size`` JPEGs: in the main process (= one
   DataLoader worker) and through a DataLoader with 1 and 2 workers; the evaluation transform
   with and without the JPEG draft fast path.

    python bench/data/bench_data.py                       # 1,000 x 100 tree, 256 JPEGs of 500x375
    python bench/data/bench_data.py --classes 100 --per-class 50 --decode-images 64
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)  # run as a script: ``bench`` imports from the repository root
from bench.harness.timing import median, setup_threads  # noqa: E402  (first: sets OMP_WAIT_POLICY)
from bench.harness.report import add_report_arguments, common_fields, report_rows  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from fastprompt.data import ImageDataset, Item, load_dataset, make_loader  # noqa: E402
from fastprompt.testing.fake_trees import make_imagenet  # noqa: E402
from fastprompt.data.transforms import test_transform, train_transform  # noqa: E402

DEFAULT_CSV = os.path.join(REPO, "bench", "results", "bench_data.csv")


def _settle(tree: str, age_s: float = 60.0) -> None:
    t = time.time() - age_s
    for dirpath, _, _ in os.walk(tree):
        os.utime(dirpath, (t, t))


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bench_listing(work: str, args) -> list:
    root = os.path.join(work, "data")
    cache = os.path.join(work, "cache")
    t_gen, _ = _timed(lambda: make_imagenet(root, args.classes, args.per_class, args.val_per_class, empty_files=True))
    _settle(os.path.join(root, "imagenet"))
    n_files = args.classes * (args.per_class + args.val_per_class)
    print(f"generated {n_files:,} files in {args.classes:,} x 2 folders in {t_gen:.1f} s")
    rows = []
    for shots in (0, 16):
        shutil.rmtree(cache, ignore_errors=True)
        cold, ds = _timed(lambda: load_dataset("imagenet", root, shots=shots, seed=1, cache_root=cache))
        warm = median([_timed(lambda: load_dataset("imagenet", root, shots=shots, seed=1, cache_root=cache))[0]
                       for _ in range(args.repeats)])
        nocache = median([_timed(lambda: load_dataset("imagenet", root, shots=shots, seed=1, cache=False))[0]
                          for _ in range(args.repeats)])
        print(f"load_dataset('imagenet', shots={shots}): {len(ds.train):,} train / {len(ds.test):,} test items; "
              f"cold {cold:.3f} s, warm {warm:.3f} s, without cache {nocache:.3f} s")
        rows.append({"case": f"imagenet-load-shots{shots}", "classes": args.classes, "files": n_files,
                     "cold_s": round(cold, 4), "warm_s": round(warm, 4), "nocache_s": round(nocache, 4)})
    return rows


def _make_jpegs(folder: str, n: int, w: int, h: int) -> list:
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    items = []
    for i in range(n):
        base = (np.sin(xx / (7 + i % 13)) + np.cos(yy / (5 + i % 11))) * 60 + 128
        arr = np.stack([base, np.roll(base, i, 0), np.roll(base, 2 * i, 1)], -1) + rng.normal(0, 12, (h, w, 3))
        path = os.path.join(folder, f"{i:05d}.jpg")
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
        items.append(Item(path, i % 10, "c"))
    return items


def _rate_inprocess(ds) -> float:
    t, _ = _timed(lambda: [ds[i] for i in range(len(ds))])
    return len(ds) / t


def _rate_loader(ds, workers: int, batch: int) -> float:
    """Images/s over a second epoch (persistent workers already started and warm)."""
    loader = make_loader(ds, batch_size=batch, shuffle=False, num_workers=workers)
    sum(len(b[1]) for b in loader)
    t0 = time.perf_counter()
    n = sum(len(b[1]) for b in loader)
    rate = n / (time.perf_counter() - t0)
    del loader
    return rate


def bench_decode(work: str, args) -> list:
    w, h = args.decode_size
    items = _make_jpegs(os.path.join(work, "jpegs"), args.decode_images, w, h)
    rows = []
    torch.manual_seed(0)
    cases = [("train", ImageDataset(items, train_transform(224))),
             ("test", ImageDataset(items, test_transform(224))),
             ("test-draft", ImageDataset(items, test_transform(224), draft_size=224))]
    for name, ds in cases:
        _rate_inprocess(ds)  # warm-up (file cache, allocator)
        one = median([_rate_inprocess(ds) for _ in range(args.repeats)])
        row = {"case": f"decode-{name}", "image": f"{w}x{h}", "images": len(ds), "inprocess_img_s": round(one, 1)}
        msg = f"decode {name:10s} {w}x{h} JPEG -> 224: {one:7.1f} img/s in one process (= one worker)"
        if name == "train":
            for workers in args.workers:
                rate = _rate_loader(ds, workers, batch=32)
                row[f"loader{workers}_img_s"] = round(rate, 1)
                row[f"loader{workers}_per_worker_img_s"] = round(rate / workers, 1)
                msg += f"; DataLoader {workers} worker(s): {rate:.1f} img/s ({rate / workers:.1f} per worker)"
        print(msg)
        rows.append(row)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--val-per-class", type=int, default=10)
    p.add_argument("--decode-images", type=int, default=256)
    p.add_argument("--decode-size", type=int, nargs=2, default=(500, 375), metavar=("W", "H"))
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads in the main process")
    p.add_argument("--workdir", default=None, help="where to generate the trees (default: a temp dir)")
    add_report_arguments(p, DEFAULT_CSV)
    args = p.parse_args()
    setup_threads(args.threads)
    work = tempfile.mkdtemp(prefix="bench_data_", dir=args.workdir)
    try:
        rows = bench_listing(work, args) + bench_decode(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fields = common_fields(torch.device("cpu"))
    columns = list(dict.fromkeys(k for r in rows for k in r))  # one header for both kinds of row
    return report_rows(args.csv, [{**fields, **{k: r.get(k, "") for k in columns}} for r in rows],
                       no_fail=args.no_fail)


if __name__ == "__main__":
    sys.exit(main())
