"""Unreadable images are skipped and counted, never a silent result: a split or an epoch with no
readable image, or with more than ``DATASET.MAX_UNREADABLE`` of them unreadable, stops the run.

Before, a training split whose every image was unreadable "finished" with the initial prompts
saved and ``accuracy nan% (0/0)``, and test-time unreadable images were missing from ``eval.json``
without a count.

Skipping applies to fastprompt's own order (``DATALOADER.OWN_ORDER True``, :data:`OWN`). A run on
the original's streams (the default of the originals' methods) cannot skip an image — the original
would crash, and every later draw would move — so there an unreadable training image is one
``DataError`` naming the file: before anything is written when its header cannot be read, at its
batch (and in log.txt) when only its body is corrupt.
"""
import json
import os
import sys

import pytest

from fastprompt.data.registry import resolve
from fastprompt.errors import ConfigError, DataError
from fastprompt.testing.fake_trees import make_split_dataset, tiny_jpeg
from fastprompt.train.run import train_run

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_job  # noqa: E402  (CoOp, tiny CLIP, 2 epochs of 6 batches of 4)

OWN = ["DATALOADER.OWN_ORDER", "True"]  # fastprompt's own order: unreadable training images may be skipped


def _tree(root, split_name, n_bad):
    """The DTD tree of train_job with the first ``n_bad`` images of ``split_name`` truncated."""
    split = make_split_dataset(str(root), "dtd", [(6, 2, 2)] * 4, image_bytes=tiny_jpeg(16))
    spec = resolve("dtd")
    for row in split[split_name][:n_bad]:
        path = os.path.join(root, spec.folder, spec.image_dir, row[0])
        with open(path, "rb") as f:
            head = f.read()[:300]
        with open(path, "wb") as f:  # PIL cannot decode a truncated JPEG
            f.write(head)
    return str(root)


def test_a_training_split_with_nothing_readable_is_an_error_not_a_finished_run(tmp_path):
    data = _tree(tmp_path / "data", "train", 24)
    run_dir = tmp_path / "run"
    with pytest.raises(DataError, match=r"no image of epoch 1's training images could be read \(24 unreadable"):
        train_run(train_job.config(data, OWN), str(run_dir), progress=False)
    assert not (run_dir / "eval.json").exists() and not (run_dir / "state.pt").exists()
    assert "error: no image of epoch 1" in (run_dir / "log.txt").read_text()


def test_more_unreadable_than_allowed_stops_unless_the_key_allows_it(tmp_path):
    data = _tree(tmp_path / "data", "train", 6)  # 6 of 24: 25%
    with pytest.raises(DataError, match=r"6 of the 24 images of epoch 1's training images .*25\.0%.*"
                                        r"DATASET.MAX_UNREADABLE 0.1"):
        train_run(train_job.config(data, OWN), str(tmp_path / "strict"), progress=False)
    cfg = train_job.config(data, OWN + ["DATASET.MAX_UNREADABLE", "0.3", "OPTIM.MAX_EPOCH", "1"])
    assert train_run(cfg, str(tmp_path / "lenient"), progress=False)["total"] == 8


def test_on_the_originals_streams_an_unreadable_training_image_is_an_error_naming_it(tmp_path):
    data = _tree(tmp_path / "data", "train", 1)
    bad = os.path.join(data, "dtd", "images", train_job_first_train(data))
    run_dir = tmp_path / "run"
    with pytest.raises(DataError, match=rf"training image {bad} cannot be read .*cannot skip an image"):
        train_run(train_job.config(data, ["DATASET.MAX_UNREADABLE", "0.5"]), str(run_dir), progress=False)
    assert not run_dir.exists() or not os.listdir(run_dir)  # found before anything is written


def test_on_the_originals_streams_a_corrupt_image_body_stops_at_its_batch(tmp_path):
    """The header reads (so the plan is made), the pixels do not: the batch holding it is a
    DataError naming the file, also in log.txt, with no state saved past it."""
    import io
    import random

    from PIL import Image

    data = _tree(tmp_path / "data", "train", 0)
    path = os.path.join(data, "dtd", "images", train_job_first_train(data))
    rng = random.Random(0)
    img = Image.frombytes("RGB", (64, 64), bytes(rng.randrange(256) for _ in range(64 * 64 * 3)))
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    with open(path, "wb") as f:
        f.write(buf.getvalue()[:len(buf.getvalue()) * 2 // 3])
    with Image.open(path) as im:
        assert im.size == (64, 64)  # the header is whole
    run_dir = tmp_path / "run"
    with pytest.raises(DataError, match=rf"of epoch 1: training image {path} cannot be read"):
        train_run(train_job.config(data, ["OPTIM.MAX_EPOCH", "1"]), str(run_dir), progress=False)
    assert "error: batch" in (run_dir / "log.txt").read_text()
    assert not (run_dir / "eval.json").exists()


def train_job_first_train(data):
    """The first training image of the tree's split file (the one ``_tree`` truncates first)."""
    spec = resolve("dtd")
    with open(os.path.join(data, spec.folder, spec.split_file), encoding="utf-8") as f:
        return json.load(f)["train"][0][0]


def test_a_test_split_with_nothing_readable_is_an_error(tmp_path):
    data = _tree(tmp_path / "data", "test", 8)
    with pytest.raises(DataError, match=r"no image of the test split could be read \(8 unreadable"):
        train_run(train_job.config(data, ["OPTIM.MAX_EPOCH", "1"]), str(tmp_path / "run"), progress=False)
    assert not (tmp_path / "run" / "eval.json").exists()


def test_eval_json_counts_the_unreadable_test_images(tmp_path):
    data = _tree(tmp_path / "data", "test", 1)  # 1 of 8, allowed at 0.2
    cfg = train_job.config(data, ["OPTIM.MAX_EPOCH", "1", "DATASET.MAX_UNREADABLE", "0.2"])
    result = train_run(cfg, str(tmp_path / "run"), progress=False)
    saved = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert result["total"] == saved["total"] == 7 and saved["unreadable"] == 1


@pytest.mark.parametrize("key, value", [
    ("OPTIM.MAX_EPOCH", "0"), ("DATALOADER.TRAIN_X.BATCH_SIZE", "0"), ("DATALOADER.TEST.BATCH_SIZE", "-4"),
    ("TRAIN.GRAD_ACCUM_STEPS", "0"), ("TRAIN.CHECKPOINT_STEPS", "-1"), ("TRAIN.PRINT_FREQ", "0"),
    ("TRAIN.MAX_STEPS", "-2"), ("OPTIM.LR", "-0.002"), ("OPTIM.LR", "0"),
    ("DATASET.MAX_UNREADABLE", "1.5"), ("DATASET.MAX_UNREADABLE", "-0.1"),
])
def test_a_setting_out_of_its_range_is_refused_naming_the_key(dtd_tree, tmp_path, key, value):
    """Accepted before: ``TRAIN.CHECKPOINT_STEPS -1``, a negative LR, ...; the others failed deep
    inside with a message about a field, not the key."""
    with pytest.raises(ConfigError, match=rf"{key} must be"):
        train_run(train_job.config(dtd_tree, [key, value]), str(tmp_path / "run"), progress=False)
    assert not (tmp_path / "run").exists() or not os.listdir(tmp_path / "run")


def test_the_unreadable_share_counts_images_not_their_augmented_views(tmp_path):
    """With K views per image the readable side was counted in views: 3 of 24 images unreadable
    (12.5%) read as 3 of 45 (6.7%) with K = 2 and passed the 10% bound."""
    data = _tree(tmp_path / "data", "train", 3)
    cfg = train_job.config(data, OWN + ["DATALOADER.K_TRANSFORMS", "2", "OPTIM.MAX_EPOCH", "1"])
    with pytest.raises(DataError, match=r"3 of the 24 images of epoch 1's training images .*12\.5%"):
        train_run(cfg, str(tmp_path / "run"), progress=False)


def test_evaluating_a_split_with_no_images_is_an_error_not_nan(tiny_model):
    import torch

    import fastprompt
    from fastprompt.train.evaluate import evaluate

    learner = fastprompt.CoOpLearner.from_model(tiny_model, ["cat", "dog"], n_ctx=4)
    with pytest.raises(DataError, match="the test split has no images"):
        evaluate(learner, [], torch.device("cpu"), 2, images=0)
