"""The original MTCoOpHard's initial prompts from a seed (kding1225/softcpt ``trainers/mtcoop_hard.py``:
``load_clip_to_cpu``, then ``CustomCLIP`` builds one ``PromptLearner`` per task in task order with TSC,
else one over the classes of all tasks): the fast replay equals the literal one bit for bit, on a ViT
and a ResNet CLIP, for two seeds and both precisions; the result loads into ``SoftCPTHardLearner``;
the one-for-all context is CoOp's start for the seed (the same construction); a run of the
baseline starts from it. All comparisons are exact: both sides run the same CPU kernels on the same
words, so no tolerance applies."""
import pytest
import torch

import fastprompt
from fastprompt.errors import ConfigError
from fastprompt.learners.checkpoint import original_prompt_state
from fastprompt.reference.original_init import original_init_reference
from fastprompt.replay.construction import original_init

TASKS = [("pets", ["cat", "dog"]), ("things", ["sea lion", "jack-o'-lantern", "Granny Smith"])]
SIZES = [len(c) for _, c in TASKS]
N = sum(SIZES)
CASES = [dict(n_ctx=4), dict(n_ctx=3, csc=True), dict(n_ctx=4, task_specific=True),
         dict(n_ctx=2, task_specific=True, csc=True), dict(ctx_init="a photo of a", task_specific=True)]


def _id(settings):
    return ",".join(f"{k}={v}" for k, v in settings.items())


@pytest.fixture(scope="module")
def models(tiny_model):
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    gen_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        resnet = CLIP(48, CLIPVisionCfg(layers=(1, 1, 1, 1), width=16, image_size=32, head_width=16),
                      CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=2, layers=2))
    finally:
        torch.random.set_rng_state(gen_state)
    return {"vit": tiny_model, "resnet": fastprompt.models.frozen(resnet)}


def _kw(seed, precision, settings):
    return dict(seed=seed, precision=precision, n_classes=N, n_tasks=len(TASKS), task_classes=SIZES, **settings)


@pytest.mark.parametrize("kind", ["vit", "resnet"])
@pytest.mark.parametrize("seed,precision", [(1, "fp16"), (2, "fp32")])
@pytest.mark.parametrize("settings", CASES, ids=_id)
def test_fast_replay_equals_the_reference_bit_for_bit(models, kind, seed, precision, settings):
    fast = original_init("softcpt_hard", models[kind], **_kw(seed, precision, settings))
    reference = original_init_reference("softcpt_hard", models[kind], **_kw(seed, precision, settings))
    assert sorted(fast[0]) == sorted(reference[0])
    for name in fast[0]:
        assert torch.equal(fast[0][name], reference[0][name]), name
    assert torch.equal(fast[1], reference[1]), "the generator ends elsewhere: the draws' count or order differs"


@pytest.mark.parametrize("settings", CASES, ids=_id)
def test_the_initial_state_loads_into_the_learner(models, settings):
    model = models["vit"]
    state, _ = original_init("softcpt_hard", model, **_kw(3, "fp16", settings))
    per_task = settings.get("task_specific")
    assert sorted(state) == ([f"prompt_learner.learners.{t}.ctx" for t in range(len(TASKS))] if per_task
                             else ["prompt_learner.ctx"])
    learner = fastprompt.SoftCPTHardLearner.from_model(model, TASKS, **settings)
    learner.load_original_state_dict(state)
    expected = learner._map_original_names(original_prompt_state(state))
    assert torch.equal(learner.ctx.detach(), expected["ctx"])
    if per_task and not settings.get("ctx_init"):  # each task's learner draws its own context, in task order
        first, second = state["prompt_learner.learners.0.ctx"], state["prompt_learner.learners.1.ctx"]
        assert not torch.equal(first, second)


def test_one_context_for_all_is_coops_start_and_the_first_task_draws_it_too(models):
    """The original builds the same CLIP as CoOp, then draws the context: with one context for all
    (or for the first task with TSC) the start is CoOp's for the same seed and precision."""
    coop, coop_rng = original_init("coop", models["vit"], seed=4, precision="fp16", n_classes=N, n_ctx=4, ctx_init="")
    shared, shared_rng = original_init("softcpt_hard", models["vit"], **_kw(4, "fp16", dict(n_ctx=4)))
    assert torch.equal(shared["prompt_learner.ctx"], coop["prompt_learner.ctx"]) and torch.equal(shared_rng, coop_rng)
    per_task, _ = original_init("softcpt_hard", models["vit"], **_kw(4, "fp16", dict(n_ctx=4, task_specific=True)))
    assert torch.equal(per_task["prompt_learner.learners.0.ctx"], coop["prompt_learner.ctx"])


def test_per_task_class_contexts_need_each_tasks_class_count(models):
    kw = _kw(1, "fp16", dict(n_ctx=2, task_specific=True, csc=True))
    kw.pop("task_classes")
    with pytest.raises(ConfigError, match="task_classes must give the 2 tasks' class counts"):
        original_init("softcpt_hard", models["vit"], **kw)
    with pytest.raises(ConfigError, match=r"summing to 5"):
        original_init("softcpt_hard", models["vit"], **kw, task_classes=[2, 2])


def test_a_hard_sharing_run_starts_from_the_originals_prompts():
    """build_learner of a softcpt_hard run (one context per task) replays the original's start and
    leaves torch's generator where the original's stands after its build_model."""
    from fastprompt.testing import tiny_clip
    from fastprompt.train.build import build_learner, set_random_seed
    from fastprompt.train.config import load_recipe, resolve_config
    from fastprompt.train.model_keys import TINY_CLIP_KWARGS

    recipe, model = "softcpt_hard/vit_b16_ep50", tiny_clip(3, **TINY_CLIP_KWARGS)
    settings = {"MODEL.BACKBONE.NAME": "tiny", "MODEL.BACKBONE.TAG": "none", "SEED": 3}
    cfg = resolve_config([(recipe, load_recipe(recipe))], arguments=settings, overrides=["TRAINER.MTCOOPH.TSC", "True"])
    set_random_seed(3)  # what a run does before build_learner
    learner = build_learner(cfg, model, None, [c for _, names in TASKS for c in names], "general10", None, "tiny",
                            None, tasks=TASKS)
    assert learner.initial_prompts == "original"
    after_build = torch.get_rng_state()
    section = cfg["TRAINER"]["MTCOOPH"]
    state, rng = original_init("softcpt_hard", model, seed=3, precision=section["PREC"], n_classes=N,
                               n_tasks=len(TASKS), n_ctx=section["N_CTX"], task_specific=True)
    assert torch.equal(after_build, rng)
    expected = torch.stack([state[f"prompt_learner.learners.{t}.ctx"] for t in range(len(TASKS))])
    assert torch.equal(learner.ctx.detach(), expected)


def test_the_baseline_is_exported_like_the_other_learners():
    import fastprompt.learners

    for names in (fastprompt.__all__, fastprompt.learners.__all__):
        assert {"SoftCPTHardLearner", "SoftCPTHardConfig"} <= set(names)
    assert fastprompt.SoftCPTHardLearner is fastprompt.learners.LEARNERS["softcpt_hard"]
    assert fastprompt.SoftCPTHardConfig is fastprompt.SoftCPTHardLearner.config_class
