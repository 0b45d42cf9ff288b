"""The original's ``split_fewshot_mt/shot_K-seed_S.pkl`` (pickled ``DatumMT`` of SoftCPT's
bundled Dassl): read item for item through the restricted unpickler, every record checked."""
import os
import pickle

import pytest

from fastprompt.data import DataError, load_dataset, load_datum_pickle
from fastprompt.data.dassl_pickle import MTRecord, load_datum_mt_pickle

import multitask_trees as T

SIZES = [(5, 3, 2), (3, 2, 2), (4, 1, 3)]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTPROMPT_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def dassl(monkeypatch):
    return T.install_fake_dassl(monkeypatch)


def _set_pickle(root, dassl, shots=2, seed=1, spoil=None, old_root=None):
    """A general10 pickle of a subset no seed draws (each task's last ``shots`` train images per
    class, last val image per class, the whole test split), as General10 writes it."""
    DatumMT = dassl[0]
    full = load_dataset("general10", root)
    pick = lambda xs, k: [it for t in range(full.num_tasks) for c in range(len(full.tasks[t].classnames))  # noqa: E731
                          for it in [x for x in xs if (x.task, x.label) == (t, c)][-k:]]
    parts = {"train": pick(full.train, shots), "val": pick(full.val, 1), "test": list(full.test)}

    def datum(it):
        path = it.path if old_root is None else it.path.replace(root, old_root)
        return DatumMT(impath=path, label=[it.label], task=[it.task])
    data = {k: [datum(it) for it in v] for k, v in parts.items()}
    data.update(taskid2cname=full.task_classnames, taskid2tname=full.task_names,
                taskid2desc=[t.description for t in full.tasks], taskid2type=["sl"] * 10, taskid2metric=full.metrics)
    if spoil:
        spoil(data, dassl)
    pkl = os.path.join(root, "general10", "split_fewshot_mt", f"shot_{shots}-seed_{seed}.pkl")
    T.dump(data, pkl)
    return pkl, parts


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_the_set_pickle_is_read_item_for_item(tmp_path, dassl, protocol):
    root = str(tmp_path / "data")
    T.coop_general10(root, SIZES)
    pkl, parts = _set_pickle(root, dassl, old_root="/mnt/old/datasets")  # a tree that has moved since
    with open(pkl, "rb") as f:
        data = pickle.load(f)
    T.dump(data, pkl, protocol)
    ds = load_dataset("general10", root, shots=2, seed=1)
    assert ds.fewshot_source == pkl and all(t.fewshot_source == pkl for t in ds.tasks)
    assert (ds.train, ds.val, ds.test) == (parts["train"], parts["val"], parts["test"])
    assert ds.train != load_dataset("general10", root, shots=2, seed=1, original_caches=False).train
    assert [t.names_source for t in ds.tasks] == ["fewshot pickle"] * 10
    assert ds.metrics[:2] == ["mean_acc", "overall_acc"]  # from the source classes, as the original takes them


def _label(data, _):
    data["val"][3]._label = [99]


def _task(data, _):
    data["train"][0]._task = [10]


def _outside(data, _):
    data["test"][1]._impath = "/etc/passwd"


def _two_labels(data, _):
    data["train"][2]._label = [0, 1]


def _names(data, _):
    data["taskid2cname"][4] = list(reversed(data["taskid2cname"][4]))


def _class_gone(data, _):
    data["train"] = [d for d in data["train"] if (d._task, d._label) != ([6], [1])]


def _datum(data, dassl):
    data["train"][0] = dassl[1](data["train"][0]._impath, 0, 0, "class 0")  # CoOp's Datum, not a DatumMT


def _tables(data, _):
    data["taskid2tname"] = data["taskid2tname"][:9]


@pytest.mark.parametrize("spoil, message", [
    (_label, r"val\[3\] .* has label 99, but task 1 has 3 classes"),
    (_task, r"train\[0\] .* has task 10, but the dataset has 10 tasks"),
    (_outside, r"test\[1\] \(/etc/passwd\) is not inside its task's dataset folder"),
    (_two_labels, r"train\[2\] .* has labels \[0, 1\] and tasks \[0\]"),
    (_names, r"task 4 lists 3 classes, its split .* first difference at label 0"),
    (_class_gone, r"its train subset lacks 1 class\(es\) \(task 6 "),
    (_datum, r"is not a pickle of SoftCPT DatumMT lists \(refused global dassl.data.datasets.base_dataset.Datum\)"),
    (_tables, r"must list the 10 tasks of General10"),
])
def test_bad_records_are_refused_naming_the_file(tmp_path, dassl, spoil, message):
    root = str(tmp_path / "data")
    T.coop_general10(root, SIZES)
    pkl, _ = _set_pickle(root, dassl, spoil=spoil)
    with pytest.raises(DataError, match=message) as info:
        load_dataset("general10", root, shots=2, seed=1)
    assert str(info.value).startswith(pkl)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_foreign_globals_and_the_other_datum_are_refused(tmp_path, dassl):
    DatumMT, Datum = dassl
    path = str(tmp_path / "x.pkl")
    T.dump({"train": [_Evil()], "val": []}, path)
    with pytest.raises(DataError, match="refused global posix.system|refused global os.system"):
        load_datum_mt_pickle(path)
    # each loader admits its own class only: nothing new reaches load_datum_pickle
    T.dump({"train": [DatumMT("/d/a.jpg", [0], 0, [0])], "val": []}, path)
    with pytest.raises(DataError, match="refused global dassl.data.datasets.base_dataset.DatumMT"):
        load_datum_pickle(path, required=("train", "val"))
    assert load_datum_mt_pickle(path) == {"train": [MTRecord("/d/a.jpg", (0,), (0,))], "val": []}
    T.dump({"train": [DatumMT("/d/a.jpg", [0], 0, [0], box=(1, 2))], "val": []}, path)
    with pytest.raises(DataError, match="DatumMT field _box"):
        load_datum_mt_pickle(path)


def test_a_source_pickle_is_read_for_its_task_and_the_others_drawn(tmp_path, dassl):
    root = str(tmp_path / "data")
    T.coop_general10(root, SIZES)
    DatumMT = dassl[0]
    dtd = load_dataset("general10", root, subsample_tasks="task1").task_dataset(0)
    train = [it for c in range(3) for it in [x for x in dtd.train if x.label == c][:1]]
    val = [it for c in range(3) for it in [x for x in dtd.val if x.label == c][:1]]
    pkl = os.path.join(root, "dtd", "split_fewshot_mt", "shot_1-seed_7.pkl")
    T.dump({"train": [DatumMT(it.path, [it.label], 0, [0]) for it in train],
            "val": [DatumMT(it.path, [it.label], 0, [0]) for it in val]}, pkl)
    ds = load_dataset("general10", root, shots=1, seed=7)
    assert ds.fewshot_source == "source pickles+sampled" and ds.tasks[1].fewshot_source == pkl
    assert ds.task_dataset(1).train == train and ds.task_dataset(1).val == val
    assert ds.task_dataset(2).train == load_dataset("eurosat", root, shots=1, seed=7).train
    T.dump({"train": [DatumMT(train[0].path, [5], 0, [0])], "val": []}, pkl)
    with pytest.raises(DataError, match=r"shot_1-seed_7.pkl: train\[0\] .* has label 5, but task 0 has 3 classes"):
        load_dataset("general10", root, shots=1, seed=7)


def test_fashion20_pickle_is_read_for_its_twenty_tasks(tmp_path, dassl):
    root = str(tmp_path / "data")
    T.make_fashion20(root)
    DatumMT = dassl[0]
    full = load_dataset("fashion20", root)
    first = {}
    for it in reversed(full.train):
        first[(it.task, it.label)] = it
    train = sorted(first.values(), key=lambda it: (it.task, it.label))  # one image per (task, class)
    val = full.val[:3]
    pkl = os.path.join(root, "fashion20", "split_fewshot_mt", "shot_1-seed_1.pkl")
    T.dump({"train": [DatumMT(it.path, [it.label], 0, [it.task]) for it in train],
            "val": [DatumMT(it.path, [it.label], 0, [it.task]) for it in val]}, pkl)
    ds = load_dataset("fashion20", root, shots=1, seed=1)
    assert (ds.train, ds.val, ds.test) == (train, val, full.test) and ds.fewshot_source == "source pickles"
    T.dump({"train": [DatumMT(train[0].path, [0], 0, [20])], "val": []}, pkl)
    with pytest.raises(DataError, match=r"train\[0\] .* has task 20, but the dataset has 20 tasks"):
        load_dataset("fashion20", root, shots=1, seed=1)

