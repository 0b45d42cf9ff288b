"""Text towers beyond CLIP's causal, argmax-pooled one (issue 24): exact, batched, and fast only
where the math allows.

Each tower is a scaled-down random-weight build of a real open_clip config (fewer layers and a
smaller width, the same tower type: mask, pooling, CLS, projection and context length from the
config), with a tiny open_clip ViT image side (the image tower is frozen and not under test here):

* ``siglip``: ViT-B-16-SigLIP's text (bidirectional, no padding mask, ``last`` pooling, Linear
  projection with bias, context length 64);
* ``siglip-noproj``: ViT-SO400M-16-SigLIP-i18n-256's text (the same, without ``text_projection``);
* ``mobileclip-s``: MobileCLIP-S1's text (bidirectional, ``argmax`` pooling, CLIP's tokenizer);
* ``worldwide``: ViT-L-14-worldwide's text (causal, ``eos`` pooling of id 1);
* ``coca`` / ``coca-correct``: coca_ViT-B-32's text (causal, CLS appended, open_clip's legacy mask /
  ``correct_cls_mask=True``, context length 76);
* ``padmask``: a bidirectional ``last``-pooled tower with ``use_pad_mask`` (no released config
  sets it; open_clip's TextTransformer supports it): its pooled row is a masked padding row.

SigLIP's and mT5's tokenizers need ``transformers`` and a download, which the tests cannot have:
:class:`StandInSentencePiece` has their special-token layout (no start token, EOS after the
text, SigLIP's padding with EOS or mT5's with 0, canonicalized text) over CLIP's BPE.
"""
import copy

import open_clip
import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer, get_clean_fn

import fastprompt
from fastprompt.learners.prompts import context_template, coop_plan, text_start
from fastprompt.reference import ReferenceCoCoOp, ReferenceCoOp
from fastprompt.testing import FP32, FP64, assert_close_rel, random_images
from fastprompt.towers import TextTower

NAMES = ["cat", "sea lion", "jack-o'-lantern", "golden retriever"]
SPECIALS = 3  # ids 0 (pad), 1 (EOS), 2 (unk) of the sentencepiece vocabularies; text ids come after


class StandInSentencePiece:
    """The special-token layout of SigLIP's (``pad_id = eos_id = 1``, big_vision's "sticky" EOS)
    and mT5's (``pad_id = 0``, ``eos_id = 1``) tokenizers: the text's ids, then EOS, then padding
    to ``context_length``; no start token. Text ids are CLIP BPE ids + 3, after open_clip's
    ``canonicalize`` cleaning (lowercase, no punctuation) that the SigLIP configs ask for."""

    def __init__(self, context_length: int, pad_id: int, eos_id: int = 1):
        self.context_length, self.pad_id, self.eos_id = context_length, pad_id, eos_id
        self._bpe, self._clean = SimpleTokenizer(), get_clean_fn("canonicalize")

    def encode(self, text: str):
        return [i + SPECIALS for i in self._bpe.encode(self._clean(text))]

    def __call__(self, texts):
        texts = [texts] if isinstance(texts, str) else texts
        out = torch.full((len(texts), self.context_length), self.pad_id, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = self.encode(text)[:self.context_length - 1] + [self.eos_id]  # truncated rows keep EOS
            out[i, :len(ids)] = torch.tensor(ids)
        return out


TINY_VISION = dict(image_size=32, layers=2, width=32, patch_size=16, head_width=16)


def _build(config: str, seed: int, **text):
    """A scaled-down random-weight open_clip model of ``config``: its text config with width 32, 2
    heads, 2 layers (and ``text``), a tiny ViT image side, a 16-dim embedding (no projection: the width)."""
    from open_clip.coca_model import CoCa
    from open_clip.model import CustomTextCLIP

    cfg = copy.deepcopy(open_clip.get_model_config(config))
    cfg["text_cfg"].update(width=32, heads=2, layers=2, **text)
    cfg["vision_cfg"] = dict(TINY_VISION)
    cfg["embed_dim"] = 32 if cfg["text_cfg"].get("proj_type") == "none" else 64
    cfg.pop("custom_text", None)
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if "multimodal_cfg" in cfg:
            cfg["multimodal_cfg"].update(width=32, heads=2, layers=1)
            cfg["vision_cfg"].update(attentional_pool=True, attn_pooler_heads=2, output_tokens=True)
            model = CoCa(**cfg)
        else:
            model = CustomTextCLIP(**cfg)
    finally:
        torch.random.set_rng_state(gen_state)
    return model.eval()


def _tower(kind: str):
    """``(model, tokenizer)`` of one tower kind (see the module docstring)."""
    vocab = dict(vocab_size=49408 + SPECIALS)
    if kind == "siglip":
        return _build("ViT-B-16-SigLIP", 0, **vocab), StandInSentencePiece(64, pad_id=1)
    if kind == "siglip-noproj":
        return _build("ViT-SO400M-16-SigLIP-i18n-256", 1, **vocab), StandInSentencePiece(64, pad_id=1)
    if kind == "mobileclip-s":
        model = _build("MobileCLIP-S1", 2)
        return model, open_clip.get_tokenizer("MobileCLIP-S1")
    if kind == "worldwide":
        return _build("ViT-L-14-worldwide", 3, **vocab), StandInSentencePiece(77, pad_id=0)
    if kind in ("coca", "coca-correct"):
        model = _build("coca_ViT-B-32", 4)
        model.text.correct_cls_mask = kind == "coca-correct"
        return model, SimpleTokenizer(context_length=model.context_length)
    assert kind == "padmask"
    model = _build("ViT-B-16-SigLIP", 5, context_length=24, **vocab)
    model.text.use_pad_mask = True  # what TextTransformer(use_pad_mask=True, no_causal_mask=True) sets
    return model, StandInSentencePiece(24, pad_id=0)


KINDS = ["siglip", "siglip-noproj", "mobileclip-s", "worldwide", "coca", "coca-correct", "padmask"]


@pytest.fixture(scope="module", params=KINDS)
def tower_kind(request):
    model, tokenizer = _tower(request.param)
    return request.param, model, tokenizer


def _encode_text(model, ids):
    with torch.no_grad():
        return model.encode_text(ids, normalize=False)


def test_coop_from_ctx_init_is_the_models_own_zero_shot_feature(tower_kind):
    """CoOp initialised from "a photo of a" encodes exactly ``encode_text(tokenizer(prompts))``."""
    kind, model, tokenizer = tower_kind
    learner = fastprompt.CoOpLearner.from_model(model, NAMES, ctx_init="a photo of a", tokenizer=tokenizer)
    with torch.no_grad():
        got = learner.text_features()
    want = _encode_text(model, tokenizer([f"a photo of a {name}." for name in NAMES]))
    assert_close_rel(got, want, FP32.parity, f"{kind} text features")


def test_frozen_prompts_are_the_models_own_features(tower_kind):
    kind, model, tokenizer = tower_kind
    ids = tokenizer([f"itap of a {name}." for name in NAMES] + ["a photo of many dogs and a cat."])
    with torch.no_grad():
        got = TextTower(model).encode_token_ids(ids)
    assert_close_rel(got, _encode_text(model, ids), FP32.parity, f"{kind} text features")


def test_a_training_step_has_finite_gradients(tower_kind):
    kind, model, tokenizer = tower_kind
    learner = fastprompt.CoOpLearner.from_model(model, NAMES, n_ctx=3, tokenizer=tokenizer)
    loss = learner.loss(random_images(2), torch.tensor([0, 3]))
    loss.backward()
    grad = learner.ctx.grad
    assert torch.isfinite(loss) and grad is not None and torch.isfinite(grad).all()
    assert grad.abs().max() > 0, f"{kind}: the context gets no gradient"


def _compare_step_fp64(learner, ref, params, ref_params, images, labels):
    """One step of ``learner`` and ``ref`` in float64 from the same prompts (the learner's float32
    init copied over): logits, loss and every gradient to FP64.exact. In float32 the comparison
    would measure rounding, not the layout: SigLIP's logit scale 10 and bias -10 leave a nearly
    flat loss whose gradients (~5e-4) cancel to a few 1e-5 relative."""
    learner.double()
    with torch.no_grad():
        for p, r in zip(params, ref_params):
            r.copy_(p.to(r.dtype))
    images = images.double()
    assert_close_rel(learner(images), ref(images), FP64.exact, "logits")
    loss, ref_loss = learner.loss(images, labels), ref.loss(images, labels)
    assert_close_rel(loss, ref_loss, FP64.exact, "loss")
    for i, (g, r) in enumerate(zip(torch.autograd.grad(loss, params), torch.autograd.grad(ref_loss, ref_params))):
        assert_close_rel(g, r, FP64.exact, f"grad {i}")


def test_coop_and_cocoop_match_the_full_length_reference(tower_kind):
    """Random context, one step: logits, loss and gradients against the literal reference (every
    class at the model's context length through open_clip's own transformer, mask and pooling)."""
    kind, model, tokenizer = tower_kind
    model = copy.deepcopy(model).double()
    images, labels = random_images(3), torch.tensor([0, 3, 2])
    torch.manual_seed(1)
    ref = ReferenceCoOp(model, NAMES, n_ctx=4, tokenizer=tokenizer)
    learner = fastprompt.CoOpLearner.from_model(model, NAMES, n_ctx=4, tokenizer=tokenizer)
    learner.load_original_state_dict(ref.prompt_learner.state_dict())
    _compare_step_fp64(learner, ref, [learner.ctx], [ref.prompt_learner.ctx], images, labels)
    torch.manual_seed(1)
    ref = ReferenceCoCoOp(model, NAMES, ctx_init="", tokenizer=tokenizer)
    learner = fastprompt.CoCoOpLearner.from_model(model, NAMES, n_ctx=4, ctx_init="", tokenizer=tokenizer)
    learner.load_original_state_dict(ref.prompt_learner.state_dict())
    params = [learner.ctx] + list(learner.meta_net.parameters())
    ref_params = [ref.prompt_learner.ctx] + list(ref.prompt_learner.meta_net.parameters())
    _compare_step_fp64(learner, ref, params, ref_params, images, labels)


@pytest.mark.parametrize("position", ["middle", "front"])
def test_class_token_positions_match_the_reference_without_a_start_token(position):
    model, tokenizer = _tower("siglip")
    model = model.double()
    torch.manual_seed(2)
    ref = ReferenceCoOp(model, NAMES, n_ctx=4, class_token_position=position, tokenizer=tokenizer)
    learner = fastprompt.CoOpLearner.from_model(model, NAMES, n_ctx=4, class_token_position=position,
                                                tokenizer=tokenizer)
    learner.load_original_state_dict(ref.prompt_learner.state_dict())
    _compare_step_fp64(learner, ref, [learner.ctx], [ref.prompt_learner.ctx], random_images(2), torch.tensor([1, 2]))


# ---- which savings each tower's plan keeps ------------------------------------------------------

def _plan(kind):
    model, tokenizer = _tower(kind)
    tower = TextTower(model)
    template = context_template(tokenizer, 4)
    plan = coop_plan(tokenizer, NAMES, template, context_length=tower.context_length)
    return tower, tokenizer, tower.layout(plan)


def test_a_bidirectional_tower_encodes_every_prompt_at_full_length():
    """SigLIP attends over its padding with no mask: nothing may be cut or shared. All classes
    still go through one attention call per layer."""
    tower, _, plan = _plan("siglip")
    assert tower.context_length == 64 and not tower.semantics.causal
    assert plan.prefix_len == 0 and plan.seqlens.tolist() == [64] * len(NAMES)
    assert len(plan.buckets) == 1 and plan.buckets[0].seqlens is None
    assert plan.semantics.savings.startswith("none: full length")


def test_a_padding_mask_lets_the_plan_drop_the_padding():
    tower, tokenizer, plan = _plan("padmask")
    ids = tokenizer([f"X X X X {name}." for name in NAMES])
    assert plan.prefix_len == 0  # bidirectional: the context sees the class tokens
    assert plan.seqlens.tolist() == (ids != 0).sum(1).tolist()  # only the unmasked tokens are computed
    # the pooled last row is padding, masked as a key: a query-only row reading the kept keys
    assert plan.derived("query_seq").tolist() == list(range(len(NAMES)))
    assert "packing" in plan.semantics.savings


def test_coca_shares_the_prefix_and_reads_its_cls_as_a_query():
    tower, tokenizer, plan = _plan("coca")
    assert tower.context_length == 76 and tower.semantics.cls == "legacy"
    assert plan.prefix_len == 1 + 4  # [SOT][ctx]: causal, so sharing stays exact
    eot = tokenizer([f"X X X X {name}." for name in NAMES]).argmax(-1)
    # legacy mask: the CLS reads keys 0 .. EOT+1 (the validity of every key is shifted by one)
    assert (plan.prefix_len + plan.seqlens).tolist() == (eot + 2).tolist()
    assert plan.derived("query_seq").numel() == len(NAMES)


def test_eos_pooling_truncates_after_the_first_eos():
    tower, tokenizer, plan = _plan("worldwide")
    eos = (tokenizer([f"X X X X {name}." for name in NAMES]) == 1).int().argmax(-1)
    assert tower.semantics.pool == "eos" and plan.eot_positions.tolist() == eos.tolist()
    assert (plan.prefix_len + plan.seqlens).tolist() == (eos + 1).tolist()
    assert plan.prefix_len == 4  # no start token: the shared prefix is the context alone


def test_the_context_starts_where_the_tokenizer_puts_text():
    assert text_start(SimpleTokenizer()) == 1
    assert text_start(StandInSentencePiece(64, pad_id=1)) == 0


def test_deep_text_prompts_on_a_bidirectional_tower_go_into_every_full_length_sequence():
    """MaPLe's deep text prompts on SigLIP's text (no causal mask, no start token): not refused; the
    prompt rows are rows 0..M-1 of every class's own 64-token sequence (parity with the literal
    reference: tests/test_deep_text_bidirectional.py)."""
    model, tokenizer = _tower("siglip")
    learner = fastprompt.learners.LEARNERS["maple"].from_model(model, NAMES, prompt_depth=2, tokenizer=tokenizer)
    plan = learner.text_tower.layout(learner.plan)
    start, rows = plan.deep_prompt_rows(learner.ctx.shape[0])
    assert start == 0 and plan.prefix_len == 0 and rows.numel() == len(NAMES) * learner.ctx.shape[0]
    assert torch.isfinite(learner.text_features()).all()


def test_eos_pooling_with_a_tokenizer_that_never_writes_the_eos_is_refused():
    model, _ = _tower("worldwide")
    ids = SimpleTokenizer()(["a photo of a cat."])  # CLIP's BPE: no id 1 in this prompt
    with pytest.raises(ValueError, match="has no token 1 .* the tokenizer does not match the text tower"):
        TextTower(model).encode_token_ids(ids)


def test_a_prompt_cut_by_a_sticky_eos_tokenizer_is_refused():
    """SigLIP's tokenizer pads with its EOS, so a cut prompt ends like any other: it is measured."""
    model, tokenizer = _tower("siglip")
    long_name = " ".join(["dog"] * 70)
    with pytest.raises(ValueError, match=r"is \d+ tokens long .* context length is 64"):
        fastprompt.CoOpLearner.from_model(model, ["cat", long_name], n_ctx=2, tokenizer=tokenizer)
