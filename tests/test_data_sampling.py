"""Few-shot draws and base/new splits against the literal Dassl/CoOp re-implementation."""
import random
from collections import namedtuple

import pytest

from fastprompt.data import DataError, Item, sample_fewshot, subsample_classes
from fastprompt.data.fewshot import fewshot_subset
from fastprompt.reference import dassl_sampling as ref

Rec = namedtuple("Rec", "path label classname")


def _items(sizes, seed, prefix="x"):
    """Items with the given per-class sizes, interleaved so labels first appear out of order."""
    rng = random.Random(seed)
    items = [Item(f"/{prefix}/{c}/{i}.jpg", c, f"class {c}") for c, n in enumerate(sizes) for i in range(n)]
    rng.shuffle(items)
    return items


def _ref(train, val, shots, seed, imagenet=False):
    state = random.getstate()
    try:
        return ref.coop_fewshot(list(train), list(val), shots, seed, imagenet=imagenet)
    finally:
        random.setstate(state)


SIZES = [[20, 3, 16, 1, 40, 17, 5, 0, 33], [2] * 7, [100] * 5, [1, 2, 3, 4, 5, 6, 7, 8, 30, 31]]


@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("shots", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fewshot_matches_dassl(sizes, shots, seed):
    sizes = [s for s in sizes if s]
    train = _items(sizes, 10 + seed)
    val = _items([max(1, s // 3) for s in sizes], 20 + seed, prefix="v")
    got = sample_fewshot(train, val, shots, seed)
    want = _ref(train, val, shots, seed)
    assert got[0] == want[0] and got[1] == want[1]
    got_in = sample_fewshot(train, val, shots, seed, with_val=False)
    want_in = _ref(train, val, shots, seed, imagenet=True)
    assert got_in[0] == want_in[0] and got_in[1] == list(val)


def test_small_classes_keep_all_items_and_draw_nothing():
    train = _items([3, 20, 1], 5)
    got, _ = sample_fewshot(train, [], 4, seed=7)
    for label, n in ((0, 3), (2, 1)):
        assert [it for it in got if it.label == label] == [it for it in train if it.label == label][:n]
    # the small classes consume no randomness: same draw for class 1 as from class 1 alone
    only = [it for it in train if it.label == 1]
    assert [it for it in got if it.label == 1] == fewshot_subset(only, 4, random.Random(7))


def test_repeat_uses_choices_like_dassl():
    train = _items([3, 20], 5)
    rng = random.Random(3)
    got = fewshot_subset(train, 5, rng, repeat=True)
    state = random.getstate()
    try:
        random.seed(3)
        want = ref.generate_fewshot_dataset(train, num_shots=5, repeat=True)
    finally:
        random.setstate(state)
    assert got == want and len(got) == 10


def test_global_random_state_untouched():
    random.seed(123)
    before = random.getstate()
    sample_fewshot(_items([30, 30], 1), _items([9, 9], 2), 16, 1)
    assert random.getstate() == before


def test_zero_shots_returns_everything():
    train, val = _items([5, 6], 1), _items([2, 2], 2)
    assert sample_fewshot(train, val, 0, 1) == (train, val)


@pytest.mark.parametrize("bad", [-1, 1.5, "16", True])
def test_bad_shots(bad):
    with pytest.raises(DataError, match="shots"):
        sample_fewshot([], [], bad, 1)


@pytest.mark.parametrize("n_classes", [1, 2, 5, 10, 11])
@pytest.mark.parametrize("which", ["all", "base", "new"])
def test_subsample_matches_coop(n_classes, which):
    train = _items([3] * n_classes, n_classes)
    val = _items([1] * n_classes, 1, "v")
    test = _items([2] * n_classes, 2, "t")
    got = subsample_classes(train, val, test, subsample=which)
    want = ref.subsample_classes(train, val, test, subsample=which,
                                 make=lambda it, y: Item(it.path, y, it.classname))
    assert [list(x) for x in got] == [list(x) for x in want]
    if which != "all":
        m = -(-n_classes // 2)
        assert {it.label for it in got[0]} == set(range(m if which == "base" else n_classes - m))


def test_subsample_uses_labels_of_first_list_only():
    train = [Item("/a", 0, "a"), Item("/c", 4, "c"), Item("/b", 2, "b")]
    test = [Item("/t", 3, "t"), Item("/u", 4, "c")]
    base, tb = subsample_classes(train, test, subsample="base")
    new, tn = subsample_classes(train, test, subsample="new")
    assert [it.label for it in base] == [0, 1] and tb == []
    assert new == [Item("/c", 0, "c")] and tn == [Item("/u", 0, "c")]


def test_bad_subsample():
    with pytest.raises(DataError, match="subsample must be one of all, base, new, got 'novel'"):
        subsample_classes([], subsample="novel")


def test_fewer_images_than_shots_train_on_what_there_is_and_say_so(tmp_path, caplog):
    """The original takes every image of a class that has fewer than the shots asked; that stays,
    but it is no longer silent: a warning, and a note a run writes into its log."""
    import logging

    from fastprompt.data import load_dataset
    from fastprompt.testing.fake_trees import make_split_dataset

    make_split_dataset(str(tmp_path), "dtd", [(20, 4, 2), (10, 4, 2), (3, 4, 2)])
    with caplog.at_level(logging.WARNING, logger="fastprompt"):
        ds = load_dataset("dtd", str(tmp_path), shots=16, seed=1)
    assert len(ds.train) == 16 + 10 + 3
    note = "2 of 3 classes have fewer training images than the 16 shots asked and train on what there is"
    assert any(n.startswith(note) and "class 1: 10, class 2: 3" in n for n in ds.notes), ds.notes
    assert note in caplog.text
    assert not load_dataset("dtd", str(tmp_path), shots=2, seed=1).notes
