"""PromptSRC learner against the literal original code path (fastprompt.reference.ReferencePromptSRC)."""
import json
import re

import pytest
import torch
import torch.nn.functional as F

import fastprompt
from fastprompt.reference import ReferencePromptSRC
from fastprompt.templates import IMAGENET_TEMPLATES
from fastprompt.testing import (FP32, assert_close_rel, assert_gradient_flows, perturb_trainable,
                                random_images, tiny_clip)

TEMPLATES = ["a photo of a {}.", "a bad photo of the {}.", "art of the {}.", "itap of a {}."]


@pytest.fixture(scope="module")
def three_layer_model():
    return tiny_clip(seed=2, layers=3, vision_layers=3)


def original_name(name):
    """fastprompt parameter name -> the original checkpoint's name (written out independently of the learner)."""
    if name == "ctx":
        return "prompt_learner.ctx"
    kind, index = re.fullmatch(r"(deep_text_prompts|vision_prompts)\.(\d+)", name).groups()
    if kind == "deep_text_prompts":
        return f"text_encoder.transformer.resblocks.{int(index) + 1}.VPT_shallow"
    return "image_encoder.VPT" if index == "0" else f"image_encoder.transformer.resblocks.{index}.VPT_shallow"


def _reference_params(learner, reference):
    named = dict(reference.named_parameters())
    return [named[original_name(n)] for n, _ in learner.trainable_named_parameters()]


def _build(model, classnames, **cfg):
    torch.manual_seed(0)
    reference = ReferencePromptSRC(model, classnames, **cfg)
    perturb_trainable(reference)
    learner = fastprompt.PromptSRCLearner.from_model(model, classnames, **cfg)
    learner.load_original_state_dict(reference.state_dict())  # whole model: frozen and zero-shot weights dropped
    return learner, reference


def compare_step(learner, reference, images, labels, rtol=FP32.parity, check_logits=True):
    if check_logits:  # (skipped on ViT-B-16 to save a pass: the loss terms below depend on the logits)
        assert_close_rel(learner(images), reference(images), rtol, "logits")
    terms, ref_terms = learner.loss_terms(images, labels), reference.loss_terms(images, labels)
    assert set(terms) == set(ref_terms) == {"ce", "text", "image", "kl", "total"}
    assert_close_rel(terms["total"], ref_terms["total"], rtol, "loss")
    # A small term (the KL is a sum of near-cancelling differences) is held to rtol of the whole
    # objective: its own relative error amplifies the ~1e-6 rounding differences of the logits.
    for key in ("ce", "text", "image", "kl"):
        assert_close_rel(terms[key], ref_terms[key], rtol, f"loss term {key}",
                         atol=rtol * float(ref_terms["total"].detach().abs()))
    names = [n for n, _ in learner.trainable_named_parameters()]
    grads = torch.autograd.grad(terms["total"], learner.trainable_parameters())
    ref_grads = torch.autograd.grad(ref_terms["total"], _reference_params(learner, reference))
    for name, g, r in zip(names, grads, ref_grads):
        assert_close_rel(g, r, FP32.gradient_parity, f"grad {name}")
        assert_gradient_flows(g, f"grad {name}")


CASES = [
    ("tiny_model", dict(prompt_depth_text=2, prompt_depth_vision=2)),
    ("tiny_model", dict(prompt_depth_text=1, prompt_depth_vision=1, n_ctx_text=2, n_ctx_vision=3)),
    ("tiny_model", dict(prompt_depth_text=2, prompt_depth_vision=0)),
    ("tiny_model", dict(prompt_depth_text=2, prompt_depth_vision=2, n_ctx_text=3, ctx_init="")),
    ("tiny_custom_model", dict(prompt_depth_text=2, prompt_depth_vision=2)),
    ("tiny_custom_model", dict(prompt_depth_text=1, prompt_depth_vision=2, n_ctx_vision=1)),
    ("three_layer_model", dict(prompt_depth_text=2, prompt_depth_vision=3)),
    ("three_layer_model", dict(prompt_depth_text=3, prompt_depth_vision=2, text_loss_weight=3.0,
                               image_loss_weight=0.5)),
]


@pytest.mark.parametrize("model_fixture,cfg", CASES, ids=[f"{m}-{','.join(f'{k}={v}' for k, v in c.items())}"
                                                          for m, c in CASES])
def test_promptsrc_matches_reference(model_fixture, cfg, classnames, request):
    model = request.getfixturevalue(model_fixture)
    learner, reference = _build(model, classnames, templates=TEMPLATES, **cfg)
    assert_close_rel(learner.zs_text_features, reference.prompt_learner.fixed_embeddings, FP32.parity,
                     "frozen text targets")
    compare_step(learner, reference, random_images(3), torch.tensor([0, 3, 7]))


def test_frozen_text_targets_average_unnormalised_features_over_the_60_templates(tiny_model, classnames):
    learner = fastprompt.PromptSRCLearner.from_model(tiny_model, classnames, prompt_depth_text=2,
                                                     prompt_depth_vision=2)
    assert len(learner.templates) == 60 and learner.templates == IMAGENET_TEMPLATES
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer()
    names = [c.replace("_", " ") for c in classnames]
    with torch.no_grad():
        per_template = torch.stack([tiny_model.encode_text(tok([t.format(n) for n in names]))
                                    for t in IMAGENET_TEMPLATES])
    assert_close_rel(learner.zs_text_features, per_template.mean(0), FP32.parity, "mean of unnormalised features")
    mean_of_normalised = F.normalize(F.normalize(per_template, dim=-1).mean(0), dim=-1)
    assert (learner.frozen_text_features() - mean_of_normalised).abs().max() > 1e-4  # the two are different targets
    reference = ReferencePromptSRC(tiny_model, classnames, prompt_depth_text=2, prompt_depth_vision=2)  # literal, 60
    assert_close_rel(learner.zs_text_features, reference.prompt_learner.fixed_embeddings, FP32.parity,
                     "literal targets")


def test_kl_is_zero_shot_to_prompted_divided_by_numel(tiny_model, classnames):
    learner, _ = _build(tiny_model, classnames, templates=TEMPLATES, prompt_depth_text=2, prompt_depth_vision=2)
    images, labels = random_images(3), torch.tensor([0, 1, 2])
    with torch.no_grad():
        terms = learner.loss_terms(images, labels)
        logits = learner(images)
        zs = learner.logit_scale * learner.encode_image(images) @ learner.frozen_text_features().t()
        p_zs, p = zs.softmax(-1), logits.softmax(-1)
        kl = (p_zs * (p_zs.log() - p.log())).sum() / logits.numel()
    assert_close_rel(terms["kl"], kl, FP32.parity, "KL(zero-shot || prompted) / (B * C)")
    assert_close_rel(terms["total"], terms["ce"] + terms["kl"] + terms["text"] + terms["image"], FP32.rounding, "total")


def test_load_original_state_dict_names(tiny_model, classnames):
    learner, reference = _build(tiny_model, classnames, templates=TEMPLATES, prompt_depth_text=2,
                                prompt_depth_vision=2)
    state = reference.state_dict()
    assert "prompt_learner.ZS_image_encoder.conv1.weight" in state  # frozen copies travel with the checkpoint
    for name, p in learner.trainable_named_parameters():
        assert torch.equal(p.detach(), state[original_name(name)]), name
    fp16 = {k: v.half() for k, v in state.items()}
    learner.load_original_state_dict(fp16)
    assert learner.vision_prompts[1].dtype == torch.float32
    with pytest.raises(ValueError, match=r"unexpected.*vision_prompts\.5"):
        extra = {"image_encoder.transformer.resblocks.5.VPT_shallow": torch.zeros(4, 96)}
        learner.load_original_state_dict({**state, **extra})


def test_save_and_load_pretrained_round_trip(tiny_model, classnames, tmp_path):
    learner = fastprompt.PromptSRCLearner.from_model(tiny_model, classnames, prompt_depth_text=2,
                                                     prompt_depth_vision=2, templates=TEMPLATES)
    perturb_trainable(learner)
    learner.save_pretrained(tmp_path / "src")
    config = json.loads((tmp_path / "src" / "fastprompt_config.json").read_text())
    assert config["method"] == "promptsrc" and config["config"]["templates"] == TEMPLATES
    loaded = fastprompt.PromptSRCLearner.from_pretrained(tmp_path / "src", model=tiny_model)
    images, labels = random_images(2), torch.tensor([0, 5])
    assert torch.equal(loaded(images), learner(images))
    assert torch.equal(loaded.loss(images, labels), learner.loss(images, labels))


def test_set_classnames_recomputes_targets_and_keeps_prompts(tiny_model, classnames):
    learner, _ = _build(tiny_model, classnames, templates=TEMPLATES, prompt_depth_text=2, prompt_depth_vision=2)
    before = {n: p.detach().clone() for n, p in learner.trainable_named_parameters()}
    new = ["cat", "tabby_cat", "airplane"]
    learner.set_classnames(new)
    assert all(torch.equal(p, before[n]) for n, p in learner.trainable_named_parameters())
    assert learner.zs_text_features.shape[0] == 3
    reference = ReferencePromptSRC(tiny_model, new, templates=TEMPLATES, prompt_depth_text=2, prompt_depth_vision=2)
    reference.load_state_dict({original_name(n): p for n, p in before.items()}, strict=False)
    compare_step(learner, reference, random_images(2), torch.tensor([2, 0]))


@pytest.mark.parametrize("cfg,argument", [
    (dict(prompt_depth_text=0), "prompt_depth_text"),
    (dict(prompt_depth_text=3, prompt_depth_vision=2), "prompt_depth_text"),
    (dict(prompt_depth_text=2, prompt_depth_vision=3), "prompt_depth_vision"),
    (dict(prompt_depth_vision=-1), "prompt_depth_vision"),
    (dict(n_ctx_vision=0), "n_ctx_vision"),
    (dict(n_ctx_text=0), "n_ctx_text"),
    (dict(text_loss_weight=-1.0), "text_loss_weight"),
    (dict(templates=["a photo of a dog."]), r"templates\[0\]"),
    (dict(templates=[]), "templates"),
    (dict(gpa_std=0.0), "gpa_std"),
    (dict(prompt_depth_text=2, prompt_depth_vision=2, n_ctx_text=4, ctx_init="a dog"), "ctx_init"),
])
def test_bad_config_is_a_clear_error(tiny_model, classnames, cfg, argument):
    with pytest.raises(ValueError, match=argument):
        fastprompt.PromptSRCLearner.from_model(tiny_model, classnames, **cfg)


@pytest.mark.slow
def test_vit_b16_promptsrc_matches_reference(vit_b16):
    names = ["goldfish", "great white shark", "tiger shark"]
    learner, reference = _build(vit_b16, names, templates=TEMPLATES[:2])  # depth 9 + 9, 4 + 4 tokens
    compare_step(learner, reference, random_images(1, size=224), torch.tensor([2]), check_logits=False)
