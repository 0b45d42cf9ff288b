"""The literal CoOp / CoCoOp / deep-visual-prompt references against open_clip itself."""
import pytest
import torch
import torch.nn.functional as F

from fastprompt.reference import (ReferenceCoCoOp, ReferenceCoOp, ReferenceTextEncoder,
                                  reference_encode_image_deep)
from fastprompt.testing import FP32, assert_changed, assert_gradient_flows, tiny_clip


def _tokenizer(model):
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=model.context_length)


def _images(model, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    return torch.randn(n, 3, size, size, generator=g)


def _rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _zero_shot_logits(model, images, texts):
    ids = _tokenizer(model)(texts)
    with torch.no_grad():
        img = F.normalize(model.encode_image(images), dim=-1)
        txt = F.normalize(model.encode_text(ids), dim=-1)
        return model.logit_scale.exp() * img @ txt.t()


def _names(classnames):
    return [c.replace("_", " ") for c in classnames]


# ----------------------------------------------------------------------------- text encoder

@pytest.mark.parametrize("which", ["tiny_model", "tiny_custom_model"])
def test_text_encoder_matches_encode_text(which, request, classnames):
    model = request.getfixturevalue(which)
    ids = _tokenizer(model)([f"a photo of a {n}." for n in _names(classnames)])
    enc = ReferenceTextEncoder(model)
    with torch.no_grad():
        got = enc(model.token_embedding(ids), ids)
        want = model.encode_text(ids)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert _rel_err(got, want) <= FP32.rounding


def test_text_encoder_custom_text_clip_with_linear_projection(classnames):
    """CustomTextCLIP keeps the tower in model.text; proj_bias=True makes the projection a Linear."""
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP

    torch.manual_seed(0)
    model = CustomTextCLIP(
        32, CLIPVisionCfg(layers=1, width=64, head_width=32, patch_size=8, image_size=16),
        CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=2, layers=2,
                    proj_bias=True)).eval()
    assert isinstance(model.text.text_projection, torch.nn.Linear)
    ids = _tokenizer(model)(_names(classnames))
    with torch.no_grad():
        got = ReferenceTextEncoder(model)(model.text.token_embedding(ids), ids)
        want = model.encode_text(ids)
    assert _rel_err(got, want) <= FP32.rounding


# ----------------------------------------------------------------------------- CoOp

@pytest.mark.parametrize("which", ["tiny_model", "tiny_custom_model"])
def test_coop_init_reproduces_zero_shot(which, request, classnames):
    model = request.getfixturevalue(which)
    coop = ReferenceCoOp(model, classnames, ctx_init="a photo of a")
    assert coop.prompt_learner.n_ctx == 4 and tuple(coop.prompt_learner.ctx.shape) == (4, 64)
    texts = [f"a photo of a {n}." for n in _names(classnames)]
    # the assembled prompt is exactly the embedding of the zero-shot prompt
    ids = _tokenizer(model)(texts)
    with torch.no_grad():
        assert torch.equal(coop.prompt_learner(), model.token_embedding(ids))
    images = _images(model)
    with torch.no_grad():
        got = coop(images)
    want = _zero_shot_logits(model, images, texts)
    assert got.shape == (3, len(classnames))
    assert _rel_err(got, want) <= FP32.parity


@pytest.mark.parametrize("position, template", [("middle", "a photo {} of a."),
                                                ("front", "{} a photo of a.")])
def test_coop_middle_front_with_init_are_rearranged_zero_shot(tiny_model, classnames, position,
                                                              template):
    """With ctx_init, middle/front put the class BPE tokens between/before the init words."""
    coop = ReferenceCoOp(tiny_model, classnames, ctx_init="a photo of a",
                         class_token_position=position)
    texts = [template.format(n) for n in _names(classnames)]
    ids = _tokenizer(tiny_model)(texts)
    with torch.no_grad():
        assert torch.equal(coop.prompt_learner(), tiny_model.token_embedding(ids))
    # EOT sits at the same position as in the "a photo of a <name>." ids used for pooling
    assert torch.equal(ids.argmax(-1), coop.tokenized_prompts.argmax(-1))
    images = _images(tiny_model)
    with torch.no_grad():
        got = coop(images)
    assert _rel_err(got, _zero_shot_logits(tiny_model, images, texts)) <= FP32.parity


def test_coop_word_count_quirk_still_reproduces_prompt(tiny_model, classnames):
    """n_ctx counts words: 'itap' is two BPE tokens, so ctx holds 'it','ap','of' and the final
    'a' stays in the suffix; the assembled prompt is still the full zero-shot prompt."""
    coop = ReferenceCoOp(tiny_model, classnames, ctx_init="itap of a")
    assert coop.prompt_learner.n_ctx == 3
    ids = _tokenizer(tiny_model)([f"itap of a {n}." for n in _names(classnames)])
    with torch.no_grad():
        assert torch.equal(coop.prompt_learner(), tiny_model.token_embedding(ids))
        assert torch.equal(coop.prompt_learner.ctx, tiny_model.token_embedding(ids[0, 1:4]))


@pytest.mark.parametrize("position", ["end", "middle", "front"])
@pytest.mark.parametrize("csc", [False, True])
def test_coop_random_init_shapes_determinism_grad(tiny_model, classnames, position, csc):
    torch.manual_seed(0)
    coop = ReferenceCoOp(tiny_model, classnames, n_ctx=5, csc=csc, class_token_position=position)
    ctx = coop.prompt_learner.ctx
    assert tuple(ctx.shape) == ((len(classnames), 5, 64) if csc else (5, 64))
    assert 0.01 < ctx.std().item() < 0.03
    assert coop.prompt_learner.prompt_texts[0] == "X X X X X red circle."
    prompts = coop.prompt_learner()
    assert prompts.shape == (len(classnames), 77, 64)
    images = _images(tiny_model, n=4)
    labels = torch.arange(4)
    out1, out2 = coop(images), coop(images)
    assert out1.shape == (4, len(classnames)) and torch.equal(out1, out2)
    coop.loss(images, labels).backward()
    assert_gradient_flows(ctx.grad, "ctx")
    if csc:  # every class-specific context gets a gradient
        for c, grad in enumerate(ctx.grad):
            assert_gradient_flows(grad, f"ctx of class {c}")


def test_coop_ctx_init_ignores_csc_and_trains_only_ctx(tiny_model, classnames):
    coop = ReferenceCoOp(tiny_model, classnames, ctx_init="a_photo_of_a", csc=True)
    assert coop.prompt_learner.ctx.dim() == 2  # generic despite csc=True
    assert list(coop.prompt_learner.state_dict()) == ["ctx", "token_prefix", "token_suffix"]
    trainable = [n for n, p in coop.named_parameters() if p.requires_grad]
    assert trainable == ["prompt_learner.ctx"]
    assert not any(p.requires_grad for p in tiny_model.parameters())
    assert coop.image_encoder is tiny_model.visual
    assert coop.logit_scale is tiny_model.logit_scale
    assert coop.prompt_learner.token_suffix.shape == (len(classnames), 77 - 1 - 4, 64)
    with pytest.raises(ValueError):
        ReferenceCoOp(tiny_model, classnames, class_token_position="side")


# ----------------------------------------------------------------------------- CoCoOp

COCOOP_KEYS = ["ctx", "meta_net.linear1.weight", "meta_net.linear1.bias",
               "meta_net.linear2.weight", "meta_net.linear2.bias", "token_prefix", "token_suffix"]


def test_cocoop_shapes_keys_and_grads(tiny_model, classnames):
    torch.manual_seed(0)
    cocoop = ReferenceCoCoOp(tiny_model, classnames)
    pl = cocoop.prompt_learner
    assert sorted(pl.state_dict()) == sorted(COCOOP_KEYS)
    vis_dim, ctx_dim = tiny_model.visual.output_dim, tiny_model.ln_final.weight.shape[0]
    assert pl.meta_net.linear1.weight.shape == (vis_dim // 16, vis_dim)
    assert pl.meta_net.linear2.weight.shape == (ctx_dim, vis_dim // 16)
    assert tuple(pl.ctx.shape) == (4, ctx_dim)
    images, labels = _images(tiny_model, n=3), torch.tensor([0, 5, 7])
    with torch.no_grad():
        feats = F.normalize(tiny_model.encode_image(images), dim=-1)
        assert pl(feats).shape == (3, len(classnames), 77, ctx_dim)
    logits = cocoop(images)
    assert logits.shape == (3, len(classnames))
    cocoop.loss(images, labels).backward()
    for name, p in pl.named_parameters():
        assert_gradient_flows(p.grad, name)
    trainable = {n for n, p in cocoop.named_parameters() if p.requires_grad}
    assert trainable == {"prompt_learner." + k for k in COCOOP_KEYS if not k.startswith("token")}


@pytest.mark.parametrize("which", ["tiny_model", "tiny_custom_model"])
def test_cocoop_with_zero_meta_net_equals_coop(which, request, classnames):
    model = request.getfixturevalue(which)
    torch.manual_seed(1)
    cocoop = ReferenceCoCoOp(model, classnames, n_ctx=3, ctx_init="")
    coop = ReferenceCoOp(model, classnames, n_ctx=3)
    with torch.no_grad():
        coop.prompt_learner.ctx.copy_(cocoop.prompt_learner.ctx)
        for p in cocoop.prompt_learner.meta_net.parameters():
            p.zero_()
    images = _images(model, n=2)
    with torch.no_grad():
        got, want = cocoop(images), coop(images)
    assert _rel_err(got, want) <= FP32.rounding


# ----------------------------------------------------------------------------- deep vision

@pytest.mark.parametrize("which", ["tiny_model", "tiny_custom_model"])
def test_deep_vision_without_prompts_equals_visual(which, request):
    model = request.getfixturevalue(which)
    images = _images(model)
    with torch.no_grad():
        want = model.visual(images)
        for prompts in (None, []):
            assert _rel_err(reference_encode_image_deep(model.visual, images, prompts),
                            want) <= FP32.rounding


def test_deep_vision_final_ln_after_pool_without_prompts():
    from open_clip.transformer import VisionTransformer

    torch.manual_seed(0)
    visual = VisionTransformer(image_size=16, patch_size=8, width=32, layers=2, heads=2,
                               mlp_ratio=2.0, output_dim=16, final_ln_after_pool=True).eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert _rel_err(reference_encode_image_deep(visual, images), visual(images)) <= FP32.rounding


def test_deep_vision_single_prompt_propagates(tiny_model):
    """J = 1: the prompt enters before ln_pre and its rows run through every block (no
    replacement) -- the same as open_clip's whole transformer over the appended sequence."""
    visual = tiny_model.visual
    images = _images(tiny_model)
    g = torch.Generator().manual_seed(3)
    p0 = (0.02 * torch.randn(3, 96, generator=g)).requires_grad_()
    got = reference_encode_image_deep(visual, images, [p0])
    with torch.no_grad():
        x = visual._embeds(images)  # includes ln_pre (per-token, so it commutes with the cat)
        x = torch.cat([x, visual.ln_pre(p0).expand(x.shape[0], -1, -1)], dim=1)
        x = visual.transformer(x)
        pooled, _ = visual._pool(x)
        want = pooled @ visual.proj
    assert _rel_err(got.detach(), want) <= FP32.rounding
    got.sum().backward()
    assert_gradient_flows(p0.grad, "prompt 0")


@pytest.mark.parametrize("n_prompt_layers", [2, 3, 4])
def test_deep_vision_gradients_reach_every_prompt(n_prompt_layers):
    model = tiny_clip(seed=2, vision_layers=4)
    visual = model.visual
    images = _images(model, n=2)
    g = torch.Generator().manual_seed(4)
    prompts = [(0.02 * torch.randn(2, 96, generator=g)).requires_grad_()
               for _ in range(n_prompt_layers)]
    out = reference_encode_image_deep(visual, images, prompts)
    assert out.shape == (2, visual.output_dim)
    out.square().sum().backward()
    for j, p in enumerate(prompts):
        assert_gradient_flows(p.grad, f"prompt {j}")
    # replacement semantics: the last prompt is what the final layers see; earlier prompts only
    # act through attention of the real tokens, so changing one changes the output. The change
    # is a random direction: a constant shift of a row would be removed by the next LayerNorm.
    with torch.no_grad():
        other = [p.detach().clone() for p in prompts]
        other[-1] += 0.5 * torch.randn(other[-1].shape, generator=g)
        assert_changed(reference_encode_image_deep(visual, images, other), out, "output after changing the last prompt")


def test_deep_vision_rejects_bad_inputs(tiny_model):
    from open_clip.transformer import VisionTransformer

    visual, images = tiny_model.visual, _images(tiny_model, n=1)
    with pytest.raises(ValueError, match="width"):
        reference_encode_image_deep(visual, images, [torch.zeros(2, 64)])
    with pytest.raises(ValueError, match="blocks"):
        reference_encode_image_deep(visual, images, [torch.zeros(2, 96)] * 3)
    with pytest.raises(ValueError, match="prompt length"):
        reference_encode_image_deep(visual, images, [torch.zeros(2, 96), torch.zeros(3, 96)])
    attn_pool = VisionTransformer(image_size=16, patch_size=8, width=32, layers=1, heads=2,
                                  mlp_ratio=2.0, output_dim=16, attentional_pool="parallel",
                                  attn_pooler_queries=4, attn_pooler_heads=2)
    # CoCa's single pooler is taken (tests/test_attn_pool_deep_prompts.py); open_clip's untested pair is not
    with pytest.raises(ValueError, match="'parallel' pair of attentional poolers"):
        reference_encode_image_deep(attn_pool, torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="VisionTransformer"):
        reference_encode_image_deep(torch.nn.Linear(2, 2), images)
