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
from fastprompt.reference.hf_text import (_QKV, ReferenceHFIVLPTextEncoder, ReferenceHFMaPLeTextEncoder,
                                          ReferenceHFRPPTextEncoder)
from fastprompt.reference.prompt_common import tokenize_each
from fastprompt.testing import FP32, FP64, assert_close_rel, assert_gradient_flows
from fastprompt.testing.backbone_table import CLASSNAMES
from fastprompt.testing.scaled_models import scaled_clip
from fastprompt.towers import QKVPrompt, UnpromptableTextTowerError
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


def _rpp_learner(name: str, depth: int, variant: str = "pre", residual_row: str = "value", **settings):
    """RPP's text branch (``n_ctx = N_CTX``) on :func:`_model`'s three-layer tower, its q/k/v prompts
    replaced by float64 draws large enough (0.5) that every prompt moves the features measurably."""
    model, tokenizer = _model(name, layers=3)
    learner = fastprompt.RPPLearner.from_model(model, NAMES, tokenizer=tokenizer, branches="text", depth=depth,
                                               variant=variant, residual_row=residual_row, n_ctx=N_CTX,
                                               kl_weight=0.0, **settings)
    gen = torch.Generator().manual_seed(0)
    for part in "qkv":
        shape = getattr(learner, f"text_{part}").shape
        setattr(learner, f"text_{part}", torch.nn.Parameter(0.5 * torch.randn(shape, generator=gen, dtype=torch.float64)))
    return model, tokenizer, learner


def _rpp_reference(model, tokenizer, learner) -> torch.Tensor:
    """The literal reference's text features for the learner's prompts: every prompted layer's q, k,
    v and residual row written (the learner's residual rule), the input context = layer 0's residual."""
    start, ids = text_start(tokenizer), learner.plan.full_ids
    q, k, v = (getattr(learner, f"text_{part}") for part in "qkv")
    rows = []
    for j in range(learner.config.depth):
        residual = v[j] if learner.config.residual_row == "value" else (q[j] + k[j] + v[j]) / 3
        rows.append((q[j], k[j], v[j], residual.flatten(-2) if residual.dim() == 3 else residual))
    words = learner.text_tower.embed_tokens(ids)
    prompts = torch.cat([words[:, :start], rows[0][3].expand(len(ids), -1, -1), words[:, start + N_CTX:]], 1)
    return ReferenceHFRPPTextEncoder(model, N_CTX, start=start)(prompts, ids, rows)


@pytest.mark.parametrize("variant", ["pre", "post"])
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("name", FAMILIES)
def test_rpp_qkv_prompts_match_the_layer_by_layer_reference(name, depth, variant):
    """RPP's unshared q/k/v text prompts on a three-layer Hugging Face tower against the literal
    reference (q/k/v rows written after the projections at every prompted layer, full sequences):
    depth 1 (layer 0's rows survive), 2 (layer 1's), 3 (J-1 = the last layer: read by the mean
    poolers of RoBERTa / XLM-R / mT5, not by NLLB's CLS pooler). Text features and every prompt's
    gradient; the fast path never computes the queries whose outputs are overwritten, whose exact
    gradient is zero."""
    model, tokenizer, learner = _rpp_learner(name, depth, variant)
    params = [getattr(learner, f"text_{part}") for part in "qkv"]
    feats, ref_feats = learner.text_features(), _rpp_reference(model, tokenizer, learner)
    assert_close_rel(feats, ref_feats, FP64.exact, f"{name} RPP text features")
    weights = torch.randn(ref_feats.shape, generator=torch.Generator().manual_seed(1), dtype=ref_feats.dtype)
    grads = torch.autograd.grad((feats * weights).sum(), params, allow_unused=True)
    ref_grads = torch.autograd.grad((ref_feats * weights).sum(), params)
    for part, g, r in zip("qkv", grads, ref_grads):
        g = torch.zeros_like(r) if g is None else g
        for j in range(depth):
            assert_close_rel(g[j], r[j], FP64.exact, f"{name} grad of text_{part}[{j}]")
    for part, g in zip("kv", ref_grads[1:]):  # keys and values act at every prompted layer: not vacuous
        for j in range(depth):
            assert_gradient_flows(g[j], f"text_{part}[{j}]")
    survives = depth < 3 or name != "nllb-clip-base"
    assert bool(ref_grads[0][depth - 1].abs().sum() > 0) == survives, "the surviving layer's query acts"


@pytest.mark.parametrize("name", ["roberta-ViT-B-32", "nllb-clip-base"])
def test_rpp_mean_residual_rows_match_the_reference(name):
    """``residual_row="mean"``: the residual rows ``(P^q + P^k + P^v) / 3`` at the input and at layer J-1."""
    model, tokenizer, learner = _rpp_learner(name, 2, residual_row="mean")
    assert_close_rel(learner.text_features(), _rpp_reference(model, tokenizer, learner), FP64.exact, name)


@pytest.mark.parametrize("name", FAMILIES)
def test_rpp_head_space_prompts_start_from_the_words_heads(name):
    """``variant="post"`` with ``ctx_init``: layer 0's q/k/v prompts are the heads the layer's
    projections give the phrase's words at their positions in the full prompt (reference: the
    embedding stage, pre-attention norm and projection of the whole tokenized prompt)."""
    model, tokenizer = _model(name)
    learner = fastprompt.RPPLearner.from_model(model, NAMES, tokenizer=tokenizer, branches="text", depth=1,
                                               variant="post", ctx_init="a photo of a", kl_weight=0.0)
    start, n = text_start(tokenizer), learner.n_ctx
    ids = tokenize_each(tokenizer, ["a photo of a cat."])
    words = learner.text_tower.embed_tokens(ids)
    reference = ReferenceHFRPPTextEncoder(model, n, start=start)
    for part, name_ in zip("qkv", _QKV[model.text.config.model_type][2]):
        heads = getattr(learner, f"text_{part}")[0]
        expected = reference.projected(0, name_, words[0, start:start + n], words, ids)[0]
        # the learner keeps its prompts in float32: one rounding of the float64 heads
        assert_close_rel(heads.double().flatten(-2), expected, FP32.rounding, f"{name} text_{part}[0]")


def test_rpp_needs_the_residual_rows_a_mean_pooler_reads():
    """Every layer prompted on a mean-pooled tower: the last layer's prompt-row outputs are pooled, so
    their residual rows are needed (a CLS pooler never reads them: NLLB runs without)."""
    for name, refused in (("roberta-ViT-B-32", True), ("nllb-clip-base", False)):
        _, _, tower, plan = _tower_and_plan(name, ctx_init="")
        rows = torch.zeros(N_CTX, tower.width, dtype=torch.float64)
        prompts = [QKVPrompt(rows, rows, rows, rows), QKVPrompt(rows, rows, rows)]
        if refused:
            with pytest.raises(ValueError, match=r"prefix_prompts\[1\]\.residual is needed: .*MeanPooler reads"):
                tower.encode(plan, rows, prefix_prompts=prompts)
        else:
            assert torch.isfinite(tower.encode(plan, rows, prefix_prompts=prompts)).all()


def test_rpp_head_space_prompts_on_narrower_heads_are_refused_by_name():
    """mT5's heads are ``num_heads * d_kv`` wide, which need not be ``d_model``: head-space prompts
    ``[M, H, d_model / H]`` and their width residual rows have no place there."""
    model, tokenizer = _model("mt5-base-ViT-B-32")
    model = copy.deepcopy(model)
    for block in encoder_layers(model.text.transformer):
        attention = block.layer[0].SelfAttention
        for part in "qkv":
            setattr(attention, part, torch.nn.Linear(attention.q.in_features, attention.q.in_features // 2,
                                                     bias=False, dtype=torch.float64))
    with pytest.raises(UnpromptableTextTowerError, match=r"heads are \[\d+\] wide .* use RPP with variant='pre'"):
        fastprompt.RPPLearner.from_model(model, NAMES, tokenizer=tokenizer, branches="text", depth=1,
                                         variant="post", ctx_init="a photo of a", kl_weight=0.0)


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
