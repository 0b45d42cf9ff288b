"""Every bad input of a load is an error at load time that names the file or the value."""
import json
import os

import pytest

from fastprompt.data import DataError, load_dataset
from fastprompt.testing.fake_trees import make_aircraft, make_imagenet, make_split_dataset

SIZES = [(4, 2, 2), (3, 1, 2), (5, 1, 1)]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTPROMPT_CACHE", str(tmp_path / "cache"))


def test_unknown_name_lists_known_names(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", str(tmp_path))
    msg = str(info.value)
    assert "unknown dataset 'cifar10'" in msg
    for name in ("oxford_pets", "DescribableTextures", "imagenet-rendition", "ImageNetR", "imagefolder"):
        assert name in msg


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(shots=-1), "shots must be an integer >= 0, got -1"),
    (dict(shots=2.0), "shots must be an integer >= 0, got 2.0"),
    (dict(seed=-3), "seed must be an integer >= 0, got -3"),
    (dict(subsample="novel"), "subsample must be one of all, base, new, got 'novel'"),
])
def test_bad_arguments(tmp_path, kwargs, pattern):
    make_split_dataset(str(tmp_path), "dtd", SIZES)
    with pytest.raises(DataError, match=pattern):
        load_dataset("dtd", str(tmp_path), **kwargs)


def test_missing_dataset_folder_and_split_file(tmp_path):
    with pytest.raises(DataError, match=r"OxfordPets not found: no folder .*oxford_pets.*annotations"):
        load_dataset("oxford_pets", str(tmp_path))
    make_split_dataset(str(tmp_path), "oxford_pets", SIZES)
    split = tmp_path / "oxford_pets" / "split_zhou_OxfordPets.json"
    split.unlink()
    with pytest.raises(DataError, match=r"split file not found: .*split_zhou_OxfordPets.json.*drive.google.com"):
        load_dataset("oxford_pets", str(tmp_path))


def test_split_naming_missing_image(tmp_path):
    split = make_split_dataset(str(tmp_path), "food-101", SIZES)
    gone = tmp_path / "food-101" / "images" / split["test"][0][0]
    gone.unlink()
    with pytest.raises(DataError, match=r"split_zhou_Food101.json names 1 image\(s\) that are not on disk") as info:
        load_dataset("food101", str(tmp_path))
    assert str(gone) in str(info.value)
    assert len(load_dataset("food101", str(tmp_path), check_files=False).test) == 5


@pytest.mark.parametrize("content, pattern", [
    ("{not json", "cannot read split file"),
    (json.dumps({"train": []}), "expected an object with keys train, val, test"),
    (json.dumps({"train": [["a.jpg", "x", "c"]], "val": [], "test": []}), r"train\[0\]: label must be an integer"),
    (json.dumps({"train": [["a.jpg", 0]], "val": [], "test": []}), r"train\[0\]: expected \[path, label, classname\]"),
])
def test_malformed_split_file(tmp_path, content, pattern):
    make_split_dataset(str(tmp_path), "eurosat", SIZES)
    (tmp_path / "eurosat" / "split_zhou_EuroSAT.json").write_text(content)
    with pytest.raises(DataError, match=pattern):
        load_dataset("eurosat", str(tmp_path))


def test_empty_class_in_split(tmp_path):
    split = make_split_dataset(str(tmp_path), "ucf101", SIZES)
    split["train"] = [r for r in split["train"] if r[1] != 1]
    (tmp_path / "ucf101" / "split_zhou_UCF101.json").write_text(json.dumps(split))
    with pytest.raises(DataError, match=r"UCF101 train split: .*empty class label\(s\): 1"):
        load_dataset("ucf101", str(tmp_path))


def test_test_label_beyond_train_classes(tmp_path):
    split = make_split_dataset(str(tmp_path), "sun397", SIZES)
    split["test"][0][1] = 7
    (tmp_path / "sun397" / "split_zhou_SUN397.json").write_text(json.dumps(split))
    with pytest.raises(DataError, match="has label 7, but the train split has only 3 classes"):
        load_dataset("sun397", str(tmp_path))


def test_aircraft_errors(tmp_path):
    make_aircraft(str(tmp_path), SIZES)
    txt = tmp_path / "fgvc_aircraft" / "images_variant_val.txt"
    txt.write_text(txt.read_text() + "1234567 Unknown Plane\n")
    with pytest.raises(DataError, match=r"images_variant_val.txt:\d+: variant 'Unknown Plane' is not in variants.txt"):
        load_dataset("fgvc_aircraft", str(tmp_path))
    (tmp_path / "fgvc_aircraft" / "variants.txt").unlink()
    with pytest.raises(DataError, match="file not found: .*variants.txt"):
        load_dataset("fgvc_aircraft", str(tmp_path))


def test_imagenet_errors(tmp_path):
    root = str(tmp_path)
    wnids = make_imagenet(root, 3, 2)
    train = tmp_path / "imagenet" / "images" / "train"
    (train / "n99999999").mkdir()
    (train / "n99999999" / "x.JPEG").write_bytes(b"")
    with pytest.raises(DataError, match=r"folder .*n99999999 has no line in .*classnames.txt"):
        load_dataset("imagenet", root)
    (train / "n99999999" / "x.JPEG").unlink()
    (train / "n99999999").rmdir()
    for f in (train / wnids[1]).iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"empty class label\(s\): 1"):
        load_dataset("imagenet", root)
    (train / wnids[1]).rmdir()
    with pytest.raises(DataError, match="train and .*val have different class folders"):
        load_dataset("imagenet", root)
    (tmp_path / "imagenet" / "classnames.txt").unlink()
    with pytest.raises(DataError, match="class-name file not found"):
        load_dataset("imagenet", root)


def test_options_of_custom_loaders_rejected_for_coop_datasets(tmp_path):
    make_split_dataset(str(tmp_path), "dtd", SIZES)
    with pytest.raises(DataError, match=r"unexpected option\(s\) \['split'\] for dtd"):
        load_dataset("dtd", str(tmp_path), split=(0.5, 0.2))


def test_a_class_list_a_classifier_cannot_use_is_refused_at_load(tmp_path):
    """One class (the whole dataset, or what a base/new half leaves) or two folder names that CLIP's
    tokenizer reads as one: refused when the data is loaded, before any model is built."""
    from fastprompt.testing.fake_trees import tiny_jpeg

    def tree(root, names):
        for name in names:
            os.makedirs(os.path.join(root, name))
            for i in range(3):
                with open(os.path.join(root, name, f"{i}.jpg"), "wb") as f:
                    f.write(tiny_jpeg(16))
        return str(root)

    with pytest.raises(DataError, match=r"1 class\(es\) \['cat'\]: a classifier needs at least two"):
        load_dataset("imagefolder", tree(tmp_path / "one", ["cat"]))
    with pytest.raises(DataError, match=r"\(base classes\) has 1 class\(es\)"):
        load_dataset("imagefolder", tree(tmp_path / "two", ["cat", "dog"]), subsample="base")
    with pytest.raises(DataError, match=r"'Otter' \(class 0\) and 'otter' \(class 2\)"):
        load_dataset("imagefolder", tree(tmp_path / "same", ["Otter", "dog", "otter"]))
