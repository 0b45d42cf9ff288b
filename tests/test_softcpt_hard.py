"""SoftCPT's hard-sharing baselines (kding1225/softcpt ``trainers/mtcoop_hard.py``, ``MTCoOpHard``)
against the literal original (:class:`fastprompt.reference.softcpt.ReferenceMTCoOpHard`), and
their run on a generated General-10 tree."""
import os
import sys

import pytest
import torch

from fastprompt.learners import LEARNERS
from fastprompt.reference.softcpt import ReferenceMTCoOpHard
from fastprompt.testing import FP32, assert_close_rel, random_images
from fastprompt.train.run import train_run

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import multitask_trees as T  # noqa: E402
import softcpt_train_job as job  # noqa: E402

TASKS = {
    "shape_kinds": ["red circle", "blue_square", "green triangle"],
    "animals": ["dog", "sea lion", "sea otter", "cat"],
    "fruit": ["Granny Smith", "banana"],
}
# learner config -> the reference's (TRAINER.MTCOOPH) names
REF_NAMES = dict(n_ctx="n_ctx", csc="csc", task_specific="tsc", ctx_init="ctx_init",
                 class_token_position="token_position")
CONFIGS = [
    dict(n_ctx=4),                                      # (1) one prompt for all tasks
    dict(n_ctx=4, task_specific=True),                  # (2) one prompt per task
    dict(n_ctx=4, csc=True),                            # (3) one prompt per class
    dict(n_ctx=4, csc=True, task_specific=True),        # per class, held per task
    dict(ctx_init="a photo of a", task_specific=True),  # words: generic per task, as CoOp
    dict(n_ctx=4, task_specific=True, class_token_position="middle"),
    dict(n_ctx=4, class_token_position="front"),
]
# joint labels: a batch over all three tasks, and one with a task absent
LABEL_BATCHES = [torch.tensor([0, 4, 8, 5]), torch.tensor([3, 6, 5, 6])]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_hard_sharing_matches_the_original(cfg, tiny_model):
    """Logits, the per-task loss (on the original's label matrix) and the context's gradient equal
    the literal MTCoOpHard's, loading its state dict (one learner, or one per task)."""
    torch.manual_seed(0)
    reference = ReferenceMTCoOpHard(tiny_model, list(TASKS), list(TASKS.values()),
                                    **{REF_NAMES[k]: v for k, v in cfg.items()})
    learner = LEARNERS["softcpt_hard"].from_model(tiny_model, TASKS, **cfg)
    with torch.no_grad():  # contexts that differ per task and class (a word init starts equal)
        for p in reference.prompt_parameters():
            p.add_(0.05 * torch.randn_like(p))
    learner.load_original_state_dict(reference.state_dict())
    images = random_images(4)
    assert_close_rel(learner(images), reference(images), FP32.parity, "logits")
    for labels in LABEL_BATCHES:
        matrix = learner.label_matrix(labels)
        loss, ref_loss = learner.loss(images, labels), reference.loss(images, matrix)
        assert_close_rel(loss, ref_loss, FP32.parity, "loss")
        (grad,) = torch.autograd.grad(loss, [learner.ctx])
        ref_grads = torch.autograd.grad(ref_loss, reference.prompt_parameters())
        assert_close_rel(grad, _joined(ref_grads), FP32.gradient_parity, "grad ctx")


def _joined(grads):
    """The original's per-task learners' gradients as one ``ctx``: stacked ``[M, D]`` contexts, or
    joined ``[C_t, M, D]`` class contexts (``learner.ctx``'s layout)."""
    if len(grads) == 1:
        return grads[0]
    return torch.stack(grads) if grads[0].dim() == 2 else torch.cat(grads)


def test_the_three_baselines_hold_the_prompts_the_readme_names(tiny_model):
    shapes = {}
    for name, cfg in [("one for all", {}), ("per task", dict(task_specific=True)), ("per class", dict(csc=True))]:
        learner = LEARNERS["softcpt_hard"].from_model(tiny_model, TASKS, n_ctx=4, **cfg)
        shapes[name] = tuple(learner.ctx.shape[:-1])
    assert shapes == {"one for all": (4,), "per task": (3, 4), "per class": (9, 4)}


def test_a_plain_class_list_is_one_task(tiny_model):
    learner = LEARNERS["softcpt_hard"].from_model(tiny_model, ["cat", "dog"], n_ctx=4)
    assert learner.tasks == {"classes": ["cat", "dog"]}
    images = random_images(2)
    # one task: the per-task loss is CoOp's mean cross-entropy
    torch.testing.assert_close(learner.loss(images, torch.tensor([1, 0])),
                               torch.nn.functional.cross_entropy(learner(images), torch.tensor([1, 0])))


def test_per_task_context_refuses_another_task_count(tiny_model):
    learner = LEARNERS["softcpt_hard"].from_model(tiny_model, TASKS, n_ctx=4, task_specific=True)
    with pytest.raises(ValueError, match=r"per-task context \(task_specific, TSC\) was learned for 3 tasks"):
        learner.set_tasks({"a": ["x", "y"]})


def test_hard_sharing_runs_on_general10(tmp_path, monkeypatch, capsys):
    """``MTCoOpHard`` with one prompt per task and with one for all, through the run layer: trains,
    evaluates per task; fastprompt eval on one dataset of the set takes the shared prompt and
    refuses, in one line, the per-task prompts learned for ten tasks."""
    from fastprompt.cli import main

    monkeypatch.setenv("FASTPROMPT_CACHE", str(tmp_path / "cache"))
    root = str(tmp_path / "data")
    T.coop_general10(root, [(3, 1, 2)] * 3)
    overrides = [x for x in job.OVERRIDES if x not in ("TRAINER.MTCOOP.N_CTX", "4")]
    for run, tsc, csc in (("per_task", "True", "False"), ("shared", "False", "False"),
                          ("per_task_class", "True", "True")):
        cfg = job.train_job.config(root, ["TRAINER.MTCOOPH.N_CTX", "4", "TRAINER.MTCOOPH.TSC", tsc,
                                          "TRAINER.MTCOOPH.CSC", csc, "OPTIM.MAX_EPOCH", "1"],
                                   recipe="softcpt_hard/vit_b16_ep50", dataset="general10", seed=2,
                                   overrides=overrides)
        result = train_run(cfg, str(tmp_path / run), progress=False)
        assert len(result["tasks"]) == 10 and "task_average" in result
    log = (tmp_path / "per_task" / "log.txt").read_text()
    assert "softcpt_hard on general10 (10 tasks, 30 classes" in log
    assert "initial prompts: original" in log  # the original MTCoOpHard's draws, replayed
    # one context per class of each task: drawn task by task, so the run passes each task's class count
    assert "initial prompts: original" in (tmp_path / "per_task_class" / "log.txt").read_text()
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "shared"), "--data", root, "--dataset", "dtd"]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "per_task"), "--data", root, "--dataset", "dtd"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "per-task context (task_specific, TSC) was learned for 10 tasks" in err[0]


@pytest.mark.parametrize("name", ["NATA", "NATS", "CATA", "CSTA", "CATS", "CSTS"])
@pytest.mark.parametrize("dataset", ["general10", "plant6"])
def test_the_paper_variants_resolve_to_their_settings(name, dataset):
    """Each README variant's recipe + overrides gives the learner of that name; on General-10 the
    class-feature variants sample 10% of the negative classes (main_mtcoop_cls_sample.sh), elsewhere none."""
    from fastprompt.learners.softcpt import SoftCPTConfig
    from fastprompt.train.config import load_recipe, resolve_config
    from fastprompt.train.methods import learner_kwargs
    from fastprompt.train.softcpt_variants import variant_run

    recipe, overrides = variant_run(name, dataset)
    cfg = resolve_config([(recipe, load_recipe(recipe))], arguments={"DATASET.NAME": dataset}, overrides=overrides)
    config = SoftCPTConfig(**learner_kwargs("softcpt", cfg["TRAINER"]["MTCOOP"]))
    assert config.variant == name and config.n_ctx == 16 and config.task_n_ctx == 4
    assert config.cls_sample_rate == (0.1 if dataset == "general10" and name.startswith("C") else 0.0)


@pytest.mark.parametrize("name, shape", [("hard-shared", (16,)), ("hard-per-task", (3, 16)),
                                         ("hard-per-class", (9, 16))])
def test_the_hard_baselines_resolve_to_their_prompts(name, shape, tiny_model):
    from fastprompt.train.config import load_recipe, resolve_config
    from fastprompt.train.methods import learner_kwargs
    from fastprompt.train.softcpt_variants import variant_run

    recipe, overrides = variant_run(name, "general10", "vit_b16_ep50")
    cfg = resolve_config([(recipe, load_recipe(recipe))], overrides=overrides)
    learner = LEARNERS["softcpt_hard"].from_model(tiny_model, TASKS,
                                                  **learner_kwargs("softcpt_hard", cfg["TRAINER"]["MTCOOPH"]))
    assert tuple(learner.ctx.shape[:-1]) == shape


@pytest.mark.parametrize("method", ["softcpt", "softcpt_hard"])
def test_one_class_name_may_be_in_two_tasks_but_not_twice_in_one(method, tiny_model):
    """Each image is scored within its task, so "sunflower" may be a class of Caltech-101 and of
    Oxford Flowers (General-10): the joint list is accepted; within a task two names CLIP reads as
    one are still refused."""
    tasks = {"objects": ["sunflower", "chair"], "flowers": ["sunflower", "rose"]}
    learner = LEARNERS[method].from_model(tiny_model, tasks, n_ctx=4)
    assert learner.classnames == ["sunflower", "chair", "sunflower", "rose"]
    images = random_images(2)
    assert torch.isfinite(learner.loss(images, torch.tensor([0, 2])))
    with pytest.raises(ValueError, match=r"tasks\['flowers'\]: classnames .*'Rose' \(class 0\) and 'rose'"):
        LEARNERS[method].from_model(tiny_model, {**tasks, "flowers": ["Rose", "rose"]}, n_ctx=4)
