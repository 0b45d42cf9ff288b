"""Every CoOp layout, generated in a temp dir, loads with the original's items, order, labels,
class names, few-shot draw and base/new split (oracle: fastprompt.reference.dassl_sampling plus
a literal reading of the files, as KaiyangZhou/CoOp datasets/*.py read them)."""
import json
import os
import random
import stat
from collections import OrderedDict

import pytest

from fastprompt.data import DataError, Item, load_dataset
from fastprompt.testing.fake_trees import make_aircraft, make_imagenet, make_split_dataset, make_variant
from fastprompt.data.registry import SPECS
from fastprompt.reference import dassl_sampling as ref

SIZES = [(20, 5, 7), (3, 2, 4), (17, 1, 2), (1, 4, 3), (40, 9, 1), (16, 3, 3), (5, 5, 5)]  # uneven, some < K
SPLIT_SPECS = [s for s in SPECS if s.family == "split"]


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTPROMPT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _oracle(train, val, test, shots, seed, subsample, imagenet=False):
    state = random.getstate()
    try:
        train, val = ref.coop_fewshot(train, val, shots, seed, imagenet=imagenet)
    finally:
        random.setstate(state)
    make = lambda it, y: Item(it.path, y, it.classname)  # noqa: E731
    if imagenet:
        train, test = ref.subsample_classes(train, test, subsample=subsample, make=make)
        val = test
    else:
        train, val, test = ref.subsample_classes(train, val, test, subsample=subsample, make=make)
    return list(train), list(val), list(test), ref.get_lab2cname(train)[1]


def _same(ds, want):
    train, val, test, names = want
    assert ds.train == train
    assert ds.val == val
    assert ds.test == test
    assert ds.classnames == names


def _read_split_literally(path, prefix):
    with open(path) as f:
        split = json.load(f)
    conv = lambda rows: [Item(os.path.join(prefix, p), int(y), c) for p, y, c in rows]  # noqa: E731
    return conv(split["train"]), conv(split["val"]), conv(split["test"])


@pytest.mark.parametrize("spec", SPLIT_SPECS, ids=lambda s: s.folder)
def test_split_family(tmp_path, cache_env, spec):
    root = str(tmp_path / "data")
    make_split_dataset(root, spec.folder, SIZES, seed=len(spec.folder))
    ds_dir = os.path.join(root, spec.folder)
    prefix = os.path.join(ds_dir, spec.image_dir) if spec.image_dir else ds_dir
    full = _read_split_literally(os.path.join(ds_dir, spec.split_file), prefix)
    for shots, seed, sub in [(0, 1, "all"), (16, 1, "all"), (4, 2, "base"), (2, 3, "new"), (1, 1, "all")]:
        ds = load_dataset(spec.folder, root, shots=shots, seed=seed, subsample=sub)
        _same(ds, _oracle(*full, shots, seed, sub))
    # the original class name and other spellings resolve to the same dataset
    assert load_dataset(spec.cls, root, shots=4, seed=2).train == load_dataset(spec.folder, root, 4, 2).train


def test_aircraft(tmp_path, cache_env):
    root = str(tmp_path)
    variants = make_aircraft(root, SIZES, seed=3)
    ds_dir = os.path.join(root, "fgvc_aircraft")
    lab = {v: i for i, v in enumerate(variants)}

    def read(part):
        out = []
        for line in open(os.path.join(ds_dir, f"images_variant_{part}.txt")):
            p = line.strip().split(" ")
            out.append(Item(os.path.join(ds_dir, "images", p[0] + ".jpg"), lab[" ".join(p[1:])], " ".join(p[1:])))
        return out

    full = (read("train"), read("val"), read("test"))
    for shots, seed, sub in [(0, 1, "all"), (16, 2, "base"), (8, 1, "new")]:
        _same(load_dataset("FGVCAircraft", root, shots, seed, sub), _oracle(*full, shots, seed, sub))
    assert load_dataset("fgvc_aircraft", root).classnames == variants


def _literal_imagenet(ds_dir):
    names = OrderedDict()
    for line in open(os.path.join(ds_dir, "classnames.txt")):
        p = line.strip().split(" ")
        names[p[0]] = " ".join(p[1:])
    out = []
    for split in ("train", "val"):
        d = os.path.join(ds_dir, "images", split)
        folders = sorted(f.name for f in os.scandir(d) if f.is_dir())
        items = []
        for label, folder in enumerate(folders):
            for im in [f for f in os.listdir(os.path.join(d, folder)) if not f.startswith(".")]:
                items.append(Item(os.path.join(d, folder, im), label, names[folder]))
        out.append(items)
    return out


def test_imagenet_listing_order_and_protocols(tmp_path, cache_env):
    root = str(tmp_path)
    make_imagenet(root, 9, [30, 3, 17, 16, 25, 1, 40, 8, 20], val_per_class=3, seed=1)
    ds_dir = os.path.join(root, "imagenet")
    # a hidden file is skipped, as dassl's listdir_nohidden does
    open(os.path.join(ds_dir, "images", "train", sorted(os.listdir(os.path.join(ds_dir, "images", "train")))[0],
                      ".DS_Store"), "w").close()
    train, test = _literal_imagenet(ds_dir)
    for shots, seed, sub in [(0, 1, "all"), (16, 1, "all"), (4, 3, "base"), (2, 2, "new")]:
        ds = load_dataset("imagenet", root, shots, seed, sub)
        _same(ds, _oracle(train, test, test, shots, seed, sub, imagenet=True))
        assert ds.val is ds.test


def test_listing_cache_hit_and_invalidation(tmp_path, cache_env, monkeypatch):
    from fastprompt.data import listing

    root = str(tmp_path)
    make_imagenet(root, 3, 4, seed=2)
    split = os.path.join(root, "imagenet", "images", "train")
    old = 1_000_000_000
    for d in os.listdir(split):
        os.utime(os.path.join(split, d), (old, old))
    first = load_dataset("imagenet", root).train
    calls = []
    real = os.listdir
    monkeypatch.setattr(listing.os, "listdir", lambda p: calls.append(p) or real(p))
    assert load_dataset("imagenet", root).train == first
    assert not [c for c in calls if c.startswith(split)]  # train folders came from the cache
    folder = os.path.join(split, sorted(os.listdir(split))[0])
    with open(os.path.join(folder, "extra.JPEG"), "wb") as f:
        f.write(b"x")
    again = load_dataset("imagenet", root).train
    assert len(again) == len(first) + 1 and os.path.join(folder, "extra.JPEG") in {it.path for it in again}


def test_imagenet_variants(tmp_path, cache_env):
    root = str(tmp_path)
    wnids = [f"n{i:08d}" for i in range(6)]
    make_variant(root, "imagenetv2", wnids, [str(i) for i in range(6)])
    make_variant(root, "imagenet-sketch", wnids, wnids[::-1])
    make_variant(root, "imagenet-a", wnids, [wnids[4], wnids[1], wnids[2]])
    make_variant(root, "imagenet-r", wnids, [wnids[5], wnids[0]])
    v2 = load_dataset("ImageNetV2", root)
    assert v2.classnames == [f"name of {w}" for w in wnids] and v2.train == v2.test and v2.val == []
    assert [it.label for it in v2.test] == [i for i in range(6) for _ in range(2)]
    sk = load_dataset("imagenet-sketch", root)
    assert sk.classnames == [f"name of {w}" for w in wnids]
    a = load_dataset("imagenet-adversarial", root)  # README.txt is not a class
    assert a.classnames == [f"name of {w}" for w in sorted([wnids[4], wnids[1], wnids[2]])]
    r = load_dataset("ImageNetR", root, shots=16, subsample="base")  # test-only: ignored, as the original
    assert r.classnames == [f"name of {wnids[0]}", f"name of {wnids[5]}"] and len(r.test) == 4


def _snapshot(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[p] = (st.st_mtime_ns, st.st_size)
    return out


def test_read_only_tree_is_never_written(tmp_path, cache_env):
    root = str(tmp_path / "data")
    make_split_dataset(root, "dtd", SIZES)
    make_imagenet(root, 3, 5)
    before = _snapshot(root)
    modes = []
    for dirpath, _, _ in os.walk(root):
        modes.append((dirpath, os.stat(dirpath).st_mode))
        os.chmod(dirpath, stat.S_IRUSR | stat.S_IXUSR)
    try:
        assert len(load_dataset("dtd", root, shots=4, seed=1, subsample="base").train) > 0
        assert len(load_dataset("imagenet", root, shots=2, seed=1).train) == 6
    finally:
        for dirpath, mode in reversed(modes):
            os.chmod(dirpath, mode)
    assert _snapshot(root) == before


def test_unwritable_cache_still_loads(tmp_path, monkeypatch, caplog):
    root = str(tmp_path / "data")
    make_imagenet(root, 2, 3)
    split = os.path.join(root, "imagenet", "images")
    for dirpath, _, _ in os.walk(split):
        os.utime(dirpath, (1e9, 1e9))
    (tmp_path / "not_a_dir").write_text("")  # a cache "folder" below a file cannot be created, even by root
    monkeypatch.setenv("FASTPROMPT_CACHE", str(tmp_path / "not_a_dir" / "cache"))
    from fastprompt.data import listing

    monkeypatch.setattr(listing, "_warned_unwritable", False)
    assert len(load_dataset("imagenet", root).train) == 6
    assert "cannot write the listing cache" in caplog.text


def test_cache_dir_precedence_and_corrupt_cache(tmp_path, monkeypatch):
    from fastprompt.data import cache_dir, list_dirs

    monkeypatch.delenv("FASTPROMPT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == str(tmp_path / "xdg" / "fastprompt")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == str(tmp_path / "home" / ".cache" / "fastprompt")
    monkeypatch.setenv("FASTPROMPT_CACHE", str(tmp_path / "fp"))
    assert cache_dir() == str(tmp_path / "fp")
    d = tmp_path / "dir"
    d.mkdir()
    (d / "a.jpg").write_bytes(b"")
    os.utime(d, (1e9, 1e9))
    assert list_dirs([str(d)]) == [["a.jpg"]]
    (cached,) = (tmp_path / "fp" / "listings").iterdir()
    cached.write_text("{ truncated")
    assert list_dirs([str(d)]) == [["a.jpg"]]  # an unreadable cache file is a miss, then rewritten
    assert json.loads(cached.read_text())["names"] == [["a.jpg"]]
