"""ImageNet-21K-P folders: class universes from timm's tables, labels, POMP's 16-shot subset."""
import random

import pytest

from fastprompt.data import DataError, load_imagenet21k, read_class_table, universe_wnids
from fastprompt.testing.fake_imagenet21k import make_imagenet21k
from fastprompt.data.fewshot import split_by_label
from fastprompt.data.imagenet21k_classes import build_class_table, wordnet_lemmas


def test_universe_counts_from_timm_tables():
    w21, f11, full = (set(universe_wnids(u)) for u in ("winter21", "fall11", "full"))
    assert (len(w21), len(f11), len(full)) == (10450, 11221, 21841)
    assert w21 < f11 < full
    assert list(universe_wnids("winter21")) == sorted(w21)
    assert full <= set(wordnet_lemmas())  # every class has a name
    with pytest.raises(DataError, match="unknown ImageNet-21K universe 'winter'"):
        universe_wnids("winter")


def test_class_table_names_and_round_trip(tmp_path):
    table = build_class_table(universe="winter21")
    assert len(table) == 10450 and table.names[table.label_of["n00007846"]].startswith("person, individual")
    first = build_class_table(universe="winter21", names="first")
    assert first.names[first.label_of["n00007846"]] == "person"
    table.write(str(tmp_path))
    back = read_class_table(str(tmp_path))
    assert back.wnids == table.wnids and back.names == table.names and back.universe == "winter21"
    assert (tmp_path / "classnames.txt").read_text().splitlines()[0] == f"{table.wnids[0]} {table.names[0]}"
    custom = tmp_path / "names.txt"
    custom.write_text("n00007846 human being\n")
    over = build_class_table(["n00007846", "n00005787"], "folders", classnames_file=str(custom))
    assert over.wnids == ["n00005787", "n00007846"] and over.names == ["benthos", "human being"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("in21k")
    sizes = [20] * 150 + [5] * 50  # 200 classes, the last 50 smaller than 16 shots
    wnids = make_imagenet21k(str(root), 200, sizes, val_per_class=2)
    return str(root), wnids, sizes


def test_folder_labels_and_sixteen_shots(tree, tmp_path):
    root, wnids, sizes = tree
    ds = load_imagenet21k(root, shots=16, seed=42, cache_root=str(tmp_path))
    assert ds.num_classes == 200 and ds.class_table.wnids == sorted(wnids)
    groups = split_by_label(ds.train)
    assert list(groups) == list(range(200))  # classes in label order, as Dassl groups them
    assert [len(groups[c]) for c in range(200)] == [min(16, n) for n in sizes]
    for c, items in groups.items():
        assert {it.path.split("/")[-2] for it in items} == {ds.class_table.wnids[c]}
    assert len(ds.test) == 400 and ds.val is not None and len(ds.val) == 400

    # POMP's draw: Dassl's generate_fewshot_dataset from random.seed(42) over the listing order
    full = load_imagenet21k(root, shots=0, cache_root=str(tmp_path))
    rng = random.Random(42)
    expected = []
    for items in split_by_label(full.train).values():
        expected.extend(rng.sample(items, 16) if len(items) >= 16 else items)
    assert ds.train == expected
    again = load_imagenet21k(root, shots=16, seed=42, cache_root=str(tmp_path))
    assert again.train == ds.train
    assert load_imagenet21k(root, shots=16, seed=1, cache_root=str(tmp_path)).train != ds.train


def test_named_universe_keeps_labels_and_adds_classes(tree, tmp_path):
    root, wnids, _ = tree
    folders = load_imagenet21k(root, shots=16, seed=3, cache_root=str(tmp_path))
    full = load_imagenet21k(root, shots=16, seed=3, universe="full", cache_root=str(tmp_path))
    assert full.num_classes == 21841 and len(full.class_table.names) == 21841
    assert [it.path for it in full.train] == [it.path for it in folders.train]  # same draw
    table = full.class_table
    assert all(table.wnids[it.label] == it.path.split("/")[-2] for it in full.train)


def test_folder_outside_universe_is_named(tmp_path):
    make_imagenet21k(str(tmp_path), 2, 1, wnids=["n00005787", "n99999999"])
    with pytest.raises(DataError, match="n99999999"):
        load_imagenet21k(str(tmp_path), universe="winter21", cache_root=str(tmp_path / "c"))
    with pytest.raises(DataError, match="no class name .*n99999999"):
        load_imagenet21k(str(tmp_path), cache_root=str(tmp_path / "c"))


def test_missing_tree_is_explained(tmp_path):
    with pytest.raises(DataError, match="no ImageNet-21K-P tree"):
        load_imagenet21k(str(tmp_path))
