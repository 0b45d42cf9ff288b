"""ImageFolder and CSV/JSON lists with the same few-shot and base/new machinery."""
import json
import os
import random

import pytest

from fastprompt.data import DataError, Item, load_dataset, sample_fewshot, subsample_classes
from fastprompt.testing.fake_trees import tiny_jpeg

JPEG = tiny_jpeg()


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTPROMPT_CACHE", str(tmp_path / "cache"))


def _tree(base, sizes, names=None):
    for c, n in enumerate(sizes):
        d = os.path.join(base, (names or [f"cls_{c}" for c in range(len(sizes))])[c])
        os.makedirs(d, exist_ok=True)
        for i in range(n):
            with open(os.path.join(d, f"{i:03d}.jpg"), "wb") as f:
                f.write(JPEG)
    return base


def test_imagefolder_single_tree_split_and_fewshot(tmp_path):
    root = _tree(str(tmp_path / "tree"), [20, 7, 3, 12], ["zebra", "ant", "moth", "bee"])
    open(os.path.join(root, "ant", "notes.txt"), "w").close()  # not an image
    ds = load_dataset("imagefolder", root)
    assert ds.classnames == ["ant", "bee", "moth", "zebra"]
    assert len(ds.train) + len(ds.val) + len(ds.test) == 42
    assert [len([x for x in ds.train if x.label == c]) for c in range(4)] == [round(7 * .5), 6, round(3 * .5), 10]
    allin = load_dataset("imagefolder", root, split=None)
    assert len(allin.train) == 42 and allin.val == allin.test == []
    few = load_dataset("imagefolder", root, shots=4, seed=2, subsample="new")
    full = load_dataset("imagefolder", root)
    t, v = sample_fewshot(full.train, full.val, 4, 2)
    t, v, te = subsample_classes(t, v, full.test, subsample="new")
    assert (few.train, few.val, few.test) == (t, v, te) and few.classnames == ["moth", "zebra"]


def test_imagefolder_with_split_folders_and_classnames_txt(tmp_path):
    root = tmp_path / "tree"
    _tree(str(root / "train"), [5, 4], ["a_x", "b_y"])
    _tree(str(root / "test"), [2], ["b_y"])
    (root / "classnames.txt").write_text("a_x apple tree\nb_y bumble bee\n")
    ds = load_dataset("ImageFolder", str(root))
    assert ds.classnames == ["apple tree", "bumble bee"]
    assert len(ds.train) == 9 and ds.val == [] and [it.label for it in ds.test] == [1, 1]
    _tree(str(root / "val"), [1], ["c_z"])
    with pytest.raises(DataError, match="class folder.* not in .*train: c_z"):
        load_dataset("imagefolder", str(root))


def test_imagefolder_empty_class(tmp_path):
    root = _tree(str(tmp_path / "tree"), [3, 0, 2])
    with pytest.raises(DataError, match=r"empty class: .*cls_1 holds no image"):
        load_dataset("imagefolder", root)


def test_csv_with_split_column_and_classnames(tmp_path):
    _tree(str(tmp_path / "img"), [6, 6, 6], ["cat", "dog", "eel"])
    lines = ["path,classname,split"]
    for c in ("eel", "cat", "dog"):
        for i in range(6):
            lines.append(f"img/{c}/{i:03d}.jpg,{c},{'train' if i < 4 else 'test'}")
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    ds = load_dataset("csv", str(tmp_path / "list.csv"), shots=2, seed=1)
    assert ds.classnames == ["cat", "dog", "eel"]
    assert len(ds.train) == 6 and len(ds.test) == 6 and ds.val == []
    assert all(os.path.isabs(it.path) and os.path.isfile(it.path) for it in ds.train)


def test_csv_folder_with_labels(tmp_path):
    _tree(str(tmp_path / "img"), [3, 3])
    (tmp_path / "train.csv").write_text("path,label\n" + "".join(f"img/cls_{c}/{i:03d}.jpg,{c}\n"
                                                               for c in range(2) for i in range(2)))
    (tmp_path / "test.csv").write_text("path,label\nimg/cls_1/002.jpg,1\n")
    ds = load_dataset("csv", str(tmp_path))
    assert ds.classnames == ["0", "1"] and len(ds.train) == 4 and ds.test[0].label == 1


@pytest.mark.parametrize("content, pattern", [
    ("file,label\na.jpg,0\n", "header must name 'path'"),
    ("path,label\nimg/cls_0/000.jpg,x\n", r"list.csv:2: label must be an integer, got 'x'"),
    ("path,label\nimg/cls_0/000.jpg,-1\n", "label must be >= 0"),
    ("path,label,split\nimg/cls_0/000.jpg,0,dev\n", "split must be train, val or test, got 'dev'"),
    ("path,label\nimg/cls_0/000.jpg,0\nimg/cls_0/missing.jpg,0\n", "names 1 image.*missing.jpg"),
    ("path,label\nimg/cls_0/000.jpg,0\nimg/cls_0/001.jpg,2\n", r"empty class label\(s\): 1"),
    ("path,label,classname\nimg/cls_0/000.jpg,0,a\nimg/cls_0/001.jpg,0,b\n", "label 0 is named both 'a' and 'b'"),
])
def test_csv_errors(tmp_path, content, pattern):
    _tree(str(tmp_path / "img"), [3])
    (tmp_path / "list.csv").write_text(content)
    with pytest.raises(DataError, match=pattern):
        load_dataset("csv", str(tmp_path / "list.csv"))


def test_json_forms(tmp_path):
    _tree(str(tmp_path / "img"), [4, 4, 4, 4])
    rows = [[f"img/cls_{c}/{i:03d}.jpg", c, f"thing {c}"] for c in range(4) for i in range(4)]
    held_out = [rows[c * 4 + 3] for c in range(4)]
    (tmp_path / "split.json").write_text(json.dumps({"train": [r for r in rows if r not in held_out],
                                                     "val": held_out[0::2], "test": held_out[1::2]}))
    ds = load_dataset("json", str(tmp_path / "split.json"), subsample="base")
    assert ds.classnames == ["thing 0", "thing 1"] and len(ds.train) == 6 and len(ds.val) == 1 and len(ds.test) == 1
    objs = [{"path": p, "classname": n} for p, _, n in rows]
    (tmp_path / "objs.json").write_text(json.dumps(objs))
    ds = load_dataset("json", str(tmp_path / "objs.json"), split=None)
    assert len(ds.train) == 16 and ds.classnames == ["thing 0", "thing 1", "thing 2", "thing 3"]
    (tmp_path / "bad.json").write_text(json.dumps([{"path": "img/cls_0/000.jpg"}]))
    with pytest.raises(DataError, match=r"bad.json\[0\]: a row needs a label or a classname"):
        load_dataset("json", str(tmp_path / "bad.json"))
