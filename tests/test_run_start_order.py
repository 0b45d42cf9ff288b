"""A run checks the cheap things first and writes nothing until it is known to be buildable.

A mistyped dataset, a data root without it, or a class list no classifier can use (one class, or
two names CLIP reads as one) is reported before the model is built — with real weights, before a
download of hundreds of MB — and the output directory is left as it was, so the corrected command
runs in it.
"""
import os
import sys

import pytest

from fastprompt.errors import DataError
from fastprompt.testing.fake_trees import make_split_dataset, tiny_jpeg
from fastprompt.train import startup
from fastprompt.train.run import train_run

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_job  # noqa: E402  (CoOp, tiny CLIP, 2 epochs of 6 batches of 4)


@pytest.fixture(scope="module")
def data(dtd_tree):
    return dtd_tree


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was built before the data was checked")

    monkeypatch.setattr(startup, "build_model", refuse)


@pytest.mark.parametrize("setting, message", [
    (("DATASET.NAME", "dtdd"), "unknown dataset 'dtdd'"),
    (("DATASET.ROOT", "/nonexistent/data"), "DescribableTextures not found"),
])
def test_a_wrong_dataset_is_reported_before_the_model_is_built(data, tmp_path, no_model, setting, message):
    cfg = train_job.config(data)
    section, key = setting[0].split(".")
    cfg[section][key] = setting[1]
    run_dir = tmp_path / "run"
    with pytest.raises(DataError, match=message):
        train_run(cfg, str(run_dir), progress=False)
    assert not run_dir.exists() or os.listdir(run_dir) == [], "a failed start left files behind"


def test_a_one_class_subset_is_reported_before_the_model_is_built(tmp_path, no_model):
    make_split_dataset(str(tmp_path / "data"), "dtd", [(6, 2, 2)], image_bytes=tiny_jpeg(16))
    with pytest.raises(DataError, match=r"1 class\(es\).*at least two"):
        train_run(train_job.config(str(tmp_path / "data")), str(tmp_path / "run"), progress=False)


def test_the_corrected_command_runs_in_the_same_directory(data, tmp_path):
    run_dir = tmp_path / "run"
    cfg = train_job.config(data)
    cfg["DATASET"]["NAME"] = "dtdd"
    with pytest.raises(DataError):
        train_run(cfg, str(run_dir), progress=False)
    cfg = train_job.config(data, ["OPTIM.MAX_EPOCH", "1"])
    assert train_run(cfg, str(run_dir), progress=False)["accuracy"] >= 0


def test_a_learner_that_cannot_be_built_leaves_the_directory_for_the_corrected_command(data, tmp_path):
    """config.yaml and env.txt used to be written before the learner was built: a bad method
    setting left a directory that the corrected command refused ("already holds a run")."""
    from fastprompt.errors import ConfigError

    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match="TRAINER.COOP"):
        train_run(train_job.config(data, ["TRAINER.COOP.CLASS_TOKEN_POSITION", "nowhere"]), str(run_dir),
                  progress=False)
    assert not run_dir.exists() or os.listdir(run_dir) == []
    assert train_run(train_job.config(data, ["OPTIM.MAX_EPOCH", "1"]), str(run_dir), progress=False)["total"] == 8
