"""A diverging run stops with the step number and keeps its last good checkpoint; unreadable
training images are skipped, counted in ``metrics.jsonl`` and the count survives a resume."""
import os
import sys

import pytest
import torch
from safetensors.torch import load_file

import fastprompt
from fastprompt.testing.fake_trees import make_split_dataset, tiny_jpeg
from fastprompt.data.registry import resolve
from fastprompt.train.build import TINY_CLIP_KWARGS
from fastprompt.train.config import resolve_config
from fastprompt.errors import TrainError
from fastprompt.train.config import load_recipe
from fastprompt.train.records import read_metrics
from fastprompt.train.run import train_run
from fastprompt.train.state import load_state

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_job  # noqa: E402  (CoOp, tiny CLIP, 2 epochs of 6 batches of 4, a state every 2 steps)

FILES = ("state.pt", "prompt.safetensors", "fastprompt_config.json")


@pytest.fixture(scope="module")
def data(dtd_tree):
    return dtd_tree


def _config(data, *overrides):
    return resolve_config([("coop/vit_b16_ep50", load_recipe("coop/vit_b16_ep50"))],
                          arguments={"DATASET.ROOT": data, "DATASET.NAME": "dtd", "SEED": 3,
                                     "MODEL.BACKBONE.NAME": "tiny", "MODEL.BACKBONE.TAG": "none",
                                     "TRAIN.TENSORBOARD": False},
                          overrides=train_job.OVERRIDES + list(overrides))


def _files(run_dir):
    return {name: (run_dir / name).read_bytes() for name in FILES}


def _train_keeping_snapshots(cfg, run_dir):
    """Train until it fails; returns the error and the run files as they were after each save."""
    snapshots = {}

    def snapshot(event, trainer, info):
        if trainer.last_saved_step == trainer.step:
            snapshots[trainer.step] = _files(run_dir)

    with pytest.raises(TrainError) as err:
        train_run(cfg, str(run_dir), callbacks=[snapshot], progress=False)
    return str(err.value), snapshots


def _assert_kept(run_dir, snapshot, step):
    assert _files(run_dir) == snapshot  # unchanged, byte for byte
    state = load_state(str(run_dir / "state.pt"))
    assert state["step"] == step and all(torch.isfinite(p).all() for p in state["params"].values())
    model = fastprompt.testing.tiny_clip(3, **TINY_CLIP_KWARGS)  # --model tiny of SEED 3
    learner = fastprompt.PromptLearner.from_pretrained(str(run_dir), model=model)
    saved = load_file(str(run_dir / "prompt.safetensors"))["ctx"]
    assert torch.equal(dict(learner.trainable_named_parameters())["ctx"], saved) and torch.isfinite(saved).all()


def test_an_infinite_learning_rate_stops_before_checkpointing_non_finite_prompts(data, tmp_path):
    # epoch 1 at the warm-up lr, then OPTIM.LR = inf: step 7 turns the prompts non-finite (its loss,
    # computed before the update, is still finite); a state is written after every step.
    cfg = _config(data, "OPTIM.WARMUP_EPOCH", "1", "OPTIM.LR", "1e999", "TRAIN.CHECKPOINT_STEPS", "1")
    message, snapshots = _train_keeping_snapshots(cfg, tmp_path)
    assert "non-finite prompt parameters ['ctx'] after step 7 (epoch 2, batch 1)" in message
    assert f"the last good checkpoint (step 6) is kept in {tmp_path}" in message and "Lower OPTIM.LR" in message
    _assert_kept(tmp_path, snapshots[6], 6)
    assert message in (tmp_path / "log.txt").read_text()


def test_a_nan_loss_stops_with_its_step_and_the_run_resumes_from_the_last_checkpoint(data, tmp_path, monkeypatch):
    calls = []
    loss = fastprompt.CoOpLearner.loss

    def nan_at_the_fifth_batch(self, images, labels):
        calls.append(1)
        value = loss(self, images, labels)
        return value * float("nan") if len(calls) == 5 else value

    monkeypatch.setattr(fastprompt.CoOpLearner, "loss", nan_at_the_fifth_batch)
    message, snapshots = _train_keeping_snapshots(_config(data), tmp_path)
    assert message.startswith("non-finite loss (nan) at step 5 (epoch 1, batch 5); the last good checkpoint (step 4)")
    _assert_kept(tmp_path, snapshots[4], 4)
    monkeypatch.undo()
    result = train_run(_config(data), str(tmp_path), resume=True, progress=False)
    assert load_state(str(tmp_path / "state.pt"))["step"] == 12 and result["total"] == 8


class _Stop(Exception):
    pass


def test_unreadable_images_are_counted_in_metrics_across_a_resume(tmp_path_factory):
    root = tmp_path_factory.mktemp("corrupt")
    split = make_split_dataset(str(root), "dtd", [(6, 2, 2)] * 4, image_bytes=tiny_jpeg(16))
    spec = resolve("dtd")
    path = os.path.join(root, spec.folder, spec.image_dir, split["train"][0][0])
    with open(path, "rb") as f:
        head = f.read()[:300]
    with open(path, "wb") as f:  # a truncated JPEG: PIL fails to decode it
        f.write(head)
    run_dir = tmp_path_factory.mktemp("run")

    def stop_after_epoch_1(event, trainer, info):
        if event == "epoch" and info["epoch"] == 0:
            raise _Stop

    own = ("DATALOADER.OWN_ORDER", "True")  # skipping applies to fastprompt's own order (the original's cannot skip)
    with pytest.raises(_Stop):
        train_run(_config(str(root), *own), str(run_dir), callbacks=[stop_after_epoch_1], progress=False)
    train_run(_config(str(root), *own), str(run_dir), resume=True, progress=False)
    records = read_metrics(str(run_dir / "metrics.jsonl"))
    epochs = [r["skipped_images"] for r in records if r["kind"] == "epoch"]
    assert epochs == [1, 2]  # the image is met once per epoch; the resumed run goes on counting
    steps = [r["skipped_images"] for r in records if r["kind"] == "step"]
    assert steps[0] in (0, 1) and steps[-1] == 2 and steps == sorted(steps)
    assert load_state(str(run_dir / "state.pt"))["skipped_images"] == 2
    assert "1 unreadable images skipped" in (run_dir / "log.txt").read_text()
