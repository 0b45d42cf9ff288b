"""Which prompts a run ends with: ``TEST.FINAL_MODEL best_val`` and PromptSRC's GPA (with resume)."""
import os
import sys

import pytest
import torch
from safetensors.torch import load_file

import fastprompt.train.trainer as trainer_module
from fastprompt.testing.fake_trees import make_split_dataset, tiny_jpeg
from fastprompt.train.config import resolve_config
from fastprompt.train.gpa import gaussian_epoch_weights
from fastprompt.train.config import load_recipe
from fastprompt.train.records import read_metrics
from fastprompt.train.run import train_run
from fastprompt.train.state import load_state

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_helpers import prompts, tensor_trainer, tensors, tiny_learner  # noqa: E402


def _scripted_evaluations(monkeypatch, accuracies):
    """Evaluation returns the given accuracies in turn (then 50%); returns the splits asked for."""
    asked, queue = [], list(accuracies)

    def fake(learner, batches, device, n_classes, autocast, gather=None, **checks):
        asked.append(1)
        acc = queue.pop(0) if queue else 50.0
        return {"accuracy": acc, "error": 100 - acc, "macro_f1": acc, "correct": 0, "total": 4,
                "per_class_accuracy": {}}

    monkeypatch.setattr(trainer_module, "evaluate", fake)
    return asked


def _epoch_prompts(snapshots):
    return lambda event, t, info: snapshots.append(prompts(t.learner)) if event == "epoch" else None


def test_best_val_tests_the_prompts_of_the_best_val_epoch(monkeypatch, tmp_path):
    asked = _scripted_evaluations(monkeypatch, [20.0, 70.0, 40.0])
    x, y = tensors(8)
    learner, snapshots = tiny_learner(), []
    trainer = tensor_trainer(learner, x, y, epochs=3, val=torch.utils.data.TensorDataset(x, y), no_test=False,
                             final_model="best_val", run_dir=str(tmp_path), callbacks=[_epoch_prompts(snapshots)])
    trainer.fit()
    assert len(asked) == 4  # val after each of the 3 epochs, then the test
    assert not torch.equal(snapshots[1]["ctx"], snapshots[2]["ctx"])
    assert torch.equal(prompts(learner)["ctx"], snapshots[1]["ctx"])  # epoch 2 had the best val accuracy
    assert torch.equal(load_file(str(tmp_path / "prompt.safetensors"))["ctx"], snapshots[1]["ctx"])
    best = load_state(str(tmp_path / "state.pt"))["best"]
    assert (best["epoch"], best["score"]) == (1, 70.0)
    assert "testing the prompts of epoch 2 (best val accuracy 70.00%)" in (tmp_path / "log.txt").read_text()


def test_best_val_without_a_test_keeps_the_last_prompts_as_dassl(monkeypatch):
    # Dassl's after_epoch selects on val only when the run tests (POMP's recipes: NO_TEST + best_val)
    asked = _scripted_evaluations(monkeypatch, [20.0, 70.0, 40.0])
    x, y = tensors(8)
    learner, snapshots = tiny_learner(), []
    tensor_trainer(learner, x, y, epochs=3, val=torch.utils.data.TensorDataset(x, y), no_test=True,
                   final_model="best_val", callbacks=[_epoch_prompts(snapshots)]).fit()
    assert asked == [] and torch.equal(prompts(learner)["ctx"], snapshots[-1]["ctx"])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_split_dataset(str(root), "dtd", [(4, 2, 1)] * 3, image_bytes=tiny_jpeg(16))
    return str(root)


def _config(data, recipe, *overrides):
    return resolve_config([(recipe, load_recipe(recipe))],
                          arguments={"DATASET.ROOT": data, "DATASET.NAME": "dtd", "SEED": 2,
                                     "MODEL.BACKBONE.NAME": "tiny", "MODEL.BACKBONE.TAG": "none",
                                     "TRAIN.TENSORBOARD": False},
                          overrides=["DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.NUM_WORKERS", "0",
                                     "OPTIM.WARMUP_EPOCH", "0", "OPTIM.LR", "0.05", *overrides])


def test_best_val_run_selects_on_the_val_records(data, tmp_path):
    train_run(_config(data, "coop/vit_b16_ep50", "OPTIM.MAX_EPOCH", "2", "TEST.FINAL_MODEL", "best_val",
                      "TRAINER.COOP.N_CTX", "4"), str(tmp_path), progress=False)
    val = [r["accuracy"] for r in read_metrics(str(tmp_path / "metrics.jsonl")) if r.get("split") == "val"]
    state = load_state(str(tmp_path / "state.pt"))
    assert len(val) == 2 and state["best"]["epoch"] == val.index(max(val))  # the first of equal scores
    assert torch.equal(load_file(str(tmp_path / "prompt.safetensors"))["ctx"], state["best"]["params"]["ctx"])


PROMPTSRC = ("promptsrc/vit_b16_c2_ep20_batch4_4+4ctx", "OPTIM.MAX_EPOCH", "3", "TRAINER.PROMPTSRC.GPA_MEAN", "2",
             "TRAINER.PROMPTSRC.GPA_STD", "1", "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "2",
             "TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "2", "TEST.NO_TEST", "True")


class _Stop(Exception):
    pass


def test_promptsrc_ends_with_the_gpa_prompts_and_gpa_survives_a_resume(data, tmp_path):
    full, snapshots = tmp_path / "full", []
    train_run(_config(data, *PROMPTSRC), str(full), callbacks=[_epoch_prompts(snapshots)], progress=False)
    weights = gaussian_epoch_weights(3, 2.0, 1.0)
    final = load_file(str(full / "prompt.safetensors"))
    assert set(final) == set(snapshots[0])
    for name in final:
        expected = sum(w * s[name] for w, s in zip(weights, snapshots))
        assert torch.allclose(final[name], expected, rtol=1e-5, atol=1e-6), name
    assert any(not torch.equal(final[name], snapshots[-1][name]) for name in final)  # not the last epoch's

    def stop_after_epoch_1(event, trainer, info):
        if event == "epoch" and info["epoch"] == 0:
            raise _Stop

    resumed = tmp_path / "resumed"
    with pytest.raises(_Stop):
        train_run(_config(data, *PROMPTSRC), str(resumed), callbacks=[stop_after_epoch_1], progress=False)
    assert load_state(str(resumed / "state.pt"))["aggregator"]["epochs_done"] == 1
    train_run(_config(data, *PROMPTSRC), str(resumed), resume=True, progress=False)
    again = load_file(str(resumed / "prompt.safetensors"))
    for name in final:
        assert torch.equal(again[name], final[name]), name
    assert load_state(str(resumed / "state.pt"))["aggregator"]["epochs_done"] == 3
