"""SoftCPT's multi-task protocol through the run layer: General-10 trains, resumes exactly after
kill -9 and is evaluated per task, each image against its own task's classes, as the original
(kding1225/softcpt ``trainers/mtcoop.py`` and its Dassl fork's ``DatasetWrapper`` /
``ClassificationMT``, literally in :mod:`fastprompt.reference.softcpt`)."""
import json
import os
import random
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import fastprompt
from fastprompt.cli import main
from fastprompt.data import load_dataset
from fastprompt.errors import ConfigError
from fastprompt.reference.softcpt import ReferenceSoftCPT, original_label_matrix, original_mt_evaluate
from fastprompt.testing import FP32, assert_close_rel, random_images
from fastprompt.train.records import read_metrics
from fastprompt.train.run import train_run
from fastprompt.train.state import load_state
from fastprompt.train.task_eval import TaskSlices, task_metrics, within_task

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import multitask_trees as T  # noqa: E402
import softcpt_train_job as job  # noqa: E402

JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "softcpt_train_job.py")
SIZES = [(3, 1, 2)] * 3  # 3 classes per task: 3 train, 1 val, 2 test images each
# CATA with the class-sampled loss: the per-step randperm draws are part of what a resume must restore
CLASS_SAMPLING = ["TRAINER.MTCOOP.CSC", "True", "TRAINER.MTCOOP.CLASS_N_CTX", "2",
                  "TRAINER.MTCOOP.CLS_SAMPLE_RATE", "0.5"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTPROMPT_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def general10(tmp_path):
    root = str(tmp_path / "data")
    T.coop_general10(root, SIZES)
    return root


def _in_process(data, run_dir, extra=(), resume=False):
    """The job in this process, on one thread like the killed one (same float summation order)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_run(job.config(data, list(extra)), str(run_dir), resume=resume, progress=False)
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------- the batch, the loss, the metrics

def test_joint_labels_are_the_original_label_matrix_and_loss(general10, tiny_model):
    """A batch of General-10's joint items: the learner's label matrix is the one the original's
    DatasetWrapper builds from each DatumMT's (task, label), and loss and prompt gradients equal
    the literal original's on that matrix (batch over several tasks, some tasks absent)."""
    data = load_dataset("general10", general10, shots=2, seed=1)
    joint = data.joint()
    picks = [0, 7, 13, 14, 29, 40, 41, 59]  # tasks 0, 1, 2, 2, 4, 6, 6, 9
    items = [data.train[i] for i in picks]
    labels = torch.tensor([joint.train[i].label for i in picks])
    assert [data.global_label(it) for it in items] == labels.tolist()
    matrix = original_label_matrix([[it.task] for it in items], [[it.label] for it in items], data.num_classes)
    torch.manual_seed(0)
    names, classes = zip(*data.task_pairs())
    reference = ReferenceSoftCPT(tiny_model, list(names), list(classes), n_ctx=4)
    learner = fastprompt.SoftCPTLearner.from_model(tiny_model, joint.task_pairs(), n_ctx=4)
    learner.load_original_state_dict(reference.state_dict())
    assert torch.equal(learner.label_matrix(labels), torch.as_tensor(matrix))
    images = random_images(len(picks))
    loss = learner.loss(images, labels)
    ref_loss = reference.loss(images, torch.as_tensor(matrix))
    assert_close_rel(loss, ref_loss, FP32.parity, "loss")
    named = learner.trainable_named_parameters()
    grads = torch.autograd.grad(loss, [p for _, p in named])
    ref_grads = torch.autograd.grad(ref_loss, reference.prompt_parameters())
    for (name, _), g, r in zip(named, grads, ref_grads):
        assert_close_rel(g, r, FP32.gradient_parity, f"grad {name}")


def test_task_metrics_are_the_original_classification_mt():
    """Every image scored within its own task, each task's own metric (overall_acc / mean_acc)
    and their unweighted mean, equal to the original ClassificationMT on the label matrix."""
    sizes, metrics = [3, 5, 2, 4], ["overall_acc", "mean_acc", "mean_acc", "overall_acc"]
    tasks = TaskSlices(("a", "b", "c", "d"), ((0, 3), (3, 8), (8, 10), (10, 14)), tuple(metrics))
    g = torch.Generator().manual_seed(0)
    labels = torch.cat([torch.arange(a, b).repeat(3) for a, b in tasks.ranges])  # every class present
    logits = torch.randn(len(labels), 14, generator=g, dtype=torch.float64)
    owner = tasks.class_task()
    matrix = original_label_matrix([[int(owner[y])] for y in labels],
                                   [[int(y) - tasks.ranges[int(owner[y])][0]] for y in labels], sizes)
    expected = original_mt_evaluate(logits, matrix, sizes, metrics)
    got = task_metrics(within_task(logits, labels, tasks), labels, tasks)
    # the same counts divided the same way: equal up to float64 rounding of the mean
    assert [t["value"] for t in got["tasks"]] == pytest.approx(expected["per_task"], rel=1e-12)
    assert got["task_average"] == pytest.approx(float(expected["metric"]), rel=1e-12)
    # scored within the task: a class of another task never wins, however high its logit
    logits[:, 13] = 1e9
    preds = within_task(logits, labels, tasks)
    assert all(tasks.ranges[int(owner[y])][0] <= int(p) < tasks.ranges[int(owner[y])][1]
               for p, y in zip(preds, labels))


# ---------------------------------------------------------------- the run

def test_general10_run_trains_and_evaluates_per_task(general10, tmp_path, capsys):
    result = _in_process(general10, tmp_path / "run")
    data = load_dataset("general10", general10, shots=2, seed=2)
    assert [t["task"] for t in result["tasks"]] == data.task_names
    assert [t["metric"] for t in result["tasks"]] == data.metrics
    assert [t["total"] for t in result["tasks"]] == data.counts()["test"]
    assert result["task_average"] == pytest.approx(sum(t["value"] for t in result["tasks"]) / 10, rel=1e-12)
    with open(tmp_path / "run" / "eval.json") as f:
        written = json.load(f)
    assert written["tasks"] == result["tasks"] and written["task_average"] == result["task_average"]
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "softcpt on general10 (10 tasks, 30 classes, 60 training images, shots 2" in log
    assert "initial prompts: original" in log and "training order: the original's" in log
    for name in data.task_names:
        assert f"task {name!r}:" in log
    state = load_state(str(tmp_path / "run" / "state.pt"))
    assert state["tasks"] == data.task_names and state["step"] == 6
    # the run's prompts carry the tasks; fastprompt eval on the set scores them per task again
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--data", general10, "--dataset", "general10"]) == 0
    with open(tmp_path / "run" / "eval_general10_all.json") as f:
        again = json.load(f)
    assert again["tasks"] == result["tasks"]


def _plant6_tree(root):
    from test_multitask_data import _plant6

    _plant6(root)


# tree, overrides, kill after step, (epoch, batch, step) of the state left, steps in all
KILLED = {
    "general10": (lambda root: T.coop_general10(root, SIZES), [], 5, (1, 1, 4), 6),
    "plant6": (_plant6_tree, ["DATASET.NAME", "plant6", "DATALOADER.TRAIN_X.BATCH_SIZE", "8"], 7, (1, 2, 6), 8),
}


@pytest.mark.parametrize("dataset", sorted(KILLED))
def test_kill_mid_epoch_then_resume_is_bit_identical(dataset, tmp_path):
    """Class-sampled CATA on General-10 and on Plant-6, killed with SIGKILL mid-epoch 2: resumed
    from the last state, it ends with the prompts, step losses and per-task result of an
    uninterrupted run, bit for bit."""
    make_tree, extra, kill_at, position, n_steps = KILLED[dataset]
    data = str(tmp_path / "data")
    make_tree(data)
    extra = extra + CLASS_SAMPLING
    sets = [t for i in range(0, len(extra), 2) for t in ("--set", *extra[i:i + 2])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    killed = subprocess.Popen([sys.executable, JOB, data, str(tmp_path / "mid"), "--kill-at-step", str(kill_at), *sets],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    full = _in_process(data, tmp_path / "full", extra)
    out, _ = killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL, out
    state = load_state(str(tmp_path / "mid" / "state.pt"))
    assert (state["epoch"], state["batch"], state["step"], state["finished"]) == (*position, False)
    resumed = _in_process(data, tmp_path / "mid", extra, resume=True)
    a, b = load_file(str(tmp_path / "full" / "prompt.safetensors")), load_file(str(tmp_path / "mid" / "prompt.safetensors"))
    assert a.keys() == b.keys() and {"prompt_gen.proj", "class_prompt_learner.ctx"} <= set(a)
    for name in a:
        assert torch.equal(a[name], b[name]), name

    def steps(run):
        return {r["step"]: r["loss"] for r in read_metrics(str(tmp_path / run / "metrics.jsonl")) if r["kind"] == "step"}

    assert steps("mid") == steps("full") and len(steps("full")) == n_steps
    assert resumed["tasks"] == full["tasks"] and len(full["tasks"]) == (10 if dataset == "general10" else 6)


# ---------------------------------------------------------------- refusals

def test_a_single_class_list_method_on_a_multitask_set_is_a_config_error(general10, tmp_path):
    cfg = job.config(general10)
    cfg["METHOD"], cfg["TRAINER"]["NAME"] = "coop", "CoOp"
    with pytest.raises(ConfigError, match=r"general10 is a multi-task dataset \(10 tasks.*train it with softcpt"):
        train_run(cfg, str(tmp_path / "run"), progress=False)
    assert not os.path.exists(tmp_path / "run" / "config.yaml")


def test_subsample_tasks_on_one_dataset_is_a_config_error(tmp_path):
    from fastprompt.testing.fake_trees import make_split_dataset

    make_split_dataset(str(tmp_path / "data"), "dtd", [(3, 1, 2)] * 3)
    cfg = job.config(str(tmp_path / "data"), ["DATASET.NAME", "dtd", "DATASET.SUBSAMPLE_TASKS", "task1"])
    with pytest.raises(ConfigError, match=r"DATASET.SUBSAMPLE_TASKS 'task1' picks tasks of a multi-task set"):
        train_run(cfg, str(tmp_path / "run"), progress=False)


def test_subsample_tasks_picks_the_tasks_of_the_set(general10, tmp_path):
    result = _in_process(general10, tmp_path / "run", ["DATASET.SUBSAMPLE_TASKS", "base", "OPTIM.MAX_EPOCH", "1"])
    data = load_dataset("general10", general10, shots=2, seed=2, subsample_tasks="base")
    assert [t["task"] for t in result["tasks"]] == data.task_names and len(data.task_names) == 5


def test_general10_on_two_processes_equals_one(general10, tmp_path):
    """torchrun, 2 CPU processes splitting each global batch of 16: the per-task loss sums over a
    rank's samples and divides by its 8, so the averaged gradient is the one process's (to fp32
    rounding: each rank sums half a batch); the per-task evaluation covers every test image once."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             JOB, general10, str(tmp_path / "ddp")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    one = _in_process(general10, tmp_path / "one")  # meanwhile
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    a, b = load_file(str(tmp_path / "ddp" / "prompt.safetensors")), load_file(str(tmp_path / "one" / "prompt.safetensors"))
    for name in b:
        assert_close_rel(a[name], b[name], 1e-4, name)  # the tolerance of tests/test_train_distributed.py
    with open(tmp_path / "ddp" / "eval.json") as f:
        two = json.load(f)
    assert [t["total"] for t in two["tasks"]] == [t["total"] for t in one["tasks"]] == [6] * 10


def test_a_multitask_run_starts_from_the_originals_prompts_for_its_tasks():
    """Task-specific task context (NATS) holds one context per task: build_learner replays the
    original's construction for the run's T tasks (it replayed one task, whose shape cannot load)."""
    from fastprompt.testing import tiny_clip
    from fastprompt.train.build import build_learner, set_random_seed
    from fastprompt.train.config import load_recipe, resolve_config
    from fastprompt.train.model_keys import TINY_CLIP_KWARGS
    from fastprompt.replay.construction import original_init

    tasks = [("texture recognition", ["banded", "woven"]), ("pet breed recognition", ["pug", "beagle", "boxer"]),
             ("scene recognition", ["beach", "forest"])]
    cfg = resolve_config([("softcpt/vit_b16_ep50", load_recipe("softcpt/vit_b16_ep50"))],
                         arguments={"MODEL.BACKBONE.NAME": "tiny", "MODEL.BACKBONE.TAG": "none", "SEED": 3},
                         overrides=["TRAINER.MTCOOP.TASK_CSC", "True"])
    model = tiny_clip(3, **TINY_CLIP_KWARGS)
    set_random_seed(3)
    classnames = [c for _, names in tasks for c in names]
    learner = build_learner(cfg, model, None, classnames, "general10", None, "tiny", None, tasks=tasks)
    assert learner.initial_prompts == "original" and learner.task_names == [t for t, _ in tasks]
    after_build = torch.get_rng_state()
    state, rng = original_init("softcpt", model, seed=3, precision="fp16", n_classes=7, n_tasks=3,
                               n_ctx=16, task_n_ctx=4, task_csc=True, class_n_ctx=0, pg_type="lin")
    expected = fastprompt.SoftCPTLearner.from_model(model, tasks, n_ctx=16, task_n_ctx=4, task_csc=True,
                                                    class_n_ctx=0)
    expected.load_original_state_dict(state)
    assert torch.equal(after_build, rng)
    assert learner.task_prompt_learner.ctx.shape[0] == 3
    for name, value in expected.prompt_state_dict().items():
        assert torch.equal(learner.prompt_state_dict()[name], value), name


def test_base_to_new_per_task_and_best_val_on_the_task_average(tmp_path):
    """Trained on every task's base classes with best-on-val selection (the original selects on
    ClassificationMT's mean over tasks), then tested on every task's new classes with fastprompt eval."""
    root = str(tmp_path / "data")
    T.coop_general10(root, [(3, 1, 2)] * 4)  # 4 classes per task: 2 base, 2 new
    _in_process(root, tmp_path / "run", ["DATASET.SUBSAMPLE_CLASSES", "base", "TEST.FINAL_MODEL", "best_val"])
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "(best val average of the tasks' metrics" in log
    evals = [r for r in read_metrics(str(tmp_path / "run" / "metrics.jsonl")) if r["kind"] == "eval"]
    assert [r["split"] for r in evals] == ["val", "val", "test"] and all("task_average" in r for r in evals)
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--data", root, "--dataset", "general10",
                 "--subsample", "new"]) == 0
    with open(tmp_path / "run" / "eval_general10_new.json") as f:
        new = json.load(f)
    data = load_dataset("general10", root, subsample="new")
    assert [t["task"] for t in new["tasks"]] == data.task_names and data.num_classes == [2] * 10
    assert [t["total"] for t in new["tasks"]] == data.counts()["test"] == [4] * 10


@pytest.mark.parametrize("extra", [[], CLASS_SAMPLING], ids=["NATA", "CATA-sampled"])
@pytest.mark.parametrize("workers", [0, 2])
def test_first_steps_on_general10_are_the_originals(extra, workers, general10, tmp_path):
    """The batch composition and the loss of the original on General-10: a fastprompt run's first
    three steps against the literal pieces of the original (as tests/test_same_run.py does for one
    dataset) — Dassl's RandomSampler over the merged training list, its DatasetWrapper and crops
    from the global streams, the fork's label matrix from each item's (task, label)
    (original_label_matrix), ReferenceSoftCPT over the ten tasks started from the original's
    construction for ten tasks (class sampling drawn by the reference from G between batches)."""
    from fastprompt import models
    from fastprompt.reference.dassl_loader import DatasetWrapper, dassl_epoch
    from fastprompt.reference.original_init import original_init_reference
    from fastprompt.train.build import load_split
    from fastprompt.train.methods import learner_kwargs
    from fastprompt.train.model_keys import TINY_CLIP_KWARGS
    from test_same_run import _SOFTCPT_NAMES, _Done, dassl_step, original_step_pieces

    steps = 3
    cfg = job.config(general10, ["DATALOADER.NUM_WORKERS", str(workers), "TRAIN.MAX_STEPS", str(steps),
                                 "TEST.NO_TEST", "True", "TRAINER.MTCOOP.PREC", "fp32"] + extra)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seen = []

        def record(event, trainer, info):
            if event == "step":
                source = trainer.batches
                seen.append([source.items[i].path for i in source.global_items(info["batch"] - 1)])

        train_run(cfg, str(tmp_path / "run"), callbacks=[record], progress=False)
        losses = [r["loss"] for r in read_metrics(str(tmp_path / "run" / "metrics.jsonl")) if r["kind"] == "step"]
        # the original's pieces
        data = load_split(cfg).multitask
        seed = int(cfg["SEED"])
        model = models.tiny_clip(seed, **TINY_CLIP_KWARGS)
        settings = learner_kwargs("softcpt", cfg["TRAINER"]["MTCOOP"])
        ref = ReferenceSoftCPT(model, data.task_names, data.task_classnames,
                               **{_SOFTCPT_NAMES.get(k, k): v for k, v in settings.items()})
        state, g = original_init_reference("softcpt", model, seed=seed, precision="fp32",
                                           n_classes=sum(data.num_classes), n_tasks=data.num_tasks, **settings)
        assert not ref.load_state_dict(state, strict=False).unexpected_keys
        _, optimizer, transform, drawn = original_step_pieces(cfg, model, ref, state)
        ref_losses, ref_batches = [], []

        def labels_of(batch):  # the fork's DatasetWrapper label of each DatumMT (task, label)
            items = [data.train[int(i)] for i in batch["index"]]
            return torch.as_tensor(original_label_matrix([[it.task] for it in items], [[it.label] for it in items],
                                                         data.num_classes))

        torch.set_rng_state(g)
        random.seed(seed)  # P after set_random_seed: General-10's draws are in the Pool workers
        with pytest.raises(_Done):
            dassl_epoch(DatasetWrapper(data.train, transform, drawn), 16, workers,
                        step=dassl_step(ref, optimizer, labels_of, steps, ref_losses, ref_batches))
    finally:
        torch.set_num_threads(threads)
    assert seen == ref_batches and len(losses) == len(ref_losses) == steps
    for a, b in zip(losses, ref_losses):
        assert abs(a - b) <= FP32.parity * max(1.0, abs(b)), (losses, ref_losses)
