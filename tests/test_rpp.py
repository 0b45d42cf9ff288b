"""RPPLearner against the literal reference (fastprompt.reference.rpp), plus its own semantics:
zero gradient of overwritten query prompts, the "shared" switch, the teacher, config errors."""
import functools

import pytest
import torch

import fastprompt
from fastprompt.learners.teacher import CLIPTeacher, distillation_kl
from fastprompt.reference import ReferenceRPP
from fastprompt.reference.rpp import reference_zero_shot_weights
from fastprompt.testing import FP32, assert_close_rel, random_images, tiny_clip

NAMES = ["red circle", "blue_square", "green triangle", "dog", "sea lion", "jack-o'-lantern"]

# Tiny towers with 3 layers, so that depth 2 has a prompted layer whose outputs are discarded
# (layer 0), one whose outputs survive (layer 1) and an unprompted layer after them.
CONFIGS = [
    dict(depth=2),
    dict(depth=1),
    dict(depth=3),
    dict(depth=2, variant="post"),
    dict(depth=2, residual_row="mean"),
    dict(depth=1, variant="post", residual_row="mean"),
    dict(depth=2, shared=True),
    dict(depth=2, branches="text", n_ctx=3),
    dict(depth=2, branches="vision", ctx_init="a photo of a", n_ctx_vision=2),
    dict(depth=2, ctx_init="itap of a"),  # a 2-token word: a frozen prefix row sits after the prompt rows
    dict(depth=2, ctx_init="a photo of a", variant="post"),
    dict(depth=2, temperature=2.0, kl_weight=0.5),
    dict(depth=2, kl_weight=0.0),
    dict(depth=2, branches="text", pomp=True, pomp_num_sampled_classes=4, pomp_seed=0),
    dict(depth=2, pomp=True, pomp_num_sampled_classes=5, pomp_seed=3, pomp_log_base="e", temperature=2.0),
]


@pytest.fixture(scope="module")
def tiny3():
    return tiny_clip(seed=10, layers=3, vision_layers=3)


@pytest.fixture(scope="module")
def tiny3_custom():
    return tiny_clip(seed=11, layers=3, vision_layers=3, custom_blocks=True)


_images = functools.partial(random_images, seed=1)


def _pair(model, cfg, names=NAMES, ref_kwargs=None, learner_kwargs=None):
    """A learner and its reference with the same prompt values (the reference's, via
    ``load_original_state_dict``); ``cfg`` goes to both."""
    torch.manual_seed(0)
    ref_cfg = {k: v for k, v in cfg.items() if k != "pomp_seed"}
    reference = ReferenceRPP(model, names, **ref_cfg, **(ref_kwargs or {}))
    learner = fastprompt.RPPLearner.from_model(model, names, **cfg, **(learner_kwargs or {}))
    learner.load_original_state_dict(reference.prompt_learner.state_dict())
    return learner, reference


def _params(learner, reference):
    named = learner.trainable_named_parameters()
    return [n for n, _ in named], [p for _, p in named], [getattr(reference.prompt_learner, n) for n, _ in named]


def _grads(loss, params):
    return torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)


def _compare(learner, reference, images, labels, seed=0, rtol=FP32.parity):
    assert_close_rel(learner(images), reference(images), rtol, "logits")
    loss = learner.loss(images, labels)
    ref_loss = reference.loss(images, labels, generator=torch.Generator().manual_seed(seed))
    assert_close_rel(loss, ref_loss, rtol, "loss")
    names, params, ref_params = _params(learner, reference)
    for name, g, r in zip(names, _grads(loss, params), _grads(ref_loss, ref_params)):
        assert_close_rel(g, r, FP32.gradient_parity, f"grad {name}")
    return loss


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("model_fixture", ["tiny3", "tiny3_custom"])
def test_rpp_matches_reference(cfg, model_fixture, request):
    model = request.getfixturevalue(model_fixture)
    learner, reference = _pair(model, cfg)
    _compare(learner, reference, _images(3), torch.tensor([0, 3, 3]), seed=cfg.get("pomp_seed", 0))


@pytest.mark.parametrize("model_fixture", ["tiny_model", "tiny_custom_model"])
def test_rpp_matches_reference_on_two_layer_towers(model_fixture, classnames, request):
    """The shared fixtures (2 layers): the last prompted layer is the tower's last layer."""
    model = request.getfixturevalue(model_fixture)
    learner, reference = _pair(model, dict(depth=2, n_ctx=2), names=classnames)
    _compare(learner, reference, _images(2), torch.tensor([1, 6]))


@pytest.mark.parametrize("variant", ["pre", "post"])
def test_query_prompt_gets_zero_gradient_exactly_where_its_output_is_overwritten(tiny3, variant):
    """Layer 0's prompt outputs are replaced before layer 1 -> its query prompt is inert; layer 1
    (the last prompted layer, 3 layers in all) lets its outputs propagate -> non-zero gradient."""
    learner, reference = _pair(tiny3, dict(depth=2, variant=variant))
    images, labels = _images(3), torch.tensor([0, 2, 5])
    for module, holder in ((learner, learner), (reference, reference.prompt_learner)):
        sides = ("text", "vision")
        grads = _grads(module.loss(images, labels), [getattr(holder, f"{side}_{part}") for side in sides
                                                     for part in ("q", "k")])
        for side, q_grad, k_grad in zip(sides, grads[0::2], grads[1::2]):
            assert torch.count_nonzero(q_grad[0]) == 0, f"{side}: layer-0 query prompt must get exactly zero gradient"
            assert torch.count_nonzero(q_grad[1]) == q_grad[1].numel(), f"{side}: layer-1 query prompt needs a gradient"
            assert torch.count_nonzero(k_grad[0]) > 0 and torch.count_nonzero(k_grad[1]) > 0, "keys act in every layer"


def test_query_prompt_of_the_last_layer_is_inert(tiny3):
    """depth == layers: the last prompted layer is the tower's last, whose prompt rows are not pooled."""
    learner, reference = _pair(tiny3, dict(depth=3))
    loss = learner.loss(_images(2), torch.tensor([1, 4]))
    grads = _grads(loss, [learner.text_q, learner.vision_q])
    ref_loss = reference.loss(_images(2), torch.tensor([1, 4]))
    ref_grads = _grads(ref_loss, [reference.prompt_learner.text_q, reference.prompt_learner.vision_q])
    for g in list(grads) + list(ref_grads):
        assert torch.count_nonzero(g) == 0


def test_tied_unshared_prompts_are_ordinary_deep_prompts_through_the_tower_api(tiny3):
    """q = k = v (pre-projection) reproduces IVLP/VPT-deep prompts of the existing deep-prompt API,
    and the shared switch gives the same numbers."""
    gen = torch.Generator().manual_seed(5)
    learner = fastprompt.RPPLearner.from_model(tiny3, NAMES, depth=2, kl_weight=0.0)
    shared = fastprompt.RPPLearner.from_model(tiny3, NAMES, depth=2, kl_weight=0.0, shared=True)
    text_p = torch.randn(2, learner.n_ctx, learner.text_tower.width, generator=gen)
    vis_p = torch.randn(2, learner.n_ctx_vision, learner.vision_tower.width, generator=gen)
    with torch.no_grad():
        for part in ("q", "k", "v"):
            getattr(learner, f"text_{part}").copy_(text_p)
            getattr(learner, f"vision_{part}").copy_(vis_p)
        shared.text_prompts.copy_(text_p)
        shared.vision_prompts.copy_(vis_p)
    images = _images(2)
    with torch.no_grad():
        deep = learner.vision_tower(images, deep_prompts=list(vis_p))
        tower, plan = learner.text_tower, learner.plan
        ivlp = tower(plan, *tower.embed(plan, text_p[0]), prefix_overrides=[None, text_p[1]])
        for candidate in (learner, shared):
            img = candidate.image_features(images)
            assert_close_rel(img, deep / deep.norm(dim=-1, keepdim=True), FP32.parity, "image features")
            assert_close_rel(candidate.text_features(), ivlp, FP32.parity, "text features")


@pytest.mark.parametrize("cfg", [dict(ctx_init="a photo of a"), dict(ctx_init="a photo of a", variant="post"),
                                 dict(ctx_init="a photo of a", shared=True), dict(n_ctx=3)],
                         ids=["pre", "post", "shared", "random"])
def test_init_matches_the_reference(tiny3, cfg):
    """Same seed, same init: N(0, 0.02) everywhere; with ctx_init, layer-0 text q/k/v = the words'
    embeddings (pre) or their frozen layer-0 projections with positions (post)."""
    torch.manual_seed(0)
    reference = ReferenceRPP(tiny3, NAMES, depth=2, kl_weight=0.0, **cfg)
    torch.manual_seed(0)
    learner = fastprompt.RPPLearner.from_model(tiny3, NAMES, depth=2, kl_weight=0.0, **cfg)
    for name, p in learner.trainable_named_parameters():
        assert torch.equal(p, getattr(reference.prompt_learner, name)), name


def test_tower_qkv_prompt_errors(tiny3):
    from fastprompt.towers import QKVPrompt, VisionTower

    tower = VisionTower(tiny3.visual)
    images, w = _images(1), tower.width
    rows = torch.randn(2, w)
    with pytest.raises(ValueError, match="either deep_prompts or qkv_prompts"):
        tower(images, deep_prompts=[rows], qkv_prompts=[QKVPrompt(rows, rows, rows, rows)])
    with pytest.raises(ValueError, match=r"qkv_prompts\[0\].k"):
        tower(images, qkv_prompts=[QKVPrompt(torch.randn(2, w + 1), rows)])
    with pytest.raises(ValueError, match=r"qkv_prompts\[1\] has 3 rows"):
        tower(images, qkv_prompts=[QKVPrompt(rows, rows), QKVPrompt(torch.randn(3, w), torch.randn(3, w))])
    with pytest.raises(ValueError, match="residual is needed"):  # layer 0 is the last prompted: its rows survive
        tower(images, qkv_prompts=[QKVPrompt(rows, rows, rows)])
    with pytest.raises(ValueError, match="q is None"):
        tower(images, qkv_prompts=[QKVPrompt(rows, rows, None, rows)])
    learner = fastprompt.RPPLearner.from_model(tiny3, NAMES, depth=2, kl_weight=0.0)
    text, plan, width_rows = learner.text_tower, learner.plan, torch.randn(learner.n_ctx, learner.text_tower.width)
    with pytest.raises(ValueError, match=r"prefix_prompts\[0\].residual is needed"):  # checked before any layer runs
        text.encode(plan, width_rows, prefix_prompts=[QKVPrompt(width_rows, width_rows, width_rows)])


def test_text_features_of_a_class_subset(tiny3):
    learner = fastprompt.RPPLearner.from_model(tiny3, NAMES, depth=2, kl_weight=0.0)
    idx = torch.tensor([4, 0, 4, 2])
    with torch.no_grad():
        # Subset vs all classes: float32 summation order differs (measured 4e-7); suite bound FP32.parity.
        assert_close_rel(learner.text_features(idx), learner.text_features()[idx], FP32.parity, "subset")


# ---- teacher -----------------------------------------------------------------------------------
def test_teacher_features_match_clip_zero_shot_and_are_computed_once(tiny3):
    teacher = CLIPTeacher(tiny3, "simple")
    teacher.set_classnames(NAMES)
    assert_close_rel(teacher.class_features, reference_zero_shot_weights(tiny3, NAMES, "simple"), FP32.parity, "W")
    images = _images(3)
    with torch.no_grad():
        img = tiny3.encode_image(images)
    img = img / img.norm(dim=-1, keepdim=True)
    full = teacher.logits(images)
    assert_close_rel(full, tiny3.logit_scale.exp() * img @ teacher.class_features.t(), FP32.parity, "zero-shot logits")
    idx = torch.tensor([5, 1, 1])
    assert_close_rel(teacher.logits(images, class_indices=idx), full[:, idx], FP32.rounding, "subset logits")
    assert teacher.n_text_builds == 1
    teacher.set_classnames(NAMES)
    teacher.set_classnames(NAMES[:3])
    teacher.set_classnames(NAMES)
    assert teacher.n_text_builds == 2  # NAMES once, NAMES[:3] once


def test_learner_teacher_follows_set_classnames_and_keeps_prompts(tiny3):
    learner = fastprompt.RPPLearner.from_model(tiny3, NAMES, depth=2)
    before = {n: p.detach().clone() for n, p in learner.trainable_named_parameters()}
    learner.set_classnames(NAMES[2:])
    assert learner.teacher.classnames == [n.replace("_", " ") for n in NAMES[2:]]
    assert learner(_images(2)).shape == (2, len(NAMES) - 2)
    assert learner.teacher_logits(_images(2)).shape == (2, len(NAMES) - 2)
    for n, p in learner.trainable_named_parameters():
        assert torch.equal(p, before[n])


def test_teacher_logits_use_the_same_pomp_columns_and_offsets(tiny3):
    learner = fastprompt.RPPLearner.from_model(tiny3, NAMES, depth=2, pomp=True, pomp_num_sampled_classes=4,
                                               pomp_seed=1)
    labels = torch.tensor([0, 3])
    sample = learner.objective.sample(labels, learner.n_classes, negatives=torch.tensor([3, 1, 5]))
    images = _images(2)
    t = learner.teacher_logits(images, sample)
    full = learner.teacher.logits(images)
    assert t.shape == (2, 4)
    assert_close_rel(t[:, 0], full[torch.arange(2), labels], FP32.rounding, "positive column")
    assert_close_rel(t[:, 1:], full[:, [3, 1, 5]] + sample.offset.float(), FP32.rounding, "negative columns + offsets")
    assert t[1, 1] < -1e5  # image 1's label (3) drawn as a negative: rejected for the teacher too


def test_another_teacher_model(tiny3, tiny3_custom):
    """A different open_clip model as teacher (its own image tower), against the reference."""
    learner, reference = _pair(tiny3, dict(depth=2), ref_kwargs=dict(teacher_model=tiny3_custom),
                               learner_kwargs=dict(teacher=tiny3_custom))
    assert learner.teacher.clip is tiny3_custom
    _compare(learner, reference, _images(3), torch.tensor([0, 1, 2]))


def test_teacher_with_another_width_needs_a_projection(tiny3):
    wide = tiny_clip(seed=12, layers=3, vision_layers=3, embed_dim=40)
    cfg = dict(depth=2, teacher_image_encoder="student")
    with pytest.raises(ValueError, match="projection"):
        fastprompt.RPPLearner.from_model(tiny3, NAMES, teacher=wide, **cfg)
    with pytest.raises(ValueError, match="projection"):
        fastprompt.RPPLearner.from_model(tiny3, NAMES, teacher=wide, teacher_projection=torch.randn(40, 7), **cfg)
    # Its own image tower: a complete zero-shot CLIP, widths do not matter (KL over logits).
    fastprompt.RPPLearner.from_model(tiny3, NAMES, depth=2, teacher=wide)
    proj = torch.randn(40, 48, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    reference = ReferenceRPP(tiny3, NAMES, depth=2, teacher_model=wide, teacher_image_model=tiny3,
                             teacher_projection=proj)
    learner = fastprompt.RPPLearner.from_model(tiny3, NAMES, teacher=wide, teacher_projection=proj, **cfg)
    learner.load_original_state_dict(reference.prompt_learner.state_dict())
    _compare(learner, reference, _images(2), torch.tensor([4, 5]))


def test_teacher_image_size_must_match(tiny3):
    big = tiny_clip(seed=13, layers=2, vision_layers=2, image_size=48)
    with pytest.raises(ValueError, match="teacher"):
        fastprompt.RPPLearner.from_model(tiny3, NAMES, depth=2, teacher=big)


def test_distillation_kl_definition():
    gen = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(4, 7, generator=gen), torch.randn(4, 7, generator=gen)
    t = 2.0
    ps, pt = torch.softmax(zs / t, -1), torch.softmax(zt / t, -1)
    expected = t * t * (pt * (pt.log() - ps.log())).sum(-1).mean()
    assert_close_rel(distillation_kl(zs, zt, t), expected, FP32.rounding, "kl")
    zs[:, 3] -= 1e6
    zt[:, 3] -= 1e6  # masked on both sides -> contributes nothing, stays finite
    assert torch.isfinite(distillation_kl(zs, zt, t))


def test_teacher_shares_frozen_image_features_when_nothing_differs(tiny3, monkeypatch):
    learner = fastprompt.RPPLearner.from_model(tiny3, NAMES, depth=2, branches="text")
    calls = []
    monkeypatch.setattr(learner.teacher, "image_features", lambda images: calls.append(1))
    learner.loss(_images(2), torch.tensor([0, 1]))
    assert not calls


# ---- checkpoints, errors -----------------------------------------------------------------------
def test_save_and_from_pretrained_round_trip(tiny3, tmp_path):
    learner = fastprompt.RPPLearner.from_model(tiny3, NAMES, depth=2, variant="post", teacher_templates=["a {}."])
    with torch.no_grad():
        for _, p in learner.trainable_named_parameters():
            p.add_(torch.randn_like(p))
    learner.save_pretrained(str(tmp_path))
    loaded = fastprompt.PromptLearner.from_pretrained(str(tmp_path), model=tiny3)
    assert isinstance(loaded, fastprompt.RPPLearner) and loaded.config == learner.config
    images = _images(2)
    assert_close_rel(loaded(images), learner(images), FP32.rounding, "logits")


@pytest.mark.parametrize("cfg, match", [
    (dict(depth=4), "depth"),
    (dict(depth=0), "depth"),
    (dict(n_ctx=0), "n_ctx"),
    (dict(n_ctx_vision=0), "n_ctx_vision"),
    (dict(branches="audio"), "branches"),
    (dict(variant="middle"), "variant"),
    (dict(residual_row="key"), "residual_row"),
    (dict(shared=True, variant="post"), "shared"),
    (dict(ctx_init="a photo of a", n_ctx=2), "n_ctx"),
    (dict(ctx_init=" ".join(["word"] * 80)), "ctx_init"),
    (dict(temperature=0.0), "temperature"),
    (dict(kl_weight=-1.0), "kl_weight"),
    (dict(teacher_templates=["a photo"]), "teacher_templates"),
    (dict(teacher_templates="fancy"), "teacher_templates"),
    (dict(teacher_image_encoder="both"), "teacher_image_encoder"),
    (dict(pomp=True, pomp_num_sampled_classes=1), "pomp_num_sampled_classes"),
    (dict(pomp_log_base="2"), "pomp_log_base"),
])
def test_config_errors_name_the_argument(tiny3, cfg, match):
    cfg = {"depth": 2, **cfg}
    with pytest.raises(ValueError, match=match):
        fastprompt.RPPLearner.from_model(tiny3, NAMES, **cfg)


def test_vision_only_depth_is_checked_against_the_vision_tower():
    model = tiny_clip(seed=14, layers=4, vision_layers=2)
    fastprompt.RPPLearner.from_model(model, NAMES, depth=4, branches="text", kl_weight=0.0)
    with pytest.raises(ValueError, match="vision tower"):
        fastprompt.RPPLearner.from_model(model, NAMES, depth=3, branches="both", kl_weight=0.0)


def test_pomp_needs_enough_classes(tiny3):
    learner = fastprompt.RPPLearner.from_model(tiny3, NAMES, depth=2, pomp=True, pomp_num_sampled_classes=8)
    with pytest.raises(ValueError, match="num_sampled_classes"):
        learner.loss(_images(1), torch.tensor([0]))


def test_demo_sized_training_lowers_the_loss():
    """The configuration suggested for `fastprompt demo` (the CLI's tiny model) trains."""
    model = tiny_clip(0, image_size=64, patch_size=16, width=128, layers=4, heads=4, vision_width=96,
                      vision_layers=2, vision_heads=3, embed_dim=48)
    learner = fastprompt.RPPLearner.from_model(model, NAMES, depth=2, n_ctx=4)
    images, labels = _images(6, size=64), torch.tensor([0, 1, 2, 3, 4, 5])
    opt = torch.optim.SGD(learner.trainable_parameters(), lr=0.05, momentum=0.9)
    first = None
    for _ in range(15):
        opt.zero_grad()
        loss = learner.loss(images, labels)
        loss.backward()
        opt.step()
        first = float(loss.detach()) if first is None else first
    assert float(learner.loss(images, labels).detach()) < 0.9 * first


@pytest.mark.slow
def test_vit_b16_rpp_matches_reference(vit_b16):
    names = ["goldfish", "great white shark", "tiger shark"]
    learner, reference = _pair(vit_b16, dict(teacher_templates="single"), names=names)  # defaults: both, J=9, M=4
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert_close_rel(learner(images), reference(images), FP32.parity, "logits")
    loss, ref_loss = learner.loss(images, torch.tensor([2])), reference.loss(images, torch.tensor([2]))
    assert_close_rel(loss, ref_loss, FP32.parity, "loss")
    names, params, ref_params = _params(learner, reference)
    for name, g, r in zip(names, _grads(loss, params), _grads(ref_loss, ref_params)):
        assert_close_rel(g, r, FP32.gradient_parity, f"grad {name}")


class _WrappedTokenizer:
    """An open_clip ``HFTokenizer``'s shape: no ``encode``, a wrapped ``tokenizer(text,
    add_special_tokens=False)`` and a ``clean_fn``; ids and calls delegate to CLIP's BPE tokenizer."""

    def __init__(self, bpe):
        self._bpe, self.clean_fn = bpe, (lambda text: text)
        self.tokenizer = lambda text, add_special_tokens=False: {"input_ids": bpe.encode(text)}

    def __call__(self, texts, context_length=None):
        return self._bpe(texts) if context_length is None else self._bpe(texts, context_length)


def test_ctx_init_is_counted_with_a_tokenizer_that_has_no_encode(tiny3):
    """A Hugging Face-wrapped tokenizer has no ``encode``: the ctx_init length check used to call it."""
    from open_clip.tokenizer import SimpleTokenizer

    bpe = SimpleTokenizer()
    learners = []
    for tokenizer in (bpe, _WrappedTokenizer(bpe)):
        torch.manual_seed(0)  # the deep prompts are drawn: the same draws for both
        learners.append(fastprompt.RPPLearner.from_model(tiny3, NAMES, depth=2, ctx_init="a photo of a",
                                                         tokenizer=tokenizer))
    plain, wrapped = learners
    images = random_images(2)
    with torch.no_grad():
        assert torch.equal(plain(images), wrapped(images))
