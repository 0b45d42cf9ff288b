"""PromptKD learner against the literal original code path (fastprompt.reference.ReferencePromptKD)."""
import math

import pytest
import torch

import fastprompt
from fastprompt.models import tiny_clip
from fastprompt.reference import ReferencePromptKD
from fastprompt.testing import FP32, assert_close_rel, perturb_trainable, random_images

NAMES = ["cat", "dog", "sea lion", "car", "tree", "golden retriever", "jack-o'-lantern"]


@pytest.fixture(scope="module")
def teacher_model():
    """A wider teacher (another embedding width, as ViT-L/14 against a ViT-B/16 student)."""
    return tiny_clip(seed=2, width=80, vision_width=120, vision_heads=3, embed_dim=56)


def _images(n=6):
    # x4: the tiny towers' features then differ enough between images that the projection's
    # BatchNorm (batch statistics) does not amplify float32 rounding beyond the tolerance table
    return random_images(n) * 4


def _teacher_state(reference):
    """The teacher's prompts as the original's ``CustomCLIP_teacher`` checkpoint holds them."""
    t = reference.model_teacher
    state = {k: v for k, v in t.state_dict().items() if "VPT" in k or k.startswith("prompt_learner.")}
    state["prompt_learner.token_prefix2"] = state["prompt_learner.token_prefix"]
    state["prompt_learner.token_suffix2"] = state["prompt_learner.token_suffix"]
    return state


def _student_state(reference):
    """The student ``CustomCLIP``'s whole state dict (what the original saves: frozen CLIP weights,
    ``logit_scale``, the prompts, ``VPT_image_trans`` with ``num_batches_tracked``)."""
    return {k: v for k, v in reference.state_dict().items() if not k.startswith("model_teacher.")}


def _pair(student, teacher, ref_cfg, cfg):
    torch.manual_seed(0)
    reference = ReferencePromptKD(student, teacher, NAMES, **ref_cfg)
    perturb_trainable(reference)
    learner = fastprompt.PromptKDLearner.from_model(student, NAMES, teacher=teacher, **cfg)
    learner.load_teacher(_teacher_state(reference))
    # the student's whole CustomCLIP state dict, frozen CLIP weights and num_batches_tracked included
    learner.load_original_state_dict(_student_state(reference))
    return learner, reference


def _prompt_pairs(learner, reference):
    pairs = [(learner.vision_prompts[0], reference.image_encoder.VPT)]
    for j in range(1, len(learner.vision_prompts)):
        pairs.append((learner.vision_prompts[j], reference.image_encoder.transformer.resblocks[j].VPT_shallow))
    for i in (0, 1, 3):
        pairs.append((learner.projector.conv1[i].weight, reference.VPT_image_trans.conv1[i].weight))
        pairs.append((learner.projector.conv1[i].bias, reference.VPT_image_trans.conv1[i].bias))
    return pairs


CASES = [
    ("tiny_model", dict(prompt_depth_vision=2, prompt_depth_text=2, teacher_prompt_depth=2),
     dict(prompt_depth_vision=2, teacher_prompt_depth=2)),
    ("tiny_model", dict(prompt_depth_vision=1, teacher_prompt_depth=2, temperature=2.0, kd_weight=1000.0),
     dict(prompt_depth_vision=1, teacher_prompt_depth=2, temperature=2.0, kd_weight=1000.0)),
    ("tiny_custom_model", dict(n_ctx_vision=3, prompt_depth_vision=2, teacher_prompt_depth=1, n_ctx_text=2,
                               teacher_n_ctx_vision=2),
     dict(n_ctx_vision=3, prompt_depth_vision=2, teacher_prompt_depth=1, n_ctx_text=2, teacher_n_ctx_vision=2)),
]


@pytest.mark.parametrize("model_fixture,ref_cfg,cfg", CASES, ids=[str(i) for i in range(len(CASES))])
def test_promptkd_matches_reference(model_fixture, ref_cfg, cfg, teacher_model, request):
    learner, reference = _pair(request.getfixturevalue(model_fixture), teacher_model, ref_cfg,
                               dict(cfg, backend="eager"))
    images = _images()
    with torch.no_grad():
        _, tea_text, tea_logits = reference.model_teacher(images)
    assert_close_rel(learner.text_classifier(), tea_text, FP32.parity, "teacher class features")
    assert_close_rel(learner.teacher_logits(images), tea_logits, FP32.parity, "teacher logits")
    learner.train()
    reference.train()
    loss, ref_loss = learner.loss(images), reference.loss(images)
    assert_close_rel(loss, ref_loss, FP32.parity, "loss")
    pairs = _prompt_pairs(learner, reference)
    grads = torch.autograd.grad(loss, [p for p, _ in pairs])
    ref_grads = torch.autograd.grad(ref_loss, [r for _, r in pairs])
    largest = max(float(r.abs().max()) for r in ref_grads)
    for k, (g, r) in enumerate(zip(grads, ref_grads)):
        # the first convolution's bias feeds BatchNorm, which subtracts the batch mean: its gradient
        # is zero up to rounding on both sides, so it is compared against the largest gradient
        assert_close_rel(g, r, FP32.gradient_parity, f"grad {k}", atol=FP32.gradient_parity * largest)
    # BatchNorm in training mode: both updated their running statistics once, the same way
    bn, ref_bn = learner.projector.conv1[1], reference.VPT_image_trans.conv1[1]
    assert int(bn.num_batches_tracked) == int(ref_bn.num_batches_tracked) == 1
    assert_close_rel(bn.running_mean, ref_bn.running_mean, FP32.parity, "running mean")
    assert_close_rel(bn.running_var, ref_bn.running_var, FP32.parity, "running var")
    learner.eval()
    reference.eval()
    assert_close_rel(learner(images), reference(images), FP32.parity, "eval logits (running statistics)")


def test_base_to_novel_columns(tiny_model, teacher_model):
    """``test`` scores the first ceil(C/2) classes on val and the rest on test: the learner on those
    class lists gives the same logits (each class's teacher feature depends on that class only)."""
    cfg = dict(prompt_depth_vision=2, teacher_prompt_depth=2)
    learner, reference = _pair(tiny_model, teacher_model, cfg, dict(cfg, backend="eager"))
    learner.eval()
    reference.eval()
    images = _images(3)
    half = math.ceil(len(NAMES) / 2)
    learner.set_classnames(NAMES[:half])
    assert_close_rel(learner(images), reference(images, split="val"), FP32.parity, "base logits")
    learner.set_classnames(NAMES[half:])
    assert_close_rel(learner(images), reference(images, split="test"), FP32.parity, "new logits")


def test_labels_are_ignored_and_one_image_is_refused(tiny_model, teacher_model):
    learner = fastprompt.PromptKDLearner.from_model(tiny_model, NAMES, teacher=teacher_model, prompt_depth_vision=2,
                                                    teacher_prompt_depth=2)
    images = _images(3)
    base = learner.loss(images)
    assert_close_rel(learner.loss(images, torch.tensor([0, 1, 2])), base, FP32.rounding, "with labels")
    assert_close_rel(learner.loss(images, torch.tensor([6, 6, 6])), base, FP32.rounding, "other labels")
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        learner.loss(images[:1])  # BatchNorm's batch statistics, as in the original
    learner.eval()
    assert learner(images[:1]).shape == (1, len(NAMES))


def test_trainable_parameters_and_frozen_teacher(tiny_model, teacher_model):
    learner = fastprompt.PromptKDLearner.from_model(tiny_model, NAMES, teacher=teacher_model, prompt_depth_vision=2,
                                                    teacher_prompt_depth=2)
    names = [n for n, _ in learner.trainable_named_parameters()]
    assert names == ["vision_prompts.0", "vision_prompts.1", "projector.conv1.0.weight", "projector.conv1.0.bias",
                     "projector.conv1.1.weight", "projector.conv1.1.bias", "projector.conv1.3.weight",
                     "projector.conv1.3.bias"]
    assert tuple(learner.projector.conv1[0].weight.shape) == (56, 48, 1, 1)  # student E -> teacher E, from the models
    learner.train()
    assert learner.projector.training and not learner.teacher.training and not learner.clip.training
    with pytest.raises(ValueError, match="teacher"):
        fastprompt.PromptKDLearner.from_model(tiny_model, NAMES, prompt_depth_vision=2)


def test_checkpoint_round_trip_keeps_running_statistics(tiny_model, teacher_model, tmp_path):
    cfg = dict(prompt_depth_vision=2, teacher_prompt_depth=2)
    learner, _ = _pair(tiny_model, teacher_model, cfg, cfg)
    learner.train()
    learner.loss(_images())  # moves the running statistics
    learner.eval()
    images = _images(2)
    expected = learner(images)
    learner.save_pretrained(str(tmp_path))
    loaded = fastprompt.PromptKDLearner.from_pretrained(str(tmp_path), model=tiny_model, teacher=learner.teacher)
    loaded.eval()
    assert_close_rel(loaded(images), expected, FP32.rounding, "reloaded logits")
    assert "projector.conv1.1.running_mean" in loaded.prompt_state_dict()


def test_original_checkpoint_in_fp16(tiny_model, teacher_model):
    """The original saves its projection in fp16 (``convert_weights``): loaded, cast to fp32."""
    cfg = dict(prompt_depth_vision=2, teacher_prompt_depth=2)
    learner, reference = _pair(tiny_model, teacher_model, cfg, cfg)
    state = {k: (v.half() if k.startswith("VPT_image_trans.") and v.dim() == 4 else v)
             for k, v in _student_state(reference).items()}
    learner.load_original_state_dict({"state_dict": state, "epoch": 20})
    assert learner.projector.conv1[0].weight.dtype == torch.float32
    assert_close_rel(learner.projector.conv1[0].weight, reference.VPT_image_trans.conv1[0].weight.half().float(),
                     FP32.rounding, "fp16 conv weight")
    with pytest.raises(ValueError, match="unexpected"):
        learner.load_original_state_dict({**state, "prompt_learner.ctx": torch.zeros(4, 64)})


# ---- the run layer ---------------------------------------------------------------------------------
FAST = ["OPTIM.MAX_EPOCH", "1", "DATALOADER.TRAIN_X.BATCH_SIZE", "8", "DATALOADER.NUM_WORKERS", "0",
        "TRAIN.TENSORBOARD", "False", "TRAINER.PROMPTKD.PROMPT_DEPTH_VISION", "2",
        "TRAINER.PROMPTKD.TEACHER_NAME", "tiny", "TRAINER.PROMPTKD.TEACHER_PRETRAINED", "none",
        "TRAINER.PROMPTKD.TEACHER_PROMPT_DEPTH", "2", "TRAINER.PROMPTKD.KD_WEIGHT", "1000.0"]


@pytest.mark.parametrize("recipe", ["vit_b16_c2_ep20_batch8_4+4ctx", "vit_b16_c2_ep20_batch8_4+4ctx_cross_datasets"])
def test_recipe_trains_and_evaluates_through_the_cli(recipe, dtd_tree, tmp_path, capsys):
    import json

    from fastprompt.cli import main
    from fastprompt.train.config import load_recipe

    section = load_recipe(f"promptkd/{recipe}")["TRAINER"]["PROMPTKD"]
    assert section["TEACHER_NAME"] == "ViT-L/14" and section["PROMPT_DEPTH_VISION"] == (3 if "cross" in recipe else 9)
    out = tmp_path / "promptkd"
    assert main(["train", "--recipe", f"promptkd/{recipe}", "--data", dtd_tree, "--dataset", "dtd", "--output-dir",
                 str(out), "--model", "tiny", "--pretrained", "none", "--no-progress", *FAST]) == 0
    config = (out / "config.yaml").read_text()
    assert "METHOD: promptkd" in config and "KD_WEIGHT: 1000.0" in config
    assert json.loads((out / "eval.json").read_text())["total"] > 0
    saved = json.loads((out / "fastprompt_config.json").read_text())
    assert saved["method"] == "promptkd" and saved["config"]["teacher_model"] == "tiny"
    # the resumable state holds the projection's running statistics, which a step changes without a
    # gradient: a resumed run (and the best-on-val prompts) would otherwise carry stale ones
    from fastprompt.train.model_keys import TINY_CLIP_KWARGS

    state = torch.load(out / "state.pt", weights_only=True)["params"]
    learner = fastprompt.PromptKDLearner.from_pretrained(str(out), model=tiny_clip(1, **TINY_CLIP_KWARGS),
                                                         teacher=tiny_clip(2, **TINY_CLIP_KWARGS))
    for name, value in learner.prompt_state_dict().items():
        assert torch.equal(state[name], value), name


def test_the_teacher_checkpoint_is_loaded_by_the_run(dtd_tree, tmp_path):
    """TRAINER.PROMPTKD.TEACHER_CHECKPOINT: a PromptSRC save_pretrained directory (or an original checkpoint)."""
    from fastprompt.cli import main
    from fastprompt.train.build import build_teacher_model
    from fastprompt.train.model_keys import TINY_CLIP_KWARGS

    teacher = fastprompt.PromptSRCLearner.from_model(tiny_clip(2, **TINY_CLIP_KWARGS), ["a", "b"], prompt_depth_text=2,
                                                     prompt_depth_vision=2, templates=["{}"])
    perturb_trainable(teacher)
    teacher.save_pretrained(str(tmp_path / "teacher"))
    assert torch.equal(build_teacher_model(dict(teacher_model="tiny"), 1, torch.device("cpu")).logit_scale,
                       teacher.clip.logit_scale)  # SEED 1 -> the tiny teacher drawn from seed 2
    out = tmp_path / "run"
    assert main(["train", "--recipe", "promptkd/vit_b16_c2_ep20_batch8_4+4ctx", "--data", dtd_tree, "--dataset", "dtd",
                 "--output-dir", str(out), "--model", "tiny", "--pretrained", "none", "--no-progress", "--seed", "1",
                 *FAST, "TRAINER.PROMPTKD.TEACHER_CHECKPOINT", str(tmp_path / "teacher")]) == 0
    learner = fastprompt.PromptKDLearner.from_pretrained(str(out), model=tiny_clip(1, **TINY_CLIP_KWARGS),
                                                         teacher=tiny_clip(2, **TINY_CLIP_KWARGS))
    assert_close_rel(learner.teacher.ctx, teacher.ctx, FP32.rounding, "teacher context from the checkpoint")
