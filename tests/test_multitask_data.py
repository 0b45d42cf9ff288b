"""SoftCPT's multi-task datasets (General-10, Plant-6, Fashion-20) on generated trees: the three
split situations, the per-task draw, task/class subsamples, and what ``fastprompt data`` says."""
import json
import os
import random
import shutil
from collections import OrderedDict

import pytest

from fastprompt.cli import main
from fastprompt.data import DataError, load_dataset, sample_fewshot
from fastprompt.data.softcpt.sources import SOURCES
from fastprompt.data.softcpt.tasks import TASK_TABLE
from fastprompt.testing.fake_trees import make_split_dataset

import multitask_trees as T

SIZES = [(5, 3, 2), (3, 2, 2), (4, 1, 3)]
METRICS = ["mean_acc", "overall_acc", "overall_acc", "mean_acc", "overall_acc", "mean_acc", "mean_acc",
           "overall_acc", "overall_acc", "overall_acc"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTPROMPT_CACHE", str(tmp_path / "cache"))


def _root(tmp_path):
    root = str(tmp_path / "data")
    T.coop_general10(root, SIZES)
    return root


def _rel(items, base):
    return [(os.path.relpath(it.path, base), it.label) for it in items]


# ------------------------------------------------------------------ situation 3: CoOp's tree alone

def test_general10_on_coop_trees_equals_each_single_dataset(tmp_path):
    root = _root(tmp_path)
    before = T.tree_files(root)
    ds = load_dataset("general10", root, shots=2, seed=3)
    assert T.tree_files(root) == before  # nothing written into the dataset tree
    assert ds.num_tasks == 10 and ds.metrics == METRICS and ds.situation == "split_zhou+aircraft"
    assert ds.task_names == [TASK_TABLE[s][0] for s in ("Caltech101", "DescribableTextures", "EuroSAT",
                                                        "FGVCAircraft", "Food101", "OxfordFlowers", "OxfordPets",
                                                        "StanfordCars", "SUN397", "UCF101")]
    assert all(t.names_source == "fastprompt table" for t in ds.tasks) and len(ds.notes) == 10
    offset = 0
    for t, name in enumerate(T.GENERAL10_COOP):
        single = load_dataset(name, root, shots=2, seed=3)
        part = ds.task_dataset(t)
        assert (part.train, part.val, part.test, part.classnames) == \
            (single.train, single.val, single.test, single.classnames), name
        assert ds.class_ranges[t] == (offset, offset + len(single.classnames))
        offset += len(single.classnames)
    # merged order: task by task; global labels in task order, then class order
    assert [it.task for it in ds.train] == sorted(it.task for it in ds.train)
    assert [ds.classnames[ds.global_label(it)] for it in ds.test] == [it.classname for it in ds.test]
    assert ds.task_pairs()[1] == (ds.task_names[1], ds.tasks[1].classnames)


def test_the_draw_is_recorded_outside_the_tree_and_read_back(tmp_path):
    root = _root(tmp_path)
    first = load_dataset("general10", root, shots=2, seed=1)
    assert first.fewshot_source == "sampled" and all(t.fewshot_source == "sampled" for t in first.tasks)
    again = load_dataset("general10", root, shots=2, seed=1)
    assert all(t.fewshot_source.startswith("cache " + str(tmp_path / "cache")) for t in again.tasks)
    assert (again.train, again.val, again.test) == (first.train, first.val, first.test)
    other = load_dataset("general10", root, shots=2, seed=2)
    assert other.train != first.train


def test_task_and_class_subsamples_follow_general10(tmp_path):
    root = _root(tmp_path)
    full = load_dataset("general10", root, shots=0)
    base = load_dataset("general10", root, subsample_tasks="base")
    new = load_dataset("general10", root, subsample_tasks="new")
    assert base.task_names == full.task_names[:5] and new.task_names == full.task_names[5:]
    assert {it.task for it in new.test} == set(range(5))
    one = load_dataset("general10", root, subsample_tasks="task7")
    assert one.task_names == [full.task_names[7]] and one.metrics == [METRICS[7]]
    assert [it.path for it in one.test] == [it.path for it in full.test if it.task == 7]
    newc = load_dataset("general10", root, subsample="new")
    assert newc.task_classnames == [c[2:] for c in full.task_classnames]  # ceil(3 / 2) = 2 base classes
    assert all(it.label == 0 for it in newc.train)
    with pytest.raises(DataError, match="task0..task9"):
        load_dataset("general10", root, subsample_tasks="task10")
    with pytest.raises(DataError, match="subsample_tasks for general10 must be one of"):
        load_dataset("general10", root, subsample_tasks="half")


# ------------------------------------------------------------------ situation 1: the original's split_dk files

def test_split_dk_files_are_read_item_for_item(tmp_path):
    root = str(tmp_path / "data")
    T.coop_general10(root, SIZES)
    caltech_names = ["airplanes", "Faces", "c2"]  # update_cnames renames the first two on every read
    make_split_dataset(root, "caltech-101", SIZES, classnames=caltech_names)
    splits = {}
    for cls in SOURCES:
        if SOURCES[cls].coop and cls != "FGVCAircraft":
            splits[cls] = T.split_dk_from_coop(root, cls, f"{cls} name", f"{cls} description")
    T.task_files(root, "FGVCAircraft", "aircraft name", "aircraft description")
    ds = load_dataset("general10", root)
    assert ds.situation == "split_dk+aircraft"
    assert ds.tasks[0].classnames == ["airplane", "face", "c2"]
    for t, info in enumerate(ds.tasks):
        if info.source == "FGVCAircraft":
            assert (info.name, info.names_source) == ("aircraft name", "task files")
            continue
        split = splits[info.source]
        assert (info.name, info.description, info.names_source) == (f"{info.source} name",
                                                                    f"{info.source} description", "split_dk meta")
        part = ds.task_dataset(t)
        for key in ("train", "val", "test"):
            assert _rel(getattr(part, key), info.image_dir) == [(p, lab[0]) for p, lab, _ in split[key]]
    # each task's subset is the single-dataset draw on the same split (CoOp's file holds the same rows)
    few = load_dataset("general10", root, shots=4, seed=2)
    for t, name in enumerate(T.GENERAL10_COOP):
        single = load_dataset(name, root, shots=4, seed=2)
        assert [it.path for it in few.task_dataset(t).train] == [it.path for it in single.train], name
        assert [it.path for it in few.task_dataset(t).val] == [it.path for it in single.val], name


# ------------------------------------------------------------------ situation 2: the first run's split

def test_a_missing_split_dk_is_drawn_as_the_original_first_run_outside_the_tree(tmp_path):
    root = _root(tmp_path)
    cal = os.path.join(root, "caltech-101", "101_ObjectCategories")
    T.class_folders(cal, ["airplanes", "BACKGROUND_Google"], 6)  # one renamed class, one the original ignores
    for cls in ("Caltech101", "DescribableTextures"):
        T.task_files(root, cls)
    before = T.tree_files(root)
    ds = load_dataset("general10", root, shots=2, seed=5)
    assert T.tree_files(root) == before
    assert ds.situation == "generated+split_zhou+aircraft"
    for t, (cls, ignored, names) in enumerate([("Caltech101", ("BACKGROUND_Google",), None),
                                               ("DescribableTextures", (), None)]):
        info = ds.tasks[t]
        assert info.split_source == "generated" and info.names_source == "task files"
        assert info.split_path.startswith(str(tmp_path / "cache")) and os.path.isfile(info.split_path)
        train, val, test, categories = T.original_folder_split(info.image_dir, 1, ignored)
        full = load_dataset("general10", root, subsample_tasks=f"task{t}")
        assert [(it.path, it.label) for it in full.train] == train
        assert [(it.path, it.label) for it in full.val] == val
        assert [(it.path, it.label) for it in full.test] == test
        assert info.name == f"{cls} task"
    assert ds.tasks[0].classnames[0] == "airplane" and "BACKGROUND_Google" not in ds.tasks[0].classnames
    # the subset: the single-dataset draw on that split (written as a CoOp split file in another tree)
    with open(ds.tasks[1].split_path) as f:
        drawn = json.load(f)
    other = str(tmp_path / "other")
    make_split_dataset(other, "dtd", [(1, 1, 1)])
    names = drawn["meta"]["taskid2cname"][0]
    zhou = {k: [[p, lab[0], names[lab[0]]] for p, lab, _ in drawn[k]] for k in ("train", "val", "test")}
    with open(os.path.join(other, "dtd", "split_zhou_DescribableTextures.json"), "w") as f:
        json.dump(zhou, f)
    single = load_dataset("dtd", other, shots=2, seed=5, check_files=False)
    part = ds.task_dataset(1)
    assert _rel(part.train, ds.tasks[1].image_dir) == _rel(single.train, os.path.join(other, "dtd", "images"))
    assert _rel(part.val, ds.tasks[1].image_dir) == _rel(single.val, os.path.join(other, "dtd", "images"))


# ------------------------------------------------------------------ Plant-6 and Fashion-20

_plant6 = T.make_plant6  # tests/test_softcpt_multitask_run.py imports it from here


def test_plant6_generated_tree_loads_with_the_original_splits(tmp_path):
    root = str(tmp_path / "data")
    T.make_plant6(root)
    before = T.tree_files(root)
    ds = load_dataset("plant6", root, shots=2, seed=1)
    assert T.tree_files(root) == before
    assert [t.source for t in ds.tasks] == ["FruitVegetable", "KaggleFlower", "KaggleMushroom", "KaggleVegetable",
                                            "PlantSeedlingV1", "PlantVillage"]
    assert ds.metrics == ["overall_acc"] * 6 and ds.situation == "generated"
    assert [t.names_source for t in ds.tasks] == ["task files"] * 3 + ["fastprompt table"] * 3
    assert ds.tasks[5].classnames == ["apple leaf with scab disease", "healthy corn leaf", "tomato leaf with mold"]
    assert ds.tasks[1].classnames == ["a class", "b class", "c class"]
    # FruitVegetable: each of train/test/validation split 50/20/30 from one stream seeded once
    full = load_dataset("plant6", root, subsample_tasks="task0")
    random.seed(1)
    want = ([], [], [])
    for split in ("train", "test", "validation"):
        parts = T.original_folder_split(os.path.join(full.tasks[0].image_dir, split), None)
        for acc, part in zip(want, parts):
            acc += part
    assert [[(it.path, it.label) for it in x] for x in (full.train, full.val, full.test)] == list(want)
    # each task's subset: the CoOp-family draw on its split
    for t in range(6):
        whole = load_dataset("plant6", root, subsample_tasks=f"task{t}").task_dataset(0)
        tr, va = sample_fewshot(whole.train, whole.val, 2, 1)
        assert ds.task_dataset(t).train == tr and ds.task_dataset(t).val == va


def test_plant6_refuses_split_folders_with_different_classes(tmp_path):
    root = str(tmp_path / "data")
    T.make_plant6(root)
    T.class_folders(os.path.join(root, "kaggle_vegetable", "images", "validation"), ["pear"], 4)
    with pytest.raises(DataError, match="different class folders"):
        load_dataset("plant6", root)


def test_fashion20_first_run_split_and_draw_are_the_original(tmp_path):
    root = str(tmp_path / "data")
    T.make_fashion20(root)
    ds = load_dataset("fashion20", root, shots=2, seed=4)
    assert ds.num_tasks == 20 and ds.metrics == ["mean_acc"] * 20 and ds.situation == "generated"
    assert ds.tasks[11].name == "garment_type_11" and ds.tasks[11].classnames == ["shirt 11", "skirt 11"]
    assert ds.tasks[0].description == ["cassify garment_type_0 into 7 categories"] * 2  # the original's text
    # Fashion20.read_and_split_data after set_random_seed(1), literally
    image_dir = ds.tasks[0].image_dir
    images, task_cls = [], []
    for tid in sorted(os.listdir(image_dir)):
        for cid in sorted(os.listdir(os.path.join(image_dir, tid))):
            for f in os.listdir(os.path.join(image_dir, tid, cid)):
                images.append(os.path.join(image_dir, tid, cid, f))
                task_cls.append((int(tid), int(cid)))
    random.seed(1)
    splits = ([], [], [])
    for tid in range(20):
        idx = [j for j, (t, _) in enumerate(task_cls) if t == tid]
        random.shuffle(idx)
        n = len(idx)
        a, b = round(n * 0.5), round(n * 0.2)
        for acc, sel in zip(splits, (idx[:a], idx[a:a + b], idx[a + b:])):
            acc += [(images[j], tid, task_cls[j][1]) for j in sel]
    full = load_dataset("fashion20", root)
    assert [[(it.path, it.task, it.label) for it in x] for x in (full.train, full.val, full.test)] == list(splits)
    # generate_fewshot_dataset over all tasks at once: groups by (task, label), one stream from the seed
    random.seed(4)
    drawn = []
    for items, k in ((splits[0], 2), (splits[1], 2)):
        groups = OrderedDict()
        for it in items:
            groups.setdefault((it[1], it[2]), []).append(it)
        drawn.append([x for g in groups.values() for x in (random.sample(g, k) if len(g) >= k else g)])
    assert [(it.path, it.task, it.label) for it in ds.train] == drawn[0]
    assert [(it.path, it.task, it.label) for it in ds.val] == drawn[1]
    with pytest.raises(DataError, match="no base/new class split"):
        load_dataset("fashion20", root, subsample="base")
    with pytest.raises(DataError, match="must be one of all, taskN"):
        load_dataset("fashion20", root, subsample_tasks="base")


def test_fashion20_needs_twenty_tasks(tmp_path):
    root = str(tmp_path / "data")
    T.make_fashion20(root, n_tasks=3)
    with pytest.raises(DataError, match="lists 3 tasks; Fashion-20 has 20"):
        load_dataset("fashion20", root)


# ------------------------------------------------------------------ bad trees and the command line

def test_a_missing_source_names_what_is_missing(tmp_path):
    root = _root(tmp_path)
    shutil.rmtree(os.path.join(root, "sun397"))
    with pytest.raises(DataError, match=r"SUN397 not found: no folder .*sun397"):
        load_dataset("general10", root)
    os.makedirs(os.path.join(root, "sun397"))
    with pytest.raises(DataError, match=r"SUN397 in .* has none of: split_dk_SUN397.json .*split_zhou_SUN397"):
        load_dataset("general10", root)


def _cli(capsys, *args):
    rc = main(["data", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_data_check_and_fewshot_know_the_multitask_sets(tmp_path, capsys):
    root = _root(tmp_path)
    rc, out, err = _cli(capsys, "check", root, "--dataset", "general10")
    assert rc == 0, err
    assert "General10 under" in out and "CoOp's" in out and "fastprompt table" in out
    rc, out, err = _cli(capsys, "fewshot", "General-10", root, "--shots", "1", "--seed", "2",
                        "--subsample-tasks", "new")
    assert rc == 0, err
    rec = json.loads(out)
    assert [t["source"] for t in rec["tasks"]] == ["OxfordFlowers", "OxfordPets", "StanfordCars", "SUN397", "UCF101"]
    assert rec["situation"] == "split_zhou" and rec["train"][0][:3] == [rec["train"][0][0], 0, rec["train"][0][2]]
    assert rec["train"][0][0].startswith("oxford_flowers/jpg/")
    os.remove(os.path.join(root, "dtd", "split_zhou_DescribableTextures.json"))
    shutil.rmtree(os.path.join(root, "dtd", "images"))
    rc, out, err = _cli(capsys, "check", root, "--dataset", "general10")
    assert rc == 1 and "dtd" in out and "INCOMPLETE" in out
    rc, out, err = _cli(capsys, "fewshot", "general10", root, "--shots", "1")
    assert rc == 2 and err.count("\n") == 1 and "DescribableTextures in" in err


def test_the_listing_readers_draw_the_first_run_split(tmp_path):
    """OxfordPets, SUN397 and UCF101: names and paths as the original reads its lists, the
    train+val listing split 80/20 per class from random.seed(1) (StanfordCars and OxfordFlowers:
    tests/test_multitask_mat_sources.py)."""
    root = _root(tmp_path)
    T.raw_pets_sun_ucf(root)
    for cls in ("OxfordPets", "SUN397", "UCF101", "StanfordCars"):
        T.task_files(root, cls)
    ds = load_dataset("general10", root)
    by_source = {t.source: (i, t) for i, t in enumerate(ds.tasks)}
    expect = {"OxfordPets": ["abyssinian", "great_pyrenees", "bengal"],
              "SUN397": ["abbey", "outdoor apartment_building", "bedroom"],
              "UCF101": ["Apply_Eye_Makeup", "Band_Marching", "Yo_Yo"]}
    for cls, names in expect.items():
        t, info = by_source[cls]
        assert (info.split_source, info.names_source, info.classnames) == ("generated", "task files", names)
        part = ds.task_dataset(t)
        trainval = sorted(((it.path, it.label) for it in part.train + part.val), key=_listing_order(root, cls))
        train, val = T.original_split_trainval(trainval, 1)
        assert [(it.path, it.label) for it in part.train] == train and [(it.path, it.label) for it in part.val] == val
        assert len(part.test) == 6 and all(os.path.isfile(it.path) for it in part.test)


def _listing_order(root, cls):
    """The order of the original's train+val listing (file order), to rebuild its input."""
    listing = {"OxfordPets": "oxford_pets/annotations/trainval.txt", "SUN397": "sun397/Training_01.txt",
               "UCF101": "ucf101/ucfTrainTestlist/trainlist01.txt"}[cls]
    with open(os.path.join(root, listing)) as f:
        stems = [os.path.splitext(os.path.basename(line.split(" ")[0].strip()))[0] for line in f if line.strip()]
    order = {s: i for i, s in enumerate(stems)}
    return lambda pair: order[os.path.splitext(os.path.basename(pair[0]))[0]]
