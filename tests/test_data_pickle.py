"""CoOp's split_fewshot/*.pkl (pickled Dassl Datum lists) load without dassl and without
executing anything."""
import os
import pickle
import sys
import types

import pytest

from fastprompt.data import DataError, Item, load_dataset, load_datum_pickle
from fastprompt.testing.fake_trees import make_imagenet, make_split_dataset

SIZES = [(20, 5, 7), (3, 2, 4), (17, 1, 2), (9, 4, 3)]


@pytest.fixture
def fake_dassl(monkeypatch):
    """A stand-in ``dassl.data.datasets.base_dataset.Datum`` shaped like Dassl's own class."""
    mod = types.ModuleType("dassl.data.datasets.base_dataset")

    class Datum:
        def __init__(self, impath="", label=0, domain=0, classname=""):
            self._impath, self._label, self._domain, self._classname = impath, label, domain, classname

    Datum.__module__, Datum.__qualname__ = mod.__name__, "Datum"
    mod.Datum = Datum
    for name in ("dassl", "dassl.data", "dassl.data.datasets"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    return Datum


def _dump(obj, path, protocol):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


@pytest.mark.parametrize("protocol", [0, 1, 2, 4, pickle.HIGHEST_PROTOCOL])
def test_round_trip_without_dassl(tmp_path, fake_dassl, monkeypatch, protocol):
    items = [fake_dassl(f"/d/img{i}.jpg", i % 3, 0, f"class {i % 3}") for i in range(7)]
    path = str(tmp_path / "shot_2-seed_1.pkl")
    _dump({"train": items, "val": items[:2]}, path, protocol)
    for name in ("dassl", "dassl.data", "dassl.data.datasets", "dassl.data.datasets.base_dataset"):
        monkeypatch.delitem(sys.modules, name)
    got = load_datum_pickle(path, required=("train", "val"))
    assert got["train"] == [Item(f"/d/img{i}.jpg", i % 3, f"class {i % 3}") for i in range(7)]
    assert got["val"] == got["train"][:2]


def test_load_dataset_reads_the_original_pkl_and_rebases_moved_paths(tmp_path, fake_dassl, monkeypatch):
    monkeypatch.setenv("FASTPROMPT_CACHE", str(tmp_path / "cache"))
    root = str(tmp_path / "data")
    make_split_dataset(root, "dtd", SIZES)
    full = load_dataset("dtd", root)
    # a subset no seed would draw: the last 2 train and last item of val per class, recorded at an old root
    old = "/mnt/old/datasets/dtd/images/"
    pick = lambda xs, k: [it for c in range(4) for it in [x for x in xs if x.label == c][-k:]]  # noqa: E731
    train, val = pick(full.train, 2), pick(full.val, 1)
    rel = lambda it: it.path.split("/dtd/images/")[1]  # noqa: E731
    to_datum = lambda it: fake_dassl(old + rel(it), it.label, 0, it.classname)  # noqa: E731
    pkl = os.path.join(root, "dtd", "split_fewshot", "shot_2-seed_1.pkl")
    _dump({"train": [to_datum(x) for x in train], "val": [to_datum(x) for x in val]}, pkl, pickle.HIGHEST_PROTOCOL)
    ds = load_dataset("DescribableTextures", root, shots=2, seed=1)
    assert ds.fewshot_source == pkl
    assert ds.train == train and ds.val == val
    assert load_dataset("dtd", root, shots=2, seed=2).fewshot_source == "sampled"
    assert load_dataset("dtd", root, shots=2, seed=1, original_caches=False).fewshot_source == "sampled"
    base = load_dataset("dtd", root, shots=2, seed=1, subsample="base")
    assert {it.label for it in base.train} == {0, 1} and len(base.train) == 4


def test_pkl_naming_missing_images_is_an_error(tmp_path, fake_dassl, monkeypatch):
    monkeypatch.setenv("FASTPROMPT_CACHE", str(tmp_path / "cache"))
    root = str(tmp_path / "data")
    make_split_dataset(root, "eurosat", SIZES)
    pkl = os.path.join(root, "eurosat", "split_fewshot", "shot_1-seed_3.pkl")
    _dump({"train": [fake_dassl("/elsewhere/nothing.jpg", 0, 0, "x")], "val": []}, pkl, 4)
    with pytest.raises(DataError, match="shot_1-seed_3.pkl names 1 image"):
        load_dataset("eurosat", root, shots=1, seed=3)


def test_imagenet_preprocessed_pkl(tmp_path, fake_dassl, monkeypatch):
    monkeypatch.setenv("FASTPROMPT_CACHE", str(tmp_path / "cache"))
    root = str(tmp_path)
    make_imagenet(root, 3, 4)
    listed = load_dataset("imagenet", root)
    reordered = listed.train[::-1]
    d = lambda it: fake_dassl(it.path, it.label, 0, it.classname)  # noqa: E731
    _dump({"train": [d(x) for x in reordered], "test": [d(x) for x in listed.test]},
          os.path.join(root, "imagenet", "preprocessed.pkl"), 4)
    ds = load_dataset("imagenet", root)
    assert ds.train == reordered and ds.test == listed.test
    assert load_dataset("imagenet", root, original_caches=False).train == listed.train


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("1+1",))


def test_malicious_pickles_are_refused(tmp_path, fake_dassl):
    target = tmp_path / "pwned"
    cases = {
        "system": {"train": [_Evil(str(target))]},
        "eval": {"train": [_EvalEvil()]},
        "nested": {"train": [fake_dassl("/a.jpg", 0, 0, "a")], "val": [_Evil(str(target))]},
    }
    for name, obj in cases.items():
        path = str(tmp_path / f"{name}.pkl")
        _dump(obj, path, pickle.HIGHEST_PROTOCOL)
        with pytest.raises(DataError, match="refused global") as info:
            load_datum_pickle(path)
        assert path in str(info.value)
    assert not target.exists()


def test_bad_datum_contents_and_shapes(tmp_path, fake_dassl):
    bad_label = str(tmp_path / "bad_label.pkl")
    _dump({"train": [fake_dassl("/a.jpg", [1], 0, "a")]}, bad_label, 4)
    with pytest.raises(DataError, match="bad_label.pkl"):
        load_datum_pickle(bad_label)
    not_dict = str(tmp_path / "list.pkl")
    _dump([1, 2], not_dict, 4)
    with pytest.raises(DataError, match="expected a dict"):
        load_datum_pickle(not_dict)
    no_val = str(tmp_path / "noval.pkl")
    _dump({"train": []}, no_val, 4)
    with pytest.raises(DataError, match="no 'val' list"):
        load_datum_pickle(no_val, required=("train", "val"))
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"\x80\x05not a pickle")
    with pytest.raises(DataError, match="garbage.pkl is not a pickle"):
        load_datum_pickle(str(garbage))


def _valid_subset(root, fake_dassl):
    """A few-shot pickle of ``dtd`` (2 train, 1 val per class) as the original writes it, and its records."""
    full = load_dataset("dtd", root)
    pick = lambda xs, k: [it for c in range(4) for it in [x for x in xs if x.label == c][:k]]  # noqa: E731
    train, val = ([fake_dassl(it.path, it.label, 0, it.classname) for it in pick(split, k)]
                  for split, k in ((full.train, 2), (full.val, 1)))
    return os.path.join(root, "dtd", "split_fewshot", "shot_2-seed_1.pkl"), train, val


@pytest.mark.parametrize("spoil, message", [
    (lambda train, val, D: val.__setitem__(0, D(val[0]._impath, 99, 0, val[0]._classname)),
     r"val\[0\] .* has label 99, but the dataset has 4 classes"),
    (lambda train, val, D: train.__setitem__(0, D(train[0]._impath, 1, 0, train[0]._classname)),
     r"train\[0\] .* names its class 'class 0' under label 1, which the dataset's split calls 'class 1'"),
    (lambda train, val, D: train.__setitem__(0, D("/etc/passwd", 0, 0, "class 0")),
     r"train\[0\] \(/etc/passwd\) is not inside the dataset folder"),
    (lambda train, val, D: train.__setitem__(0, D(train[0]._impath.replace("/images/", "/images/../../../"), 0, 0,
                                                  "class 0")),
     r"is not inside the dataset folder"),
    (lambda train, val, D: [train.pop() for _ in range(2)],
     r"train subset covers 3 of the 4 classes \(none of 'class 3'\)"),
])
def test_a_pickled_subset_is_checked_against_its_dataset(tmp_path, fake_dassl, monkeypatch, spoil, message):
    """The unpickler admitted only Datum records, but their contents were trusted."""
    monkeypatch.setenv("FASTPROMPT_CACHE", str(tmp_path / "cache"))
    root = str(tmp_path / "data")
    make_split_dataset(root, "dtd", SIZES)
    pkl, train, val = _valid_subset(root, fake_dassl)
    _dump({"train": train, "val": val}, pkl, pickle.HIGHEST_PROTOCOL)
    assert load_dataset("dtd", root, shots=2, seed=1).fewshot_source == pkl  # the valid pickle loads
    spoil(train, val, fake_dassl)
    for d in train + val:  # a path that climbs out of the dataset reaches a real file, as /etc/passwd is one
        if not os.path.exists(d._impath):
            os.makedirs(os.path.dirname(os.path.realpath(d._impath)), exist_ok=True)
            open(os.path.realpath(d._impath), "wb").close()
    _dump({"train": train, "val": val}, pkl, pickle.HIGHEST_PROTOCOL)
    with pytest.raises(DataError, match=message):
        load_dataset("dtd", root, shots=2, seed=1)


def test_a_pickled_subset_in_an_images_folder_linked_to_other_storage_loads(tmp_path, fake_dassl, monkeypatch):
    """Inside the dataset folder means inside as written (``..`` resolved), not after following
    links: datasets often link their images folder to other storage."""
    monkeypatch.setenv("FASTPROMPT_CACHE", str(tmp_path / "cache"))
    root = str(tmp_path / "data")
    make_split_dataset(root, "dtd", SIZES)
    images = os.path.join(root, "dtd", "images")
    os.rename(images, str(tmp_path / "storage"))
    os.symlink(str(tmp_path / "storage"), images)
    pkl, train, val = _valid_subset(root, fake_dassl)
    _dump({"train": train, "val": val}, pkl, pickle.HIGHEST_PROTOCOL)
    assert load_dataset("dtd", root, shots=2, seed=1).fewshot_source == pkl
