"""Deep text prompts (MaPLe, PromptSRC/IVLP, RPP's text branch) on text towers without a causal
mask (issue 24): SigLIP (``last`` pooling, no start token, context 64), CLIPA (``last`` pooling,
BERT's layout) and MobileCLIP-S (``argmax`` pooling), scaled-down random-weight builds
(:func:`~fastprompt.testing.scaled_models.scaled_clip`) and a tower with open_clip's padding mask.

The fast path encodes every class at full length (packed to its unmasked tokens where padding is
masked) with the prompt rows of every layer written into each sequence's own rows; the literal
references (``fastprompt.reference.deep``, ``reference.rpp``) run the open_clip blocks over the full
sequences with the tower's own mask and pooling. Compared here: text features and the gradients of
every prompt, through the learner's own text path (the plan and the ``TextTower.encode`` call the
learners make: the image side of the scaled SigLIP/MobileCLIP is a timm trunk, not under test).

Float64 throughout: the comparison is of the layout and the insertion semantics, which float64
resolves to ~1e-15, so ``FP64.exact`` holds without depending on float32 rounding. The towers get
a third text layer (a perturbed copy of the last), so that a depth-2 prompt has a layer whose
prompt outputs are overwritten (0), one whose outputs survive (1) and an unprompted layer that
reads them (2), the case where bidirectional attention lets every class token read them.
"""
import copy
import functools

import pytest
import torch

import fastprompt
from fastprompt.learners.prompts import coop_plan, leading_context_template, text_start
from fastprompt.reference import ReferenceRPP
from fastprompt.reference.deep import ReferenceIVLPTextEncoder, ReferenceMaPLeTextEncoder
from fastprompt.reference.prompt_common import register_class_prompts
from fastprompt.reference.text_encoder import text_tower
from fastprompt.testing import FP64, assert_close_rel, assert_gradient_flows
from fastprompt.testing.scaled_models import scaled_clip
from fastprompt.towers import TextTower, UnpromptableTextTowerError

from test_text_towers import _tower

NAMES = ["cat", "sea lion", "jack-o'-lantern", "golden retriever"]
TOWERS = ["ViT-B-16-SigLIP", "ViT-L-14-CLIPA", "MobileCLIP-S1"]
N_CTX = 2


def _deepened(model):
    """``model`` in float64 with a third text layer: a copy of the last one, moved off it (seeded)."""
    model = copy.deepcopy(model).double()
    blocks = text_tower(model).transformer.resblocks
    extra = copy.deepcopy(blocks[-1])
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in extra.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    blocks.append(extra)
    return model


@functools.lru_cache(maxsize=None)
def _model(name: str):
    if name == "padmask":  # bidirectional, ``last`` pooled, use_pad_mask: the pooled row is masked padding
        model, tokenizer = _tower("padmask")
    else:
        model, tokenizer = scaled_clip(name)
    return _deepened(model), tokenizer


class _Buffers(torch.nn.Module):
    """Holds the reference's CoOp buffers (``token_prefix``, ``token_suffix``, ``tokenized_prompts``)."""


def _overrides_pair(name: str, method: str, depth: int):
    """Fast and reference text features of MaPLe / IVLP deep prompts (``depth`` prompted layers) from
    the same context and deep prompts: ``(fast, reference, params)``, each a function of ``params``."""
    model, tokenizer = _model(name)
    tower = TextTower(model)
    template = leading_context_template(tokenizer, N_CTX, "a photo of a", context_length=tower.context_length)
    plan = coop_plan(tokenizer, NAMES, template, position="end", context_length=tower.context_length)
    gen = torch.Generator().manual_seed(0)
    ctx = (0.02 * torch.randn(N_CTX, tower.width, generator=gen, dtype=torch.float64)).requires_grad_()
    # Parameters: IVLP's reference blocks own them (``VPT_shallow``); large enough to move every feature
    deep = [torch.nn.Parameter(0.5 * torch.randn(N_CTX, tower.width, generator=gen, dtype=torch.float64))
            for _ in range(depth - 1)]
    buffers = _Buffers()
    register_class_prompts(buffers, text_tower(model), tokenizer, NAMES, "a photo of a", N_CTX)
    start = text_start(tokenizer)
    if method == "maple":
        encoder = ReferenceMaPLeTextEncoder(model, N_CTX, start=start)
    else:
        encoder = ReferenceIVLPTextEncoder(model, N_CTX, depth, start=start)
        blocks = [b for b in encoder.transformer.resblocks if getattr(b, "add_prompt", False)]
        assert len(blocks) == len(deep)
        for block, rows in zip(blocks, deep):  # the learner's deep prompts are the blocks' own parameters
            block.VPT_shallow = rows

    def reference():
        prompts = torch.cat([buffers.token_prefix, ctx.expand(len(NAMES), -1, -1), buffers.token_suffix], 1)
        if method == "maple":
            return encoder(prompts, buffers.tokenized_prompts, deep)
        return encoder(prompts, buffers.tokenized_prompts)

    def fast():  # MaPLeLearner.text_features / PromptSRCLearner.text_features
        return tower.encode(plan, ctx, prefix_overrides=[None] + deep)

    return fast, reference, [ctx] + deep


def _rpp_pair(name: str, **cfg):
    """RPPLearner (``branches="text"``: any image tower) and ReferenceRPP with the same prompts."""
    model, tokenizer = _model(name)
    torch.manual_seed(0)
    reference = ReferenceRPP(model, NAMES, branches="text", kl_weight=0.0, tokenizer=tokenizer, **cfg)
    learner = fastprompt.RPPLearner.from_model(model, NAMES, branches="text", kl_weight=0.0, tokenizer=tokenizer,
                                               **cfg)
    learner.load_original_state_dict(reference.prompt_learner.state_dict())
    learner.double()  # its prompts were created in float32: both sides from the same float64 values
    named = [(n, p) for n, p in learner.trainable_named_parameters()]
    params = [p for _, p in named]
    ref_params = [getattr(reference.prompt_learner, n) for n, _ in named]
    with torch.no_grad():
        for p, r in zip(params, ref_params):
            r.copy_(p)
    return learner.text_features, reference.encode_text, params, ref_params, [n for n, _ in named]


def _compare(fast, reference, params, ref_params, names):
    """Features, and the gradients of a fixed projection of them, to ``FP64.exact``."""
    feats, ref_feats = fast(), reference()
    assert_close_rel(feats, ref_feats, FP64.exact, "text features")
    weights = torch.randn(ref_feats.shape, generator=torch.Generator().manual_seed(1), dtype=ref_feats.dtype)
    grads = torch.autograd.grad((feats * weights).sum(), params, allow_unused=True, materialize_grads=True)
    ref_grads = torch.autograd.grad((ref_feats * weights).sum(), ref_params, allow_unused=True,
                                    materialize_grads=True)
    for name, g, r in zip(names, grads, ref_grads):
        assert_close_rel(g, r, FP64.exact, f"grad {name}")
    return grads


@pytest.mark.parametrize("method", ["maple", "ivlp"])
@pytest.mark.parametrize("depth", [2, 3])
@pytest.mark.parametrize("name", TOWERS + ["padmask"])
def test_deep_overrides_match_the_full_length_reference(name, method, depth):
    """Depth 2: the layer-1 prompt rows' outputs propagate through layer 2; depth 3: every layer
    prompted, the last one's prompt rows only keys and values of the pooled rows."""
    fast, reference, params = _overrides_pair(name, method, depth)
    names = ["ctx"] + [f"deep.{i}" for i in range(depth - 1)]
    grads = _compare(fast, reference, params, params, names)
    for name_, g in zip(names, grads):  # every prompt reaches every class feature
        assert_gradient_flows(g, name_)


RPP_CONFIGS = [dict(depth=1), dict(depth=2), dict(depth=3), dict(depth=2, variant="post"),
               dict(depth=2, shared=True), dict(depth=1, variant="post", residual_row="mean")]


@pytest.mark.parametrize("cfg", RPP_CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("name", TOWERS + ["padmask"])
def test_rpp_text_prompts_match_the_full_length_reference(name, cfg):
    fast, reference, params, ref_params, names = _rpp_pair(name, **cfg)
    grads = _compare(fast, reference, params, ref_params, names)
    for n, g in zip(names, grads):
        if not n.endswith("_q"):  # query prompts act only where a prompt row's output survives
            assert_gradient_flows(g, n)
    if cfg["depth"] < 3 and not cfg.get("shared"):  # layer J-1 < L-1: its query prompt drives surviving rows
        assert_gradient_flows(grads[names.index("text_q")], "text_q")


def test_a_bidirectional_plan_keeps_its_savings_and_puts_the_prompts_in_every_sequence():
    """No prefix is shared on a bidirectional tower, so the prompt rows are rows start..start+M-1 of
    every class's own sequence (full length without a padding mask, packed with one)."""
    for name, full in (("ViT-B-16-SigLIP", True), ("padmask", False)):
        model, tokenizer = _model(name)
        tower = TextTower(model)
        template = leading_context_template(tokenizer, N_CTX, "a photo of a", context_length=tower.context_length)
        plan = tower.layout(coop_plan(tokenizer, NAMES, template, position="end",
                                      context_length=tower.context_length))
        start, rows = plan.deep_prompt_rows(N_CTX)
        assert plan.prefix_len == 0 and start == text_start(tokenizer) == 0
        seq_starts = torch.cumsum(plan.seqlens, 0) - plan.seqlens
        expect = (seq_starts[:, None] + torch.arange(N_CTX)).flatten()
        assert rows.tolist() == expect.tolist()
        assert (plan.seqlens == tower.context_length).all().item() is full
        assert plan.positions[rows].tolist() == list(range(N_CTX)) * len(NAMES)


def test_deep_prompts_in_a_shared_prefix_stay_there():
    model, tokenizer = scaled_clip("ViT-B-32")
    tower = TextTower(model)
    plan = tower.layout(coop_plan(tokenizer, NAMES, leading_context_template(tokenizer, N_CTX), position="end"))
    assert plan.deep_prompt_rows(N_CTX) == (1, None)  # after [SOT], in the prefix all classes share


def test_a_pooled_prompt_row_is_refused_by_name():
    """The one ill-defined case: a tower pooling a row the deep prompts replace (``first`` pooling
    with a tokenizer that writes no start token) would read a prompt row's own output."""
    model, tokenizer = scaled_clip("ViT-B-16-SigLIP")
    model = copy.deepcopy(model)
    model.text.pool_type = "first"
    with pytest.raises(UnpromptableTextTowerError,
                       match=r"pools sequence 0 at position 0, one of the deep prompt rows 0\.\.1 .* use a learner"):
        fastprompt.RPPLearner.from_model(model, NAMES, branches="text", depth=2, n_ctx=N_CTX, kl_weight=0.0,
                                         tokenizer=tokenizer)


def test_deep_prompts_of_different_lengths_are_refused():
    model, tokenizer = _model("ViT-B-16-SigLIP")
    tower = TextTower(model)
    plan = coop_plan(tokenizer, NAMES, leading_context_template(tokenizer, N_CTX), position="end",
                     context_length=tower.context_length)
    ctx = torch.zeros(N_CTX, tower.width, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"replace \[2, 3\] rows in different layers"):
        tower.encode(plan, ctx, prefix_overrides=[None, ctx, torch.zeros(3, tower.width, dtype=torch.float64)])


def _whole_pair(towers, build: str, model, tokenizer):
    """A learner/reference pair of test_reference_towers for ``build``, ready for float64: RPP without
    the teacher's KL (its teacher features are float32 by design), PromptSRC with its frozen text
    targets refreshed from the reference after ``double()``."""
    if build == "rpp":
        return towers._rpp(model, tokenizer, branches="both", depth=2, kl_weight=0.0)
    pair = getattr(towers, build)(model, tokenizer)
    if build == "promptsrc":
        pair.float32_buffers = lambda: [(pair.learner.zs_text_features, pair.reference.prompt_learner.fixed_embeddings)]
    return pair


@pytest.mark.parametrize("build", ["maple", "promptsrc", "rpp"])
@pytest.mark.parametrize("kind", ["siglip", "mobileclip-s", "padmask"])
def test_a_whole_learner_step_matches_its_reference_over_a_bidirectional_text_tower(kind, build):
    """The learners themselves (both towers prompted) on the bidirectional text towers of
    tests/test_text_towers.py, whose image side is a tiny open_clip ViT: logits, loss and every
    prompt gradient against the literal references, in float64 (see the module docstring: in
    float32 the SigLIP pairs measured up to half of ``FP32``'s tolerances, too close to rely on)."""
    import test_reference_towers as towers

    model, tokenizer = _tower(kind)
    model = model.requires_grad_(False).double()  # frozen as a learner's is (the pairs perturb what is trainable)
    pair = _whole_pair(towers, build, model, tokenizer)
    towers._in_float64(pair)
    towers.compare(pair, towers._images(model).double(), torch.tensor(towers.LABELS), FP64)


def test_a_prompt_row_masked_as_padding_is_refused_by_name():
    """The other ill-defined case: a prompt position the tower never computes (masked as padding)."""
    from fastprompt.towers.text_plan import build_text_plan, ctx_source
    from fastprompt.towers.text_semantics import TextSemantics

    ids = torch.tensor([[5, 0, 7, 9, 0, 0]])  # position 1 holds the padding id: masked as a key, never computed
    sources = [[ctx_source(0), ctx_source(1)]]
    plan = build_text_plan(sources, ids, semantics=TextSemantics(causal=False, pool="last", pad_mask=True))
    with pytest.raises(UnpromptableTextTowerError, match=r"sequence 0 has no row at some of positions 0\.\.1, .* use a"):
        plan.deep_prompt_rows(2)
