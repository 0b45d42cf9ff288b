"""VPT-deep learner against the literal original code path (fastprompt.reference.ReferenceVPT)."""
import json

import pytest
import torch
import torch.nn.functional as F

import fastprompt
from fastprompt.reference import ReferenceVPT
from fastprompt.testing import FP32, assert_close_rel, assert_gradient_flows, random_images, tiny_clip


@pytest.fixture(scope="module")
def three_layer_model():
    return tiny_clip(seed=2, layers=3, vision_layers=3)


def original_name(name):
    index = int(name.split(".")[1])
    return "image_encoder.VPT" if index == 0 else f"image_encoder.transformer.resblocks.{index}.VPT_shallow"


def _build(model, classnames, **cfg):
    torch.manual_seed(0)
    reference = ReferenceVPT(model, classnames, **cfg)
    learner = fastprompt.VPTLearner.from_model(model, classnames, **cfg)
    learner.load_original_state_dict(reference.state_dict())
    return learner, reference


def compare_step(learner, reference, images, labels, rtol=FP32.parity, single_pass=False):
    """``single_pass`` (ViT-B-16): the loss is the CE of the compared logits (one tower pass per side)."""
    logits, ref_logits = learner(images), reference(images)
    assert_close_rel(logits, ref_logits, rtol, "logits")
    if single_pass:
        loss, ref_loss = F.cross_entropy(logits, labels), F.cross_entropy(ref_logits, labels)
    else:
        loss, ref_loss = learner.loss(images, labels), reference.loss(images, labels)
    assert_close_rel(loss, ref_loss, rtol, "loss")
    named = dict(reference.named_parameters())
    names = [n for n, _ in learner.trainable_named_parameters()]
    grads = torch.autograd.grad(loss, learner.trainable_parameters())
    ref_grads = torch.autograd.grad(ref_loss, [named[original_name(n)] for n in names])
    for name, g, r in zip(names, grads, ref_grads):
        assert_close_rel(g, r, FP32.gradient_parity, f"grad {name}")
        assert_gradient_flows(g, f"grad {name}")


CASES = [
    ("tiny_model", dict(n_ctx=3, prompt_depth=1)),
    ("tiny_model", dict(n_ctx=4, prompt_depth=2)),
    ("tiny_custom_model", dict(n_ctx=2, prompt_depth=2)),
    ("three_layer_model", dict(n_ctx=8, prompt_depth=2)),   # replaced at layer 1, propagated through layer 2
    ("three_layer_model", dict(n_ctx=1, prompt_depth=3)),
]


@pytest.mark.parametrize("model_fixture,cfg", CASES, ids=[f"{m}-{','.join(f'{k}={v}' for k, v in c.items())}"
                                                          for m, c in CASES])
def test_vpt_matches_reference(model_fixture, cfg, classnames, request):
    model = request.getfixturevalue(model_fixture)
    learner, reference = _build(model, classnames, **cfg)
    assert_close_rel(learner.fixed_text_features, reference.fixed_embeddings, FP32.parity, "fixed text features")
    compare_step(learner, reference, random_images(3), torch.tensor([0, 3, 7]))


def test_text_side_is_frozen_and_prompts_only_touch_vision(tiny_model, classnames):
    learner, _ = _build(tiny_model, classnames, n_ctx=2, prompt_depth=2)
    assert [n for n, _ in learner.trainable_named_parameters()] == ["vision_prompts.0", "vision_prompts.1"]
    assert not learner.fixed_text_features.requires_grad
    assert [tuple(p.shape) for p in learner.trainable_parameters()] == [(2, 96), (2, 96)]
    w = learner.text_classifier()
    assert_close_rel(w.norm(dim=-1), torch.ones(len(classnames)), FP32.rounding, "unit rows")


def test_load_original_state_dict_names(tiny_model, classnames):
    learner, reference = _build(tiny_model, classnames, n_ctx=2, prompt_depth=2)
    state = reference.state_dict()
    for name, p in learner.trainable_named_parameters():
        assert torch.equal(p.detach(), state[original_name(name)]), name
    with pytest.raises(ValueError, match="missing"):
        learner.load_original_state_dict({"image_encoder.VPT": state["image_encoder.VPT"]})


def test_save_load_and_set_classnames(tiny_model, classnames, tmp_path):
    learner, _ = _build(tiny_model, classnames, n_ctx=2, prompt_depth=2)
    learner.save_pretrained(tmp_path / "vpt")
    assert json.loads((tmp_path / "vpt" / "fastprompt_config.json").read_text())["method"] == "vpt"
    loaded = fastprompt.VPTLearner.from_pretrained(tmp_path / "vpt", model=tiny_model)
    images = random_images(2)
    assert torch.equal(loaded(images), learner(images))
    new = ["cat", "tabby_cat", "airplane"]
    loaded.set_classnames(new)
    torch.manual_seed(0)
    reference = ReferenceVPT(tiny_model, new, n_ctx=2, prompt_depth=2)
    reference.load_state_dict({original_name(n): p for n, p in learner.trainable_named_parameters()}, strict=False)
    compare_step(loaded, reference, images, torch.tensor([2, 1]))


@pytest.mark.parametrize("cfg,argument", [
    (dict(prompt_depth=0), "prompt_depth"),
    (dict(prompt_depth=3), "prompt_depth"),
    (dict(n_ctx=0, prompt_depth=2), "n_ctx"),
    (dict(template="a photo", prompt_depth=2), "template"),
    (dict(template="NotADataset", prompt_depth=2), "template"),
])
def test_bad_config_is_a_clear_error(tiny_model, classnames, cfg, argument):
    with pytest.raises(ValueError, match=argument):
        fastprompt.VPTLearner.from_model(tiny_model, classnames, **cfg)


def test_dataset_template(tiny_model, classnames):
    from open_clip.tokenizer import SimpleTokenizer

    learner = fastprompt.VPTLearner.from_model(tiny_model, classnames, n_ctx=2, prompt_depth=1, template="EuroSAT")
    ids = SimpleTokenizer()([f"a centered satellite photo of {c.replace('_', ' ')}." for c in classnames])
    with torch.no_grad():
        assert_close_rel(learner.fixed_text_features, tiny_model.encode_text(ids), FP32.parity,
                         "EuroSAT template features")


@pytest.mark.slow
def test_vit_b16_vpt_matches_reference(vit_b16):
    names = ["goldfish", "great white shark", "tiger shark"]
    learner, reference = _build(vit_b16, names)  # 8 tokens, depth 12
    compare_step(learner, reference, random_images(1, size=224), torch.tensor([1]), single_pass=True)


@pytest.mark.parametrize("model_fixture", ["tiny_model", "tiny_custom_model", "three_layer_model"])
def test_reference_deep_encoders_agree_with_independent_literal_paths(model_fixture, request):
    """The MaPLe/IVLP reference encoders against open_clip itself and reference_encode_image_deep."""
    from open_clip.tokenizer import SimpleTokenizer

    from fastprompt.reference import reference_encode_image_deep
    from fastprompt.reference.deep import (ReferenceIVLPImageEncoder, ReferenceIVLPTextEncoder,
                                           ReferenceMaPLeImageEncoder, ReferenceMaPLeTextEncoder)

    model = request.getfixturevalue(model_fixture)
    layers = len(model.visual.transformer.resblocks)
    images = random_images(2)
    ids = SimpleTokenizer()(["a photo of a dog.", "itap of a sea lion."])
    with torch.no_grad():
        embeds = model.token_embedding(ids)
        plain_text = model.encode_text(ids)
        assert_close_rel(ReferenceMaPLeTextEncoder(model, 2)(embeds, ids, []), plain_text, FP32.rounding,
                         "MaPLe text, no prompts")
        assert_close_rel(ReferenceIVLPTextEncoder(model, 2, 0)(embeds, ids), plain_text, FP32.rounding,
                         "IVLP text, depth 0")
        assert_close_rel(ReferenceIVLPImageEncoder(model.visual, 3, 0)(images), model.encode_image(images),
                         FP32.rounding, "IVLP image, depth 0")
        ivlp = ReferenceIVLPImageEncoder(model.visual, 3, layers)
        prompts = [ivlp.VPT] + [b.VPT_shallow for b in ivlp.transformer.resblocks[1:]]
        expected = reference_encode_image_deep(model.visual, images, prompts)
        assert_close_rel(ivlp(images), expected, FP32.rounding, "IVLP image, all layers prompted")
        maple = ReferenceMaPLeImageEncoder(model.visual, 3)
        assert_close_rel(maple(images, prompts[0], prompts[1:]), expected, FP32.rounding, "MaPLe image")
