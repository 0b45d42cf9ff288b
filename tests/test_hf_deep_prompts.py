"""Deep text prompts inside Hugging Face text towers (RoBERTa, XLM-R, mT5, NLLB; issue 24).

``HFTextTower.encode`` writes MaPLe's / IVLP's prompt rows into each prompt's hidden states at the
input of every prompted ``transformers`` encoder layer (forward pre-hooks on the model's own
forward); the literal reference (``fastprompt.reference.hf_text``) runs the model layer by layer at
the tokenizer's full length and writes the rows itself. Compared here: text features and every
prompt gradient (text only, ``depth`` 2 and 3 on a tower with a third layer), and whole MaPLe /
PromptSRC steps (logits, loss, every trainable gradient) against ``ReferenceMaPLe`` /
``ReferencePromptSRC``, whose text encoder is the Hugging Face reference on these towers.

Float64 throughout, as tests/test_deep_text_bidirectional.py: the comparison is of the insertion
semantics and the layout (full length vs the kept width, hooks vs a written-out loop), which float64
resolves to ~1e-15, so ``FP64.exact`` holds without depending on float32 rounding.
"""
import copy
import functools

import pytest
import torch

import fastprompt
from fastprompt.learners import LEARNERS
from fastprompt.learners.prompts import coop_plan, leading_context_template, text_start
from fastprompt.reference.hf_text import ReferenceHFIVLPTextEncoder, ReferenceHFMaPLeTextEncoder
from fastprompt.reference.prompt_common import tokenize_each
from fastprompt.testing import FP64, assert_close_rel, assert_gradient_flows
from fastprompt.testing.backbone_table import CLASSNAMES
from fastprompt.testing.scaled_models import scaled_clip
from fastprompt.towers import UnpromptableTextTowerError
from fastprompt.towers.hf_text import HFTextTower, encoder_layers

from test_deep_text_bidirectional import _whole_pair

pytest.importorskip("transformers")

FAMILIES = ["roberta-ViT-B-32", "xlm-roberta-base-ViT-B-32", "mt5-base-ViT-B-32", "nllb-clip-base"]
NAMES = ["cat", "sea lion", "a very long and winding name of a golden retriever puppy", "jack-o'-lantern"]
N_CTX = 2


@functools.lru_cache(maxsize=None)
def _model(name: str, layers: int = 2):
    """The scaled model in float64 (frozen, as a learner keeps it), its text tower deepened to
    ``layers`` layers with perturbed copies of the last one (seeded), so that a depth-2 prompt has an
    overwritten layer, a surviving one and an unprompted reader."""
    from open_clip.hf_configs import arch_dict

    model, tokenizer = scaled_clip(name)
    model = copy.deepcopy(model).double().requires_grad_(False).eval()
    blocks = encoder_layers(model.text.transformer)
    gen = torch.Generator().manual_seed(3)
    while len(blocks) < layers:
        extra = copy.deepcopy(blocks[-1])
        with torch.no_grad():
            for p in extra.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        blocks.append(extra)
    config = model.text.config
    setattr(config, arch_dict[config.model_type]["config_names"]["layers"], len(blocks))
    return model, tokenizer


def _tower_and_plan(name: str, layers: int = 2, names=NAMES, ctx_init: str = "a photo of a"):
    """``(model, tokenizer, tower, plan)``: :func:`_model`'s tower and the leading-context plan the
    learners build (``n_ctx = N_CTX``, the class names after the context)."""
    model, tokenizer = _model(name, layers)
    tower = HFTextTower(model, context_length=int(tokenizer([""]).shape[1]))
    template = leading_context_template(tokenizer, N_CTX, ctx_init, context_length=tower.context_length)
    return model, tokenizer, tower, coop_plan(tokenizer, names, template, position="end",
                                              context_length=tower.context_length)


def _override_pair(name: str, method: str, depth: int):
    """``(fast, reference, params)``: MaPLe / IVLP text features from the same context and deep
    prompts through the learners' call (``HFTextTower.encode`` with ``prefix_overrides``) and the
    literal reference on the original's CoOp prompts (``"<ctx_init> <name>."``, context rows replaced)."""
    model, tokenizer, tower, plan = _tower_and_plan(name, layers=3)
    gen = torch.Generator().manual_seed(0)
    # large enough (0.5, not the learners' 0.02) that every prompt moves every feature measurably
    ctx, *deep = [torch.nn.Parameter(0.5 * torch.randn(N_CTX, tower.width, generator=gen, dtype=torch.float64))
                  for _ in range(depth)]
    start = text_start(tokenizer)
    ids = tokenize_each(tokenizer, [f"a photo of a {n}." for n in NAMES])
    words = tower.embed_tokens(ids)
    if method == "maple":
        encoder = ReferenceHFMaPLeTextEncoder(model, N_CTX, start=start)
    else:
        encoder = ReferenceHFIVLPTextEncoder(model, N_CTX, depth, start=start)
        owners = [layer for layer in encoder.transformer.resblocks if layer.add_prompt]
        assert len(owners) == len(deep)
        for owner, rows in zip(owners, deep):  # the learner's deep prompts are the layers' own parameters
            owner.VPT_shallow = rows

    def reference():
        prompts = torch.cat([words[:, :start], ctx.expand(len(NAMES), -1, -1), words[:, start + N_CTX:]], 1)
        return encoder(prompts, ids, deep) if method == "maple" else encoder(prompts, ids)

    def fast():  # MaPLeLearner.text_features / PromptSRCLearner.text_features
        return tower.encode(plan, ctx, prefix_overrides=[None] + deep)

    return fast, reference, [ctx] + deep


@pytest.mark.parametrize("method", ["maple", "ivlp"])
@pytest.mark.parametrize("depth", [2, 3])
@pytest.mark.parametrize("name", FAMILIES)
def test_deep_overrides_match_the_layer_by_layer_reference(name, method, depth):
    """Depth 2: layer 1's prompt outputs propagate through layer 2; depth 3: every layer prompted."""
    fast, reference, params = _override_pair(name, method, depth)
    feats, ref_feats = fast(), reference()
    assert_close_rel(feats, ref_feats, FP64.exact, f"{name} text features")
    weights = torch.randn(ref_feats.shape, generator=torch.Generator().manual_seed(1), dtype=ref_feats.dtype)
    grads = torch.autograd.grad((feats * weights).sum(), params)
    ref_grads = torch.autograd.grad((ref_feats * weights).sum(), params)
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        assert_close_rel(g, r, FP64.exact, f"{name} grad of prompt {i}")
        assert_gradient_flows(g, f"prompt {i}")  # every prompt reaches the features: the comparison is not vacuous


@pytest.mark.parametrize("build", ["maple", "promptsrc"])
@pytest.mark.parametrize("name", FAMILIES)
def test_a_whole_learner_step_matches_its_reference_on_a_hugging_face_text_tower(name, build):
    """MaPLe (prompt_depth=2) and PromptSRC (text and vision depth 2), both towers prompted: logits,
    loss and every trainable gradient against ReferenceMaPLe / ReferencePromptSRC."""
    import test_reference_towers as towers

    model, tokenizer = scaled_clip(name)
    model = copy.deepcopy(model).requires_grad_(False).double()
    pair = _whole_pair(towers, build, model, tokenizer)
    towers._in_float64(pair)
    towers.compare(pair, towers._images(model).double(), torch.tensor(towers.LABELS), FP64)


def test_the_relative_position_bias_of_mt5_reaches_every_prompted_layer():
    """mT5's block 0 computes the relative position bias (padding mask added) and hands it on; a
    prompt at layer 1 leaves it as it is: the block's inputs other than the hidden rows are the
    model's own."""
    model, _, tower, plan = _tower_and_plan("mt5-base-ViT-B-32")
    ctx = torch.zeros(N_CTX, tower.width, dtype=torch.float64)
    seen = []
    hook = model.text.transformer.block[1].register_forward_pre_hook(
        lambda module, args: seen.append(args[2].clone()))
    try:
        with torch.no_grad():
            tower.encode(plan, ctx)
            tower.encode(plan, ctx, prefix_overrides=[None, torch.ones(N_CTX, tower.width, dtype=torch.float64)])
    finally:
        hook.remove()
    assert len(seen) == 2 and seen[0].abs().sum() > 0 and torch.equal(seen[0], seen[1])


@pytest.mark.parametrize("settings", [dict(branches="text", depth=2), dict(depth=1), dict(depth=2, variant="post")],
                         ids=["text", "both", "post"])
def test_rpps_unshared_text_prompts_are_refused_by_name(settings):
    """RPP's q/k/v prompts are heads inside transformers' attention: refused when the learner is
    built (not at its first step), naming what works."""
    model, tokenizer = scaled_clip("roberta-ViT-B-32")
    with pytest.raises(UnpromptableTextTowerError, match="RPP's text branch .*: use RPP with branches='vision'"):
        LEARNERS["rpp"].from_model(model, CLASSNAMES, tokenizer=tokenizer, kl_weight=0.0, **settings)


def test_rpp_with_tied_prompts_runs_as_ordinary_deep_prompts():
    model, tokenizer = scaled_clip("roberta-ViT-B-32")
    learner = fastprompt.RPPLearner.from_model(model, CLASSNAMES, tokenizer=tokenizer, branches="text", depth=2,
                                               shared=True, kl_weight=0.0)
    images = torch.randn(2, 3, *model.visual.image_size, generator=torch.Generator().manual_seed(0))
    learner.loss(images, torch.tensor([0, 1])).backward()
    for n, p in learner.trainable_named_parameters():
        assert_gradient_flows(p.grad, n)


def test_a_pooled_prompt_row_is_refused_by_name():
    """NLLB pools row 0 (``cls_pooler``); deep prompts starting there would be pooled themselves."""
    _, _, tower, plan = _tower_and_plan("nllb-clip-base", ctx_init="")
    assert tower.check_deep_prompts(plan, N_CTX) == 1  # after the language code
    with pytest.raises(UnpromptableTextTowerError, match=r"ClsPooler pools row 0, one of the deep prompt rows 0\.\.1"):
        tower.check_deep_prompts(plan, N_CTX, start=0)


def test_a_prompt_row_on_padding_is_refused_by_name():
    _, _, tower, plan = _tower_and_plan("roberta-ViT-B-32", names=["cat"], ctx_init="")
    last = int((plan.full_ids[0] != tower.pad_id).sum())  # the first padding position
    with pytest.raises(UnpromptableTextTowerError, match=f"prompt 0 has no token at some of positions {last - 1}"):
        tower.check_deep_prompts(plan, N_CTX, start=last - 1)


def test_bad_overrides_are_refused():
    _, _, tower, plan = _tower_and_plan("roberta-ViT-B-32", ctx_init="")
    ctx = torch.zeros(N_CTX, tower.width, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"replace \[2, 3\] rows in different layers"):
        tower.encode(plan, ctx, prefix_overrides=[ctx, torch.zeros(3, tower.width, dtype=torch.float64)])
    with pytest.raises(ValueError, match="3 entries but the text tower has 2 layers"):
        tower.encode(plan, ctx, prefix_overrides=[None, ctx, ctx])
    with pytest.raises(ValueError, match=r"prefix_overrides\[1\] must have shape"):
        tower.encode(plan, ctx, prefix_overrides=[None, torch.zeros(3, N_CTX, tower.width, dtype=torch.float64)])


def test_a_prompted_layer_the_model_skips_is_refused():
    """M2M100 drops encoder layers at random in training mode (``encoder_layerdrop``): a prompted
    layer dropped would lose its prompt silently."""
    model, tokenizer = _model("nllb-clip-base")
    model = copy.deepcopy(model)  # put in training mode below: not the cached one
    tower = HFTextTower(model, context_length=int(tokenizer([""]).shape[1]))
    _, _, _, plan = _tower_and_plan("nllb-clip-base", ctx_init="")
    ctx = torch.zeros(N_CTX, tower.width, dtype=torch.float64)
    model.text.transformer.train()
    model.text.transformer.layerdrop = 1.0
    with pytest.raises(ValueError, match=r"text layers \[1\] were skipped .* keep the frozen model in eval mode"):
        tower.encode(plan, ctx, prefix_overrides=[None, ctx])


@pytest.mark.parametrize("name", ["roberta-ViT-B-32", "mt5-base-ViT-B-32"])
def test_tcp_class_tokens_enter_a_hugging_face_text_tower(name):
    """TCP hands the tower its per-class tokens with ``regroup`` (one prefix group up to the insert
    layer, one per class after it); a Hugging Face tower runs every class at full length anyway, so
    the answer must equal encoding each class alone with its own tokens. It used to be a TypeError."""
    model, tokenizer = scaled_clip(name)
    model = copy.deepcopy(model).double()
    learner = fastprompt.TCPLearner.from_model(model, CLASSNAMES, tokenizer=tokenizer)
    assert isinstance(learner.text_tower, HFTextTower) and 0 < learner.insert_layer < learner.text_tower.layers
    tokens = learner.class_tokens()
    before = [None] * learner.insert_layer
    one_by_one = torch.cat([
        learner.text_tower.encode(learner.plan.select([c]), learner._ctx_table(), prefix_overrides=before + [tokens[c]],
                                  override_start=text_start(tokenizer))
        for c in range(len(CLASSNAMES))])
    assert_close_rel(learner.text_features(), one_by_one, FP64.exact, f"{name}: TCP text features")
    images = torch.randn(2, 3, *model.visual.image_size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    learner.loss(images, torch.tensor([0, 1])).backward()
    for n, p in learner.trainable_named_parameters():
        assert_gradient_flows(p.grad, n)
