"""KgCoOp learner against the literal original code path (fastprompt.reference.ReferenceKgCoOp)."""
import json

import pytest
import torch
import torch.nn.functional as F

import fastprompt
from fastprompt.reference import ReferenceKgCoOp
from fastprompt.testing import FP32, assert_close_rel, random_images


def _perturb(t, seed=1):
    with torch.no_grad():
        t.add_(0.05 * torch.randn(t.shape, generator=torch.Generator().manual_seed(seed)))


def compare_step(learner, reference, images, labels, rtol=FP32.parity, single_pass=False):
    """``single_pass`` (ViT-B-16): one image-tower pass per side; the objective is rebuilt from
    ``forward_with_score`` exactly as ``reference.loss`` does."""
    terms = learner.loss_terms(images, labels)
    ref_logits, score = reference.forward_with_score(images)
    assert_close_rel(terms["consistency"], score, rtol, "consistency score")
    assert_close_rel(terms["ce"], F.cross_entropy(ref_logits, labels), rtol, "cross entropy")
    if single_pass:
        ref_loss = F.cross_entropy(ref_logits, labels) + reference.w * score
    else:
        assert_close_rel(learner(images), ref_logits, rtol, "logits")
        ref_loss = reference.loss(images, labels)
        assert_close_rel(learner.loss(images, labels), ref_loss, rtol, "loss()")
    assert_close_rel(terms["total"], ref_loss, rtol, "loss")
    (g,) = torch.autograd.grad(terms["total"], [learner.ctx])
    (r,) = torch.autograd.grad(ref_loss, [reference.prompt_learner.ctx])
    assert_close_rel(g, r, FP32.gradient_parity, "grad ctx")


CASES = [
    ("tiny_model", dict(), dict()),
    ("tiny_model", dict(ctx_init="", n_ctx=3), dict(ctx_init=False, n_ctx=3)),
    ("tiny_model", dict(ctx_init="", n_ctx=2, csc=True), dict(ctx_init=False, n_ctx=2, csc=True)),
    ("tiny_model", dict(template="EuroSAT", w=2.0), dict(template="a centered satellite photo of {}.", w=2.0)),
    ("tiny_custom_model", dict(), dict()),
    ("tiny_custom_model", dict(template="UCF101"), dict(template="a photo of a person doing {}.")),
]


@pytest.mark.parametrize("model_fixture,cfg,ref_cfg", CASES, ids=[f"{m}-{c}" for m, c, _ in CASES])
def test_kgcoop_matches_reference(model_fixture, cfg, ref_cfg, classnames, request):
    model = request.getfixturevalue(model_fixture)
    torch.manual_seed(0)
    reference = ReferenceKgCoOp(model, classnames, **ref_cfg)
    _perturb(reference.prompt_learner.ctx)
    learner = fastprompt.KgCoOpLearner.from_model(model, classnames, **cfg)
    learner.load_original_state_dict(reference.prompt_learner.state_dict())  # incl. bias_vectors, meta_net
    assert_close_rel(learner.clip_text_features, reference.prompt_learner.text_features, FP32.parity,
                     "hand-crafted features")
    compare_step(learner, reference, random_images(3), torch.tensor([0, 3, 7]))


def test_consistency_is_half_the_mean_squared_distance(tiny_model, classnames):
    learner = fastprompt.KgCoOpLearner.from_model(tiny_model, classnames)
    _perturb(learner.ctx)
    terms = learner.loss_terms(random_images(2), torch.tensor([0, 1]))
    with torch.no_grad():
        text = F.normalize(learner.text_features(), dim=-1)
        half_sq = 0.5 * (text - learner.clip_text_features).square().sum(-1).mean()
    assert_close_rel(terms["consistency"], half_sq, 1e-4, "1 - cos = |a - b|^2 / 2 for unit vectors")
    assert_close_rel(terms["total"], terms["ce"] + 8.0 * terms["consistency"], FP32.rounding, "total")


def test_only_ctx_is_trained_and_original_leftovers_are_ignored(tiny_model, classnames):
    reference = ReferenceKgCoOp(tiny_model, classnames)
    state = {"prompt_learner." + k: v for k, v in reference.prompt_learner.state_dict().items()}
    assert {"prompt_learner.bias_vectors", "prompt_learner.meta_net.linear1.weight"} <= set(state)
    learner = fastprompt.KgCoOpLearner.from_model(tiny_model, classnames)
    learner.load_original_state_dict(state)
    assert [n for n, _ in learner.trainable_named_parameters()] == ["ctx"]
    with pytest.raises(ValueError, match="unexpected.*adapter"):
        learner.load_original_state_dict({**state, "adapter.fc.0.weight": torch.zeros(1)})


def test_save_load_and_set_classnames(tiny_model, classnames, tmp_path):
    learner = fastprompt.KgCoOpLearner.from_model(tiny_model, classnames, template="OxfordPets")
    _perturb(learner.ctx)
    learner.save_pretrained(tmp_path / "kg")
    config = json.loads((tmp_path / "kg" / "fastprompt_config.json").read_text())
    assert config["method"] == "kgcoop" and config["config"]["template"] == "OxfordPets"
    loaded = fastprompt.PromptLearner.from_pretrained(tmp_path / "kg", model=tiny_model)
    assert type(loaded) is fastprompt.KgCoOpLearner
    images = random_images(2)
    assert torch.equal(loaded(images), learner(images))
    new = ["cat", "tabby_cat", "airplane"]
    loaded.set_classnames(new)
    assert loaded.clip_text_features.shape[0] == 3
    reference = ReferenceKgCoOp(tiny_model, new, template="a photo of a {}, a type of pet.")
    with torch.no_grad():
        reference.prompt_learner.ctx.copy_(learner.ctx)
    compare_step(loaded, reference, images, torch.tensor([0, 2]))


@pytest.mark.parametrize("cfg,argument", [
    (dict(class_token_position="middle"), "class_token_position"),
    (dict(w=-1.0), "w must"),
    (dict(template="a photo of a dog"), "template"),
    (dict(ctx_init="", n_ctx=0), "n_ctx"),
])
def test_bad_config_is_a_clear_error(tiny_model, classnames, cfg, argument):
    with pytest.raises(ValueError, match=argument):
        fastprompt.KgCoOpLearner.from_model(tiny_model, classnames, **cfg)


@pytest.mark.slow
def test_vit_b16_kgcoop_matches_reference(vit_b16):
    names = ["goldfish", "great white shark", "tiger shark", "hammerhead shark"]
    reference = ReferenceKgCoOp(vit_b16, names)
    _perturb(reference.prompt_learner.ctx)
    learner = fastprompt.KgCoOpLearner.from_model(vit_b16, names)
    learner.load_original_state_dict(reference.prompt_learner.state_dict())
    compare_step(learner, reference, random_images(1, size=224), torch.tensor([3]), single_pass=True)
