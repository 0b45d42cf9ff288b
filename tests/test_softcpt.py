"""SoftCPT learner against the literal original code path (fastprompt.reference.softcpt)."""
import json

import pytest
import torch

import fastprompt
from fastprompt.reference import ReferenceSoftCPT
from fastprompt.testing import FP32, assert_close_rel, assert_gradient_flows, random_images

TASKS = {
    "shape_kinds": ["red circle", "blue_square", "green triangle"],
    "animals": ["dog", "sea lion", "sea otter", "cat"],
    "fruit": ["Granny Smith", "banana"],
}
# learner config name -> the original's TRAINER.MTCOOP name as the reference takes it
REF_NAMES = dict(n_ctx="n_ctx", class_token_position="token_position", task_n_ctx="task_n_ctx",
                 task_ctx_init="task_ctx_init", task_csc="task_csc", task_token_position="task_token_position",
                 class_features="csc", class_n_ctx="class_n_ctx", class_ctx_init="class_ctx_init",
                 class_csc="class_csc", class_feature_token_position="class_token_position", pg_type="pg_type",
                 cls_sample_rate="cls_sample_rate")
CONFIGS = [
    dict(),                                                             # NATA (README default)
    dict(task_csc=True, n_ctx=4),                                       # NATS
    dict(task_ctx_init="a task of"),
    dict(task_n_ctx=0),                                                 # frozen task features
    dict(class_token_position="middle", task_token_position="front"),
    dict(class_features=True),                                          # CATA
    dict(class_features=True, class_csc=True, task_csc=True),           # CSTS
    dict(class_features=True, pg_type="linmean", class_feature_token_position="front"),
    dict(class_features=True, pg_type="lincls", class_n_ctx=0),
    dict(class_features=True, cls_sample_rate=0.5),                     # CATA with class sampling
]
# joint labels: a batch over all three tasks, and one with a single task present
LABEL_BATCHES = [torch.tensor([0, 4, 8, 5]), torch.tensor([3, 6, 5, 6])]


def _pair(model, cfg, tasks=TASKS):
    torch.manual_seed(0)
    reference = ReferenceSoftCPT(model, list(tasks), [tasks[t] for t in tasks],
                                 **{REF_NAMES[k]: v for k, v in cfg.items()})
    learner = fastprompt.SoftCPTLearner.from_model(model, tasks, **cfg)
    learner.load_original_state_dict(reference.state_dict())
    return learner, reference


def _compare(learner, reference, images, labels, rtol=FP32.parity):
    matrix = learner.label_matrix(labels)
    assert_close_rel(learner(images), reference(images)[0], rtol, "logits")
    torch.manual_seed(11)  # class sampling draws from the global RNG, in the same order on both sides
    loss = learner.loss(images, labels)
    torch.manual_seed(11)
    ref_loss = reference.loss(images, matrix)
    assert_close_rel(loss, ref_loss, rtol, "loss")
    named = learner.trainable_named_parameters()
    ref_params = reference.prompt_parameters()
    assert len(named) == len(ref_params)
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    ref_grads = torch.autograd.grad(ref_loss, ref_params, allow_unused=True)
    for (name, _), g, r in zip(named, grads, ref_grads):
        if r is None:  # e.g. the task context with pg_type="lincls" (the class half only)
            assert g is None or not g.any(), name
            continue
        assert_close_rel(g, r, FP32.gradient_parity, f"grad {name}")


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "NATA")
@pytest.mark.parametrize("model_fixture", ["tiny_model", "tiny_custom_model"])
def test_softcpt_matches_reference(cfg, model_fixture, request):
    model = request.getfixturevalue(model_fixture)
    learner, reference = _pair(model, cfg)
    for labels in LABEL_BATCHES:
        _compare(learner, reference, random_images(4), labels)


def test_gradients_reach_the_task_context_through_the_frozen_tower(tiny_model):
    learner = fastprompt.SoftCPTLearner.from_model(tiny_model, TASKS)
    loss = learner.loss(random_images(2), torch.tensor([1, 7]))
    g_ctx, g_proj = torch.autograd.grad(loss, [learner.task_prompt_learner.ctx, learner.prompt_gen.proj])
    assert_gradient_flows(g_ctx, "task context")
    assert_gradient_flows(g_proj, "prompt_gen.proj")
    assert all(not p.requires_grad for p in tiny_model.parameters())


def test_one_batched_text_pass_with_one_prefix_group_per_task(tiny_model, monkeypatch):
    learner = fastprompt.SoftCPTLearner.from_model(tiny_model, TASKS)
    calls = []
    original = type(learner.text_tower).forward

    def spy(tower, plan, prefix, suffix, *args, **kwargs):
        calls.append((plan.n_groups, plan.n_sequences, plan.group.tolist()))
        return original(tower, plan, prefix, suffix, *args, **kwargs)

    monkeypatch.setattr(type(learner.text_tower), "forward", spy)
    monkeypatch.setattr(type(learner.text_tower), "__call__", spy)
    learner(random_images(2))
    # one pass for the task prompts, ONE pass for all 9 class prompts with the task as prefix group
    assert calls == [(1, 3, [0, 0, 0]), (3, 9, [0, 0, 0, 1, 1, 1, 1, 2, 2])]
    calls.clear()
    learner.loss(random_images(2), torch.tensor([3, 6]))  # only "animals" present: only its classes are encoded
    assert calls[-1][:2] == (1, 4)
    calls.clear()
    learner(random_images(2), task="fruit")
    assert calls[-1][:2] == (1, 2)


def test_label_formats_give_the_same_loss(tiny_model):
    learner = fastprompt.SoftCPTLearner.from_model(tiny_model, TASKS)
    images = random_images(4)
    joint = torch.tensor([0, 4, 8, 5])
    within = torch.tensor([0, 1, 1, 2])
    expected = learner.loss(images, joint)
    assert_close_rel(learner.loss(images, within, tasks=torch.tensor([0, 1, 2, 1])), expected, FP32.rounding,
                     "per task")
    names = ["shape_kinds", "animals", "fruit", "animals"]
    assert_close_rel(learner.loss(images, within, tasks=names), expected, FP32.rounding, "per task, by name")
    assert_close_rel(learner.loss(images, learner.label_matrix(joint)), expected, FP32.rounding, "label matrix")
    matrix = learner.label_matrix(joint)
    assert matrix.tolist()[1] == [-1, -1, -1, 0, 1, 0, 0, -1, -1]
    # by hand: per-task CE over the task's slice, summed, divided by B
    logits = learner(images)
    manual = sum(torch.nn.functional.cross_entropy(logits[i:i + 1, s:e], torch.tensor([int(joint[i]) - s]))
                 for i, (s, e) in enumerate([(0, 3), (3, 7), (7, 9), (3, 7)])) / 4
    assert_close_rel(learner.loss(images, joint), manual, FP32.parity, "manual")


def test_a_sample_in_two_tasks_counts_in_both(tiny_model):
    learner, reference = _pair(tiny_model, dict())
    matrix = learner.label_matrix(torch.tensor([0, 4, 8]))
    matrix[0, 3:7] = torch.tensor([0, 0, 1, 0])  # sample 0 also labelled "sea otter" of task 1
    images = random_images(3)
    assert_close_rel(learner.loss(images, matrix), reference.loss(images, matrix), FP32.parity, "multi-task sample")


def test_forward_for_one_task_is_its_slice(tiny_model):
    learner = fastprompt.SoftCPTLearner.from_model(tiny_model, TASKS, class_features=True)
    images = random_images(2)
    full = learner(images)
    assert full.shape == (2, 9)
    for t, (start, end) in enumerate(learner.class_ranges):
        assert_close_rel(learner(images, task=t), full[:, start:end], FP32.parity, f"task {t}")
    assert_close_rel(learner(images, task="fruit"), full[:, 7:9], FP32.parity, "task by name")
    w = learner.text_classifier()
    img = torch.nn.functional.normalize(tiny_model.encode_image(images), dim=-1)
    assert_close_rel(tiny_model.logit_scale.exp() * img @ w.t(), full, FP32.parity, "text_classifier")
    assert_close_rel(learner.text_classifier("animals"), w[3:7], FP32.parity, "text_classifier(task)")


def test_tasks_api(tiny_model):
    learner = fastprompt.SoftCPTLearner.from_model(tiny_model, TASKS)
    assert learner.task_names == list(TASKS) and learner.n_tasks == 3 and learner.n_classes == 9
    assert learner.classnames[:3] == ["red circle", "blue square", "green triangle"]
    assert learner.class_ranges == [(0, 3), (3, 7), (7, 9)]
    assert learner.tasks["animals"] == TASKS["animals"]
    assert learner.config.variant == "NATA"
    pairs = fastprompt.SoftCPTLearner.from_model(tiny_model, list(TASKS.items()))
    assert pairs.tasks == learner.tasks


def test_parameters_named_as_the_original(tiny_model):
    learner = fastprompt.SoftCPTLearner.from_model(tiny_model, TASKS)
    width, embed = learner.text_tower.width, learner.text_tower.embed_dim
    shapes = {n: tuple(p.shape) for n, p in learner.trainable_named_parameters()}
    assert shapes == {"task_prompt_learner.ctx": (4, width), "prompt_gen.proj": (embed, 16 * width)}
    csts = fastprompt.SoftCPTLearner.from_model(tiny_model, TASKS, class_features=True, class_csc=True, task_csc=True)
    shapes = {n: tuple(p.shape) for n, p in csts.trainable_named_parameters()}
    assert shapes == {"task_prompt_learner.ctx": (3, 4, width), "class_prompt_learner.ctx": (9, 4, width),
                      "prompt_gen.proj": (2 * embed, 16 * width)}
    assert csts.config.variant == "CSTS"


def test_load_original_dassl_model_directories(tiny_model, tmp_path):
    learner, reference = _pair(tiny_model, dict(class_features=True))
    for name in ("task_prompt_learner", "class_prompt_learner", "prompt_gen"):
        (tmp_path / name).mkdir()
        torch.save({"state_dict": getattr(reference, name).state_dict(), "epoch": 50},
                   tmp_path / name / "model.pth.tar-50")
    fresh = fastprompt.SoftCPTLearner.from_model(tiny_model, TASKS, class_features=True)
    fresh.load_original_state_dict({name: str(tmp_path / name / "model.pth.tar-50")
                                    for name in ("task_prompt_learner", "class_prompt_learner", "prompt_gen")})
    for (n, p), (_, q) in zip(fresh.trainable_named_parameters(), learner.trainable_named_parameters()):
        assert torch.equal(p, q), n
    with pytest.raises(ValueError, match="missing"):
        only_task = tmp_path / "task_prompt_learner" / "model.pth.tar-50"
        fresh.load_original_state_dict({"task_prompt_learner": str(only_task)})


def test_save_and_load_pretrained_keeps_task_order(tiny_model, tmp_path):
    tasks = {"zebra_things": ["zebra", "okapi"], "apples": ["Granny Smith", "Fuji", "Gala"]}
    learner = fastprompt.SoftCPTLearner.from_model(tiny_model, tasks, task_csc=True)
    with torch.no_grad():
        learner.prompt_gen.proj.mul_(3.0)
    learner.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "fastprompt_config.json").read_text())
    assert config["method"] == "softcpt" and config["classnames"][0][0] == "zebra_things"
    loaded = fastprompt.PromptLearner.from_pretrained(tmp_path / "ckpt", model=tiny_model)
    assert type(loaded) is fastprompt.SoftCPTLearner and loaded.task_names == ["zebra_things", "apples"]
    images = random_images(2)
    assert torch.equal(loaded(images), learner(images))


def test_set_tasks_takes_a_tasks_mapping(tiny_model):
    learner, _ = _pair(tiny_model, dict())
    new = {"vehicles": ["car", "truck", "bicycle"], "birds": ["robin", "crow"]}
    learner.set_tasks(new)
    assert learner.task_names == ["vehicles", "birds"] and learner.n_classes == 5
    _, reference = _pair(tiny_model, dict(), tasks=new)
    reference.load_state_dict({**reference.state_dict(), **dict(learner.trainable_named_parameters())})
    _compare(learner, reference, random_images(3), torch.tensor([0, 4, 2]))
    specific = fastprompt.SoftCPTLearner.from_model(tiny_model, TASKS, task_csc=True)
    with pytest.raises(ValueError, match="task_csc"):
        specific.set_tasks(new)
    per_class = fastprompt.SoftCPTLearner.from_model(tiny_model, TASKS, class_features=True, class_csc=True)
    with pytest.raises(ValueError, match="class_csc"):
        per_class.set_tasks(new)


@pytest.mark.parametrize("cfg,argument", [
    (dict(n_ctx=0), "n_ctx"),
    (dict(task_n_ctx=-1), "task_n_ctx"),
    (dict(class_n_ctx=-2), "class_n_ctx"),
    (dict(pg_type="mlp"), "pg_type"),
    (dict(pg_type="linmean"), "pg_type"),
    (dict(cls_sample_rate=0.1), "cls_sample_rate"),
    (dict(class_features=True, cls_sample_rate=1.5), "cls_sample_rate"),
    (dict(task_token_position="left"), "task_token_position"),
    (dict(class_token_position="up"), "class_token_position"),
    (dict(backend="warp"), "backend"),
])
def test_bad_config_is_a_clear_error(tiny_model, cfg, argument):
    with pytest.raises(ValueError, match=argument):
        fastprompt.SoftCPTLearner.from_model(tiny_model, TASKS, **cfg)


@pytest.mark.parametrize("tasks,message", [
    ({}, "empty"),
    ("pets", "tasks must map"),
    ({"pets": []}, r"tasks\['pets'\]"),
    ({"pets": "cat"}, r"tasks\['pets'\]"),
    ([("pets", ["cat", "dog"]), ("pets", ["dog", "cat"])], "twice"),
    ({"": ["cat"]}, "task names"),
])
def test_bad_tasks_are_a_clear_error(tiny_model, tasks, message):
    with pytest.raises(ValueError, match=message):
        fastprompt.SoftCPTLearner.from_model(tiny_model, tasks)


def test_bad_labels_are_a_clear_error(tiny_model):
    learner = fastprompt.SoftCPTLearner.from_model(tiny_model, TASKS)
    images = random_images(2)
    with pytest.raises(ValueError, match="joint labels"):
        learner.loss(images, torch.tensor([0, 9]))
    with pytest.raises(ValueError, match="not a class of task 2"):
        learner.loss(images, torch.tensor([0, 2]), tasks=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="unknown task"):
        learner.loss(images, torch.tensor([0, 1]), tasks=["animals", "plants"])
    with pytest.raises(ValueError, match="9 columns"):
        learner.loss(images, torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="2 samples|images has|one per image"):
        learner.loss(random_images(3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="unknown task"):
        learner(images, task="plants")


@pytest.mark.slow
def test_vit_b16_softcpt_matches_reference(vit_b16):
    tasks = {"fish": ["goldfish", "great white shark", "tiger shark"], "birds": ["robin", "jay"]}
    learner, reference = _pair(vit_b16, dict(), tasks=tasks)
    shapes = {n: p.numel() for n, p in learner.trainable_named_parameters()}
    assert shapes == {"task_prompt_learner.ctx": 4 * 512, "prompt_gen.proj": 512 * 16 * 512}  # kding1225/softcpt NATA: 4 task ctx + a 512 x (16 x 512) linear prompt generator
    _compare(learner, reference, random_images(1, size=224), torch.tensor([3]))


def test_set_classnames_has_every_learners_contract(tiny_model):
    """A list of class names, as for every learner: it becomes one task (the learner's own, or named)."""
    one = fastprompt.SoftCPTLearner.from_model(tiny_model, {"pets": ["cat", "dog"]})
    one.set_classnames(["otter", "seal", "walrus"])
    assert one.tasks == {"pets": ["otter", "seal", "walrus"]}
    twin = fastprompt.SoftCPTLearner.from_model(tiny_model, {"pets": ["otter", "seal", "walrus"]})
    twin.load_prompt_state(dict(one.trainable_named_parameters()))
    images = random_images(2)
    assert torch.equal(one(images), twin(images))
    several = fastprompt.SoftCPTLearner.from_model(tiny_model, TASKS)
    with pytest.raises(ValueError, match="name the task"):
        several.set_classnames(["otter", "seal"])
    several.set_classnames(["otter", "seal"], task="marine")
    assert several.tasks == {"marine": ["otter", "seal"]}
    with pytest.raises(ValueError, match="set_tasks"):
        several.set_classnames({"a": ["b"]})

