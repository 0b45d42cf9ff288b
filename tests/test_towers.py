"""Functional towers against open_clip itself and against literal full-length / torch.cat paths."""
import pytest
import torch

import fastprompt
from fastprompt.reference import reference_encode_image_deep
from fastprompt.testing import FP32, assert_close_rel
from fastprompt.towers import TextTower, VisionTower, build_text_plan, ctx_source

PROMPTS = ["a photo of a dog.", "a photo of a sea lion.", "a bad photo of the jack-o'-lantern.", "hello",
           "itap of a Granny Smith."]


def _tokenize(texts):
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()(texts)


@pytest.mark.parametrize("model_fixture", ["tiny_model", "tiny_custom_model"])
def test_text_tower_reproduces_encode_text(model_fixture, request):
    model = request.getfixturevalue(model_fixture)
    ids = _tokenize(PROMPTS)
    assert_close_rel(TextTower(model).encode_token_ids(ids), model.encode_text(ids), FP32.parity, "text features")


def test_towers_support_open_clip_custom_block_extras():
    """qk-norm, per-head scale, inner/attention/MLP norms of open_clip's custom blocks."""
    from fastprompt.testing import tiny_clip

    model = tiny_clip(seed=3, qk_norm=True, scale_heads=True, scale_attn_inner=True, scale_attn=True, scale_fc=True)
    ids = _tokenize(PROMPTS)
    assert_close_rel(TextTower(model).encode_token_ids(ids), model.encode_text(ids), FP32.parity, "text features")
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert_close_rel(VisionTower(model.visual)(images), model.encode_image(images), FP32.parity, "image features")


@pytest.mark.parametrize("model_fixture", ["tiny_model", "tiny_custom_model"])
def test_vision_tower_reproduces_encode_image(model_fixture, request):
    model = request.getfixturevalue(model_fixture)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert_close_rel(VisionTower(model.visual)(images), model.encode_image(images), FP32.parity, "image features")


def _literal_text(model, embeds, ids, deep=None, start=1):
    """Full-length text encoder over open_clip's blocks, replacing rows before layers (MaPLe style)."""
    x = embeds + model.positional_embedding
    for layer, block in enumerate(model.transformer.resblocks):
        if deep is not None and 0 < layer < len(deep):
            x = torch.cat([x[:, :start], deep[layer].expand(x.shape[0], -1, -1), x[:, start + deep[layer].shape[0]:]], 1)
        x = block(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)[torch.arange(x.shape[0]), ids.argmax(-1)]
    return x @ model.text_projection


@pytest.mark.parametrize("model_fixture", ["tiny_model", "tiny_custom_model"])
def test_text_tower_with_context_and_deep_prompts_matches_full_length(model_fixture, request):
    model = request.getfixturevalue(model_fixture)
    gen = torch.Generator().manual_seed(1)
    m, width = 3, model.ln_final.weight.shape[0]
    ids = _tokenize(["X X X dog.", "X X X sea lion.", "X X X jack-o'-lantern."])
    rows = [[r[0]] + [ctx_source(k) for k in range(m)] + r[1 + m:] for r in ids.tolist()]
    plan = build_text_plan(rows, ids)
    assert plan.prefix_len == 1 + m
    ctx = torch.randn(m, width, generator=gen).requires_grad_()
    deep = [None] + [torch.randn(m, width, generator=gen).requires_grad_() for _ in range(len(model.transformer.resblocks) - 1)]
    tower = TextTower(model)
    prefix, suffix = tower.embed(plan, ctx)
    fast = tower(plan, prefix, suffix, prefix_overrides=deep)

    embeds = model.token_embedding(ids)
    full = torch.cat([embeds[:, :1], ctx.expand(3, -1, -1), embeds[:, 1 + m:]], 1)
    slow = _literal_text(model, full, ids, deep=deep)
    assert_close_rel(fast, slow, FP32.parity, "features")
    params = [ctx] + deep[1:]
    g_fast = torch.autograd.grad(fast.square().sum(), params)
    g_slow = torch.autograd.grad(slow.square().sum(), params)
    for i, (a, b) in enumerate(zip(g_fast, g_slow)):
        assert_close_rel(a, b, FP32.parity, f"grad[{i}]")


def test_text_plan_groups_match_separate_passes(tiny_model):
    """G groups in one pass == each group encoded alone (CoCoOp's batching)."""
    m, width, groups = 2, tiny_model.ln_final.weight.shape[0], 3
    ids = _tokenize(["X X red circle.", "X X dog.", "X X sea lion."])
    rows = [[r[0]] + [ctx_source(k) for k in range(m)] + r[1 + m:] for r in ids.tolist()]
    plan = build_text_plan(rows, ids)
    tower = TextTower(tiny_model)
    ctx = torch.randn(groups, m, width, generator=torch.Generator().manual_seed(2))
    together = tower(plan.repeat(groups), *tower.embed(plan.repeat(groups), ctx))
    for g in range(groups):
        alone = tower(plan, *tower.embed(plan, ctx[g]))
        # One pass vs per group: float32 summation order differs (measured up to 6e-7); suite bound FP32.parity.
        assert_close_rel(together[g * 3:(g + 1) * 3], alone, FP32.parity, f"group {g}")


def test_text_plan_truncates_after_eot_and_shares_common_prefix():
    ids = _tokenize(["a photo of a dog.", "a photo of a sea lion."])
    plan = build_text_plan(ids.tolist(), ids)
    eot = ids.argmax(-1)
    assert plan.prefix_len == 5  # [SOT] a photo of a
    assert plan.seqlens.tolist() == [int(e) + 1 - 5 for e in eot]
    assert plan.n_tokens == int((eot + 1 - 5).sum())
    with pytest.raises(ValueError, match="classnames is empty"):
        build_text_plan([], ids[:0])


@pytest.mark.parametrize("n_prompted", [1, 2, 3])
@pytest.mark.parametrize("model_fixture", ["tiny_model", "tiny_custom_model"])
def test_vision_deep_prompts_match_literal_cat(model_fixture, n_prompted, request):
    model = request.getfixturevalue(model_fixture)
    visual = model.visual
    layers = len(visual.transformer.resblocks)
    n_prompted = min(n_prompted, layers)
    gen = torch.Generator().manual_seed(3)
    width = visual.conv1.out_channels
    prompts = [torch.randn(4, width, generator=gen).requires_grad_() for _ in range(n_prompted)]
    images = torch.randn(2, 3, 32, 32, generator=gen)
    fast = VisionTower(visual)(images, prompts)
    slow = reference_encode_image_deep(visual, images, prompts)
    assert_close_rel(fast, slow, FP32.parity, "image features")
    g_fast = torch.autograd.grad(fast.square().sum(), prompts)
    g_slow = torch.autograd.grad(slow.square().sum(), prompts)
    for j, (a, b) in enumerate(zip(g_fast, g_slow)):
        assert_close_rel(a, b, FP32.parity, f"grad of prompt {j}")


def test_vision_prompt_errors(tiny_model):
    tower = VisionTower(tiny_model.visual)
    images = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="deep_prompts"):
        tower(images, [torch.randn(4, 7)])
    with pytest.raises(ValueError, match="deep_prompts has"):
        tower(images, [torch.randn(2, tower.width)] * (tower.layers + 1))


@pytest.mark.slow
def test_vit_b16_towers_reproduce_open_clip(vit_b16):
    ids = _tokenize(PROMPTS)
    assert_close_rel(TextTower(vit_b16).encode_token_ids(ids), vit_b16.encode_text(ids), FP32.parity, "text")
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert_close_rel(VisionTower(vit_b16.visual)(images), vit_b16.encode_image(images), FP32.parity, "image")


@pytest.mark.slow
def test_vit_b16_vision_deep_prompts_match_literal_cat(vit_b16):
    gen = torch.Generator().manual_seed(4)
    prompts = [(0.02 * torch.randn(4, 768, generator=gen)).requires_grad_() for _ in range(3)]
    images = torch.randn(1, 3, 224, 224, generator=gen)
    fast = VisionTower(vit_b16.visual)(images, prompts)
    slow = reference_encode_image_deep(vit_b16.visual, images, prompts)
    assert_close_rel(fast, slow, FP32.parity, "image features")
    g_fast = torch.autograd.grad(fast.sum(), prompts)
    g_slow = torch.autograd.grad(slow.sum(), prompts)
    for j, (a, b) in enumerate(zip(g_fast, g_slow)):
        assert_close_rel(a, b, FP32.parity, f"grad of prompt {j}")


@pytest.mark.parametrize("prompts", ["none", "overrides", "qkv"])
def test_prefix_and_suffix_rows_share_one_in_projection_per_layer(tiny_model, monkeypatch, prompts):
    """Each layer's dense parts run on the prefix and suffix rows as one block, with or without
    deep prompts (overrides: MaPLe / PromptSRC; q/k/v prompts: RPP); the last layer projects the
    suffix rows alone (the prefix needs keys and values only). The values are checked against
    literal full-length encoders here (deep prompts) and in the learners' reference tests."""
    from fastprompt.towers import QKVPrompt
    from fastprompt.towers.blocks import BlockView

    calls = []
    fused = BlockView.qkv_fused
    monkeypatch.setattr(BlockView, "qkv_fused", lambda self, x: calls.append(x.shape[0]) or fused(self, x))
    tower = TextTower(tiny_model)
    plan = _ctx_plan(["red circle", "dog"]).repeat(3)
    rows = torch.randn(2, tower.width, generator=torch.Generator().manual_seed(6))
    kwargs = {"none": {}, "overrides": {"prefix_overrides": [None] + [rows] * (tower.layers - 1)},
              "qkv": {"prefix_prompts": [QKVPrompt(rows, rows, rows, rows)] * (tower.layers - 1)}}[prompts]
    out = tower(plan, *tower.embed(plan, torch.zeros(2, tower.width)), **kwargs)
    assert out.shape == (plan.n_sequences, tower.embed_dim)
    together = plan.n_groups * plan.prefix_len + plan.n_tokens
    assert calls == [together] * (tower.layers - 1) + [plan.n_tokens]


def _ctx_plan(names, m=2):
    ids = _tokenize([" ".join(["X"] * m) + f" {n}." for n in names])
    rows = [[r[0]] + [ctx_source(k) for k in range(m)] + r[1 + m:] for r in ids.tolist()]
    return build_text_plan(rows, ids)


def test_text_plan_select_encodes_the_chosen_sequences(tiny_model):
    tower = TextTower(tiny_model)
    plan = _ctx_plan(["red circle", "dog", "sea lion", "jack-o'-lantern"])
    ctx = torch.randn(2, tower.width, generator=torch.Generator().manual_seed(5))
    full = tower(plan, *tower.embed(plan, ctx))
    picked = plan.select([3, 0, 3, 1])
    assert picked.class_index.tolist() == [3, 0, 3, 1]
    assert_close_rel(tower(picked, *tower.embed(picked, ctx)), full[[3, 0, 3, 1]], FP32.rounding, "selected features")
    with pytest.raises(ValueError, match="indices"):
        plan.select([4])


def test_concat_plans_gives_one_group_per_class_list(tiny_model):
    """Different class lists (SoftCPT tasks) in one pass, each with its own context table."""
    from fastprompt.towers.text_plan import concat_plans

    tower = TextTower(tiny_model)
    lists = [["red circle", "dog"], ["sea lion", "jack-o'-lantern", "Granny Smith"], ["yellow star"]]
    plans = [_ctx_plan(names) for names in lists]
    ctx = torch.randn(3, 2, tower.width, generator=torch.Generator().manual_seed(6))
    joined = concat_plans(plans)
    assert joined.n_groups == 3 and joined.group.tolist() == [0, 0, 1, 1, 1, 2]
    together = tower(joined, *tower.embed(joined, ctx))
    apart = torch.cat([tower(p, *tower.embed(p, ctx[g])) for g, p in enumerate(plans)])
    # One pass vs per list: float32 summation order differs (measured up to 5e-7); suite bound FP32.parity.
    assert_close_rel(together, apart, FP32.parity, "features")
    # The one-class list shares its whole prompt but EOT; joined, only [SOT][ctx] stays shared.
    assert plans[2].prefix_len > joined.prefix_len == 3


@pytest.mark.parametrize("images,message", [
    (torch.zeros(2, 3, 64, 64), r"\[B, 3, 32, 32\], got 64x64 images"),
    (torch.zeros(2, 3, 16, 16), r"\[B, 3, 32, 32\], got 16x16 images"),
    (torch.zeros(3, 32, 32), r"3-D tensor .* add a batch dimension"),
    (torch.zeros(2, 32, 32, 3), r"got shape \(2, 32, 32, 3\) \(channels last\? use images.permute\(0, 3, 1, 2\)\)"),
    (torch.zeros(2, 1, 32, 32), r"\[B, 3, 32, 32\], got shape \(2, 1, 32, 32\)"),
    (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "as floats"),
], ids=["64px", "16px", "3d", "channels-last", "grey", "uint8"])
def test_wrong_images_name_the_expected_shape(tiny_model, classnames, images, message):
    learner = fastprompt.CoOpLearner.from_model(tiny_model, classnames, n_ctx=2)
    with pytest.raises(ValueError, match=message):
        learner(images)
    with pytest.raises(ValueError, match=message):
        VisionTower(tiny_model.visual)(images, [torch.zeros(2, tiny_model.visual.transformer.width)])


def test_a_channels_last_memory_format_is_just_a_layout(tiny_model, classnames):
    """``torch.channels_last`` keeps the logical [B, 3, H, W] shape: same features, no error."""
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tower = VisionTower(tiny_model.visual)
    plain = tower(images)
    assert_close_rel(tower(images.to(memory_format=torch.channels_last)), plain, FP32.rounding,
                     "channels_last features")
