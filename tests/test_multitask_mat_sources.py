"""SoftCPT's StanfordCars and OxfordFlowers sources read the download's MATLAB files on the first
run (situation 2: no ``split_dk`` file): the split fastprompt draws must be the one the
original's code draws, literally restated in ``multitask_trees``, and a tree or an environment
it cannot read must be named in one line."""
import json
import os
import sys

import pytest

pytest.importorskip("scipy")  # the test extra installs it: the original reads these files with scipy.io

from fastprompt.cli import main  # noqa: E402
from fastprompt.data import DataError, load_dataset, sample_fewshot  # noqa: E402
from fastprompt.data.softcpt.sources import SOURCES  # noqa: E402
from fastprompt.data.softcpt.split import read_source_split  # noqa: E402

import multitask_trees as T  # noqa: E402

SIZES = [(5, 3, 2), (3, 2, 2), (4, 1, 3)]
# 1-based ids in download order: class 3 appears first (the tracker keeps first appearance, the
# class list is sorted), 4, 5 and 7 images give every 50/20/30 share an image
FLOWER_LABELS = [3, 1, 3, 2, 1, 3, 2, 2, 3, 1, 3, 2, 3, 1, 2, 3]
FLOWER_NAMES = {1: "pink primrose", 2: "hard-leaved pocket orchid", 3: "canterbury bells"}
CAR_TRAIN = [2, 1, 2, 3, 1, 2, 3, 1, 3, 2, 3, 2, 3, 3]  # 3, 5 and 6 train+val images: each has a val image
CAR_TEST = [1, 3, 2, 1]
CAR_NAMES = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi TTS Coupe 2012", "BMW M3 Coupe 2012"]
MAT_SOURCES = {"OxfordFlowers": (5, T.original_flowers_read), "StanfordCars": (7, T.original_cars_read)}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTPROMPT_CACHE", str(tmp_path / "cache"))


def _mat_tree(tmp_path, coop=True):
    """General-10's CoOp trees (``coop``) plus the raw files and task files of the two .mat sources."""
    root = str(tmp_path / "data")
    if coop:
        T.coop_general10(root, SIZES)
    T.make_flowers_mat(root, FLOWER_LABELS, FLOWER_NAMES)
    T.make_cars_mat(root, CAR_TRAIN, CAR_TEST, CAR_NAMES)
    for cls in MAT_SOURCES:
        T.task_files(root, cls)
    return root


def _no_scipy(monkeypatch):
    """As if scipy were not installed: ``import scipy`` fails and ``find_spec`` finds nothing."""
    for name in [m for m in sys.modules if m == "scipy" or m.startswith("scipy.")] + ["scipy", "scipy.io"]:
        monkeypatch.setitem(sys.modules, name, None)


def _triples(items):
    return [(it.path, [it.label], [0]) for it in items]


def test_general10_draws_the_mat_sources_as_the_original_first_run(tmp_path):
    root = _mat_tree(tmp_path)
    before = T.tree_files(root)
    ds = load_dataset("general10", root, shots=2, seed=1)
    assert T.tree_files(root) == before  # the draw is kept in fastprompt's cache, not in the tree
    assert ds.situation == "split_zhou+aircraft+generated"  # split sources in task order, first appearance
    for cls, (t, original) in MAT_SOURCES.items():
        info = ds.tasks[t]
        assert info.source == cls
        assert (info.split_source, info.names_source, info.name) == ("generated", "task files", f"{cls} task")
        assert info.split_path.startswith(str(tmp_path / "cache")) and os.path.isfile(info.split_path)
        dataset_dir = os.path.join(root, SOURCES[cls].folder)
        train, val, test, classnames = original(dataset_dir, 1)
        assert info.classnames == classnames[0]
        whole = load_dataset("general10", root, subsample_tasks=f"task{t}").task_dataset(0)
        assert (_triples(whole.train), _triples(whole.val), _triples(whole.test)) == (train, val, test), cls
        # the file the original's save_split would write into the tree, item for item
        meta = {"taskid2cname": classnames, "taskid2desc": [f"classify {cls} images"], "taskid2type": ["sl"],
                "taskid2tname": [f"{cls} task"], "taskid2metric": [SOURCES[cls].metric]}
        with open(info.split_path) as f:
            written = json.load(f)
        written.pop("fastprompt")
        assert written == T.original_save_split(train, val, test, meta, info.image_dir)
        # the task's subset: the single-dataset draw on that split
        tr, va = sample_fewshot(whole.train, whole.val, 2, 1)
        assert ds.task_dataset(t).train == tr and ds.task_dataset(t).val == va
    assert ds.tasks[5].classnames == ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"]
    assert ds.tasks[7].classnames == ["2000 AM General Hummer SUV", "2012 Acura RL Sedan", "2012 Audi TTS Coupe"]
    assert ds.tasks[7].image_dir == os.path.join(root, "stanford_cars")  # its split paths' base (save_split)


def test_plant6_imports_oxford_flowers_but_does_not_read_it(tmp_path, monkeypatch):
    """``datasets/plant6.py`` imports OxfordFlowers without listing it in ``data_sources``: six
    tasks, none reads a .mat file, so Plant-6 needs no scipy (the original's import does)."""
    root = str(tmp_path / "data")
    T.make_plant6(root)
    T.make_flowers_mat(root, FLOWER_LABELS, FLOWER_NAMES)
    T.task_files(root, "OxfordFlowers")
    _no_scipy(monkeypatch)
    ds = load_dataset("plant6", root, shots=2, seed=1)
    assert ds.num_tasks == 6 and "OxfordFlowers" not in [t.source for t in ds.tasks]
    assert ds.situation == "generated" and all(t.split_source == "generated" for t in ds.tasks)
    assert not any("oxford_flowers" in it.path for part in (ds.train, ds.val, ds.test) for it in part)


def test_without_scipy_the_mat_sources_say_so(tmp_path, monkeypatch, capsys):
    root = _mat_tree(tmp_path)
    _no_scipy(monkeypatch)
    # CoOp's split is there: used, and the note says why the first run's draw was not
    ds = load_dataset("general10", root)
    assert [ds.tasks[t].split_source for t, _ in MAT_SOURCES.values()] == ["split_zhou"] * 2
    assert all(any(cls in n and "scipy" in n for n in ds.notes) for cls in MAT_SOURCES)
    # nothing else to read: one line naming scipy, exit 2
    os.remove(os.path.join(root, "oxford_flowers", "split_zhou_OxfordFlowers.json"))
    with pytest.raises(DataError, match=r"OxfordFlowers .*scipy \(pip install scipy\)"):
        load_dataset("general10", root)
    assert main(["data", "fewshot", "general10", root, "--shots", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "scipy" in err and "OxfordFlowers" in err


def _flowers(tmp_path, labels=FLOWER_LABELS, names=FLOWER_NAMES):
    root = str(tmp_path / "data")
    T.make_flowers_mat(root, labels, names)
    T.task_files(root, "OxfordFlowers")
    return root, os.path.join(root, "oxford_flowers")


def _cars(tmp_path, train=CAR_TRAIN, names=CAR_NAMES):
    root = str(tmp_path / "data")
    T.make_cars_mat(root, train, CAR_TEST, names)
    T.task_files(root, "StanfordCars")
    return root, os.path.join(root, "stanford_cars")


def _refused(root, cls, match):
    with pytest.raises(DataError, match=match):
        read_source_split(SOURCES[cls], root)


def test_unreadable_flowers_files_are_named(tmp_path):
    from scipy.io import savemat

    root, d = _flowers(tmp_path)
    open(os.path.join(d, "imagelabels.mat"), "wb").close()
    _refused(root, "OxfordFlowers", r"cannot read .*imagelabels.mat as a MATLAB file")
    savemat(os.path.join(d, "imagelabels.mat"), {"lbls": [[1, 2]]})
    _refused(root, "OxfordFlowers", r"imagelabels.mat holds no variable 'labels' \(found \['lbls'\]\)")
    root, d = _flowers(tmp_path, names={1: "a", 2: "b"})
    _refused(root, "OxfordFlowers", r"image 1 has class id 3, which .*cat_to_name.json does not name")
    # no image of class 2: the original's list [names of 1, 3] would call class 3 by class 2's place
    root, d = _flowers(tmp_path, labels=[lab for lab in FLOWER_LABELS if lab != 2])
    _refused(root, "OxfordFlowers", r"no image has class id\(s\) \[2\]")


def test_unreadable_cars_files_are_named(tmp_path):
    import numpy as np
    from scipy.io import savemat

    root, d = _cars(tmp_path)
    anno = os.path.join(d, "cars_test_annos_withlabels.mat")
    no_class = np.zeros((1, 1), dtype=[("fname", "O")])
    no_class[0, 0] = ("00001.jpg",)
    savemat(anno, {"annotations": no_class})  # the devkit's cars_test_annos.mat: no labels
    _refused(root, "StanfordCars", r"fields \['fname'\], without 'fname' and 'class'.*cars_test_annos_withlabels")
    root, d = _cars(tmp_path, train=CAR_TRAIN + [9])
    _refused(root, "StanfordCars", r"annotation 15 \(00015.jpg\) has class 9, but .*cars_meta.mat names classes 1..4")
    root, d = _cars(tmp_path, train=CAR_TRAIN + [0])  # 0 - 1 = -1: the original would name it the last class
    _refused(root, "StanfordCars", r"annotation 15 \(00015.jpg\) has class 0")
    root, d = _cars(tmp_path, train=[lab for lab in CAR_TRAIN if lab != 1])  # the listing readers: same rule
    _refused(root, "StanfordCars", r"cars_train_annos.mat: no image has class id\(s\) \[1\]")
