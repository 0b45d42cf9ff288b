"""MaPLe learner against the literal original code path (fastprompt.reference.ReferenceMaPLe)."""
import json

import pytest
import torch
import torch.nn.functional as F

import fastprompt
from fastprompt.learners.prompts import leading_context_template
from fastprompt.reference import ReferenceMaPLe
from fastprompt.testing import (FP32, assert_close_rel, assert_gradient_flows, perturb_trainable,
                                random_images, tiny_clip)


@pytest.fixture(scope="module")
def three_layer_model():
    """Both towers 3 layers deep, so a depth-2 prompt is replaced once and then propagates."""
    return tiny_clip(seed=2, layers=3, vision_layers=3)


@pytest.fixture(scope="module")
def three_layer_custom_model():
    return tiny_clip(seed=4, layers=3, vision_layers=3, custom_blocks=True)


def _reference_params(learner, reference):
    state = reference.prompt_learner.state_dict(keep_vars=True)
    return [state[name] for name, _ in learner.trainable_named_parameters()]


def compare_step(learner, reference, images, labels, rtol=FP32.parity, single_pass=False):
    """Logits, loss and every prompt gradient; ``single_pass`` (ViT-B-16): the loss is the CE of the
    compared logits, so each side runs its towers once."""
    logits, ref_logits = learner(images), reference(images)
    assert_close_rel(logits, ref_logits, rtol, "logits")
    if single_pass:
        loss, ref_loss = F.cross_entropy(logits, labels), F.cross_entropy(ref_logits, labels)
    else:
        loss, ref_loss = learner.loss(images, labels), reference.loss(images, labels)
    assert_close_rel(loss, ref_loss, rtol, "loss")
    names = [n for n, _ in learner.trainable_named_parameters()]
    grads = torch.autograd.grad(loss, learner.trainable_parameters())
    ref_grads = torch.autograd.grad(ref_loss, _reference_params(learner, reference))
    for name, g, r in zip(names, grads, ref_grads):
        assert_close_rel(g, r, FP32.gradient_parity, f"grad {name}")
        assert_gradient_flows(g, f"grad {name}")


CASES = [
    ("tiny_model", dict(prompt_depth=1)),
    ("tiny_model", dict(prompt_depth=2)),
    ("tiny_model", dict(prompt_depth=2, n_ctx=4)),
    ("tiny_model", dict(prompt_depth=2, n_ctx=1, ctx_init="itap of a")),  # "itap" is two BPE tokens
    ("tiny_model", dict(prompt_depth=2, n_ctx=3, ctx_init="")),
    ("tiny_custom_model", dict(prompt_depth=2)),
    ("tiny_custom_model", dict(prompt_depth=1, n_ctx=3)),
    ("three_layer_model", dict(prompt_depth=2)),
    ("three_layer_model", dict(prompt_depth=3)),
    ("three_layer_custom_model", dict(prompt_depth=2)),
]


@pytest.mark.parametrize("model_fixture,cfg", CASES, ids=[f"{m}-{','.join(f'{k}={v}' for k, v in c.items())}"
                                                          for m, c in CASES])
def test_maple_matches_reference(model_fixture, cfg, classnames, request):
    model = request.getfixturevalue(model_fixture)
    torch.manual_seed(0)
    reference = ReferenceMaPLe(model, classnames, **cfg)
    torch.manual_seed(0)
    learner = fastprompt.MaPLeLearner.from_model(model, classnames, **cfg)
    # Same creation order as the original: identical initial prompts and couplings under one seed.
    for (name, p), r in zip(learner.trainable_named_parameters(), _reference_params(learner, reference)):
        assert torch.equal(p, r), name
    perturb_trainable(reference.prompt_learner)
    learner.load_original_state_dict(reference.state_dict())  # the whole CustomCLIP, as Dassl saves it
    compare_step(learner, reference, random_images(3), torch.tensor([0, 3, 7]))


def test_random_context_when_n_ctx_exceeds_four(tiny_model, classnames):
    with pytest.warns(UserWarning, match="ctx_init is ignored"):
        learner = fastprompt.MaPLeLearner.from_model(tiny_model, classnames, n_ctx=5, prompt_depth=2)
    assert learner.template.text == "X X X X X" and learner.template.init_ids is None
    torch.manual_seed(0)
    reference = ReferenceMaPLe(tiny_model, classnames, n_ctx=5, prompt_depth=2)
    perturb_trainable(reference.prompt_learner)
    learner.load_original_state_dict(reference.state_dict())
    compare_step(learner, reference, random_images(2), torch.tensor([1, 2]))


def test_ctx_init_quirk_keeps_the_remaining_words_frozen(tiny_model, classnames):
    """n_ctx=2 with "a photo of a": "a photo" is learnable, "of a" stays in the prompt as frozen tokens."""
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer()
    learner = fastprompt.MaPLeLearner.from_model(tiny_model, classnames, prompt_depth=2)
    a, photo, of = tok.encode("a photo of")
    assert torch.equal(learner.ctx.detach(), tiny_model.token_embedding.weight[[a, photo]])
    plan = learner.plan
    sources = torch.cat([plan.prefix_src, plan.suffix_src[:int(plan.seqlens[0])]]).tolist()
    assert sources[:5] == [49406, -1, -2, of, a]  # SOT, two context slots, then the frozen "of a"
    assert sources[5:] == tok.encode("red circle.") + [49407]
    reference = ReferenceMaPLe(tiny_model, classnames, prompt_depth=2)
    assert reference.prompt_learner.prompt_texts[0] == "a photo of a red circle."


def test_couplings_start_identical(tiny_model, classnames):
    learner = fastprompt.MaPLeLearner.from_model(tiny_model, classnames, prompt_depth=2, n_ctx=2)
    three = fastprompt.MaPLeLearner.from_model(tiny_clip(seed=5, layers=4, vision_layers=4), classnames,
                                               prompt_depth=4)
    first = three.compound_prompt_projections[0]
    for layer in three.compound_prompt_projections[1:]:
        assert torch.equal(layer.weight, first.weight) and torch.equal(layer.bias, first.bias)
    assert not torch.equal(three.proj.weight, first.weight)
    assert learner.proj.weight.shape == (tiny_model.visual.conv1.out_channels, tiny_model.ln_final.weight.shape[0])


def test_vision_prompts_are_the_coupled_text_prompts(tiny_model, classnames):
    learner = fastprompt.MaPLeLearner.from_model(tiny_model, classnames, prompt_depth=2)
    vision = learner.vision_prompts()
    assert len(vision) == 2
    assert_close_rel(vision[0], learner.proj(learner.ctx), 0.0, "layer-0 vision prompt")
    assert_close_rel(vision[1], learner.compound_prompt_projections[0](learner.compound_prompts_text[0]), 0.0,
                     "layer-1 vision prompt")


def test_load_original_prompt_learner_keys(tiny_model, classnames):
    """The prompt learner's own state dict (fp16, DataParallel prefix) loads too; bad keys are named."""
    torch.manual_seed(0)
    reference = ReferenceMaPLe(tiny_model, classnames, prompt_depth=2)
    perturb_trainable(reference.prompt_learner)
    state = {"module." + k: v.half() for k, v in reference.prompt_learner.state_dict().items()}
    assert {k.split(".")[1] for k in state} == {"ctx", "proj", "compound_prompts_text", "compound_prompt_projections",
                                                "token_prefix", "token_suffix"}
    learner = fastprompt.MaPLeLearner.from_model(tiny_model, classnames, prompt_depth=2)
    learner.load_original_state_dict(state)
    assert learner.ctx.dtype == torch.float32
    expected = reference.prompt_learner.compound_prompts_text[0].half().float()
    assert torch.equal(learner.compound_prompts_text[0].detach(), expected)
    with pytest.raises(ValueError, match="unexpected.*compound_prompts_text.1"):
        learner.load_original_state_dict({**state, "compound_prompts_text.1": torch.zeros(2, 64)})
    with pytest.raises(ValueError, match="missing.*ctx"):
        learner.load_original_state_dict({k: v for k, v in state.items() if not k.endswith(".ctx")})


def test_save_and_load_pretrained_round_trip(tiny_model, classnames, tmp_path):
    learner = fastprompt.MaPLeLearner.from_model(tiny_model, classnames, prompt_depth=2, n_ctx=3)
    perturb_trainable(learner)
    learner.save_pretrained(tmp_path / "maple")
    config = json.loads((tmp_path / "maple" / "fastprompt_config.json").read_text())
    assert config["method"] == "maple" and config["config"]["prompt_depth"] == 2
    loaded = fastprompt.PromptLearner.from_pretrained(tmp_path / "maple", model=tiny_model)
    assert type(loaded) is fastprompt.MaPLeLearner
    images = random_images(2)
    assert torch.equal(loaded(images), learner(images))


def test_set_classnames_keeps_prompts(tiny_model, classnames):
    learner = fastprompt.MaPLeLearner.from_model(tiny_model, classnames, prompt_depth=2)
    perturb_trainable(learner)
    before = {n: p.detach().clone() for n, p in learner.trainable_named_parameters()}
    new = ["cat", "tabby_cat", "airplane"]
    learner.set_classnames(new)
    assert all(torch.equal(p, before[n]) for n, p in learner.trainable_named_parameters())
    reference = ReferenceMaPLe(tiny_model, new, prompt_depth=2)
    learner_state = {"prompt_learner." + n: p for n, p in before.items()}
    reference.load_state_dict(learner_state, strict=False)
    images = random_images(2)
    assert_close_rel(learner(images), reference(images), FP32.parity, "logits after set_classnames")
    assert learner.text_classifier().shape == (3, tiny_model.text_projection.shape[1])


@pytest.mark.parametrize("cfg,argument", [
    (dict(prompt_depth=0), "prompt_depth"),
    (dict(prompt_depth=3), "prompt_depth"),   # the tiny towers have 2 layers
    (dict(n_ctx=0, prompt_depth=2), "n_ctx"),
    (dict(n_ctx=3, ctx_init="a dog", prompt_depth=2), "ctx_init"),  # fewer tokens than context vectors
    (dict(n_ctx=2, ctx_init=" ".join(["a"] * 74), prompt_depth=2), "ctx_init"),  # no room left for the class name
    (dict(init_std=0.0, prompt_depth=2), "init_std"),
    (dict(backend="warp", prompt_depth=2), "backend"),
])
def test_bad_config_is_a_clear_error(tiny_model, classnames, cfg, argument):
    with pytest.raises(ValueError, match=argument):
        fastprompt.MaPLeLearner.from_model(tiny_model, classnames, **cfg)


def test_leading_context_template_rules():
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer()
    t = leading_context_template(tok, 2, "a_photo of a")
    assert (t.text, t.n_ctx) == ("a photo of a", 2) and t.init_ids is not None
    assert leading_context_template(tok, 5, "a photo of a").init_ids is None  # > 4: the phrase is ignored
    assert leading_context_template(tok, 3, "").text == "X X X"
    with pytest.raises(ValueError, match="n_ctx"):
        leading_context_template(tok, 0, "a photo")


@pytest.mark.slow
def test_vit_b16_maple_matches_reference(vit_b16):
    names = ["goldfish", "great white shark", "tiger shark", "hammerhead shark"]
    torch.manual_seed(0)
    reference = ReferenceMaPLe(vit_b16, names)  # n_ctx 2, depth 9
    learner = fastprompt.MaPLeLearner.from_model(vit_b16, names)
    perturb_trainable(reference.prompt_learner)
    learner.load_original_state_dict(reference.state_dict())
    compare_step(learner, reference, random_images(1, size=224), torch.tensor([3]), single_pass=True)
