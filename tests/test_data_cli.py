"""``fastprompt data check`` and ``fastprompt data fewshot``."""
import json
import os

import pytest

from fastprompt.cli import main
from fastprompt.data import load_dataset
from fastprompt.testing.fake_trees import make_imagenet, make_split_dataset

SIZES = [(6, 2, 2), (3, 2, 2), (9, 1, 1)]


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTPROMPT_CACHE", str(tmp_path / "cache"))
    r = tmp_path / "data"
    make_split_dataset(str(r), "dtd", SIZES)
    make_imagenet(str(r), 3, 4)
    return r


def test_check_all_present(root, capsys):
    assert main(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "dtd" in out and "ok" in out and "28 images (train 18 / val 5 / test 5)" in out
    assert "imagenet" in out and "18 images (train 12 / test 6)" in out
    assert "not present:" in out and "oxford_pets" in out


def test_check_reports_each_missing_entry(root, capsys):
    split = json.loads((root / "dtd" / "split_zhou_DescribableTextures.json").read_text())
    gone = root / "dtd" / "images" / split["val"][0][0]
    gone.unlink()
    (root / "imagenet" / "classnames.txt").unlink()
    assert main(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    assert f"missing image {gone}" in out
    assert f"missing file {root / 'imagenet' / 'classnames.txt'}" in out
    assert "download: ILSVRC-2012" in out and "download: dtd-r1.0.1.tar.gz" in out


def test_check_one_dataset(root, capsys):
    assert main(["data", "check", str(root), "--dataset", "EuroSAT"]) == 1
    out = capsys.readouterr().out
    assert "eurosat" in out and "MISSING" in out and f"missing folder {root / 'eurosat'}{os.sep}" in out
    assert "EuroSAT.zip" in out
    assert main(["data", "check", str(root), "--dataset", "dtd"]) == 0
    assert main(["data", "check", str(root), "--dataset", "mnist"]) == 2
    assert "unknown dataset 'mnist'" in capsys.readouterr().err


def test_check_empty_root(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path)]) == 1
    assert "no CoOp dataset folder found" in capsys.readouterr().out
    assert main(["data", "check", str(tmp_path / "nope")]) == 2


def test_fewshot_prints_and_writes(root, tmp_path, capsys):
    assert main(["data", "fewshot", "dtd", str(root), "--shots", "4", "--seed", "2", "--subsample", "base"]) == 0
    record = json.loads(capsys.readouterr().out)
    ds = load_dataset("dtd", str(root), shots=4, seed=2, subsample="base")
    assert record["classnames"] == ds.classnames and record["source"] == "sampled"
    assert [os.path.join(record["image_dir"], p) for p, _, _ in record["train"]] == [it.path for it in ds.train]
    out = tmp_path / "out" / "subset.json"
    assert main(["data", "fewshot", "imagenet", str(root), "--shots", "2", "--out", str(out)]) == 0
    assert "wrote 6 train" in capsys.readouterr().out
    assert len(json.loads(out.read_text())["train"]) == 6


def test_fewshot_bad_arguments(root, capsys):
    with pytest.raises(SystemExit) as info:
        main(["data", "fewshot", "dtd", str(root), "--shots", "-2"])
    assert info.value.code == 2 and "expected an integer >= 0, got -2" in capsys.readouterr().err
    assert main(["data", "fewshot", "oxford_pets", str(root), "--shots", "1"]) == 2
    assert "OxfordPets not found" in capsys.readouterr().err
