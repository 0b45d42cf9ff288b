"""Hugging Face text towers (open_clip ``HFTextEncoder``: RoBERTa, XLM-R, mT5, NLLB) under the
input-level prompt learners, exactly (``fastprompt.towers.hf_text``).

The models are open_clip's own builds of each architecture scaled down offline
(:func:`fastprompt.testing.scaled_models.scaled_clip`: a tiny ``transformers`` config of the family,
the stand-in tokenizer). Equalities are ``FP32.parity``: the prompted path and ``encode_text`` are
two float32 computations of one function (inputs_embeds instead of input_ids, trailing padding
columns dropped, so the masked softmax and the sums run in another order).
"""
import functools

import open_clip
import pytest
import torch
from torch import nn

import fastprompt
from fastprompt.learners.base import default_tokenizer
from fastprompt.learners.zero_shot_cache import text_tower_fingerprint
from fastprompt.testing import FP32, assert_close_rel
from fastprompt.testing.backbone_table import outcome
from fastprompt.testing.scaled_models import scaled_clip
from fastprompt.towers import TextTower
from fastprompt.towers.hf_text import HFTextTower
from fastprompt.towers.text_tower_for import text_tower

pytest.importorskip("transformers")  # the towers are transformers models: nothing here runs without it

HF_ARCHITECTURES = [name for name in open_clip.list_models()
                    if open_clip.get_model_config(name)["text_cfg"].get("hf_model_name")]
# one architecture per family (RoBERTa, XLM-R, mT5, M2M100), each with an open_clip ViT image tower
FAMILIES = ["roberta-ViT-B-32", "xlm-roberta-base-ViT-B-32", "mt5-base-ViT-B-32", "nllb-clip-base"]
# class names of different lengths: prompts padded to different lengths, the longest setting the kept width
NAMES = ["cat", "sea lion", "a very long and winding name of a golden retriever puppy", "jack-o'-lantern"]


@functools.lru_cache(maxsize=1)
def _built(name: str):
    return scaled_clip(name)


@pytest.mark.parametrize("name", HF_ARCHITECTURES)
def test_coop_from_ctx_init_is_the_models_own_encode_text(name):
    model, tokenizer = _built(name)
    learner = fastprompt.CoOpLearner.from_model(model, NAMES, ctx_init="a photo of a", tokenizer=tokenizer)
    assert isinstance(learner.text_tower, HFTextTower)
    with torch.no_grad():
        got = learner.text_features()
        want = model.encode_text(tokenizer([f"a photo of a {c}." for c in NAMES]), normalize=False)
        frozen = learner.text_tower.encode_token_ids(tokenizer([f"a photo of a {c}." for c in NAMES]))
    assert_close_rel(got, want, FP32.parity, f"{name} prompted text features")
    assert_close_rel(frozen, want, FP32.parity, f"{name} frozen text features")


@pytest.mark.parametrize("position", ["middle", "front"])
@pytest.mark.parametrize("name", FAMILIES)
def test_context_anywhere_in_the_prompt_is_the_model_on_those_tokens(name, position):
    """CoOp's middle / front layouts: the context rows, set to the words they start from, give
    ``encode_text`` of the token rows with those words in the context slots."""
    model, tokenizer = _built(name)
    learner = fastprompt.CoOpLearner.from_model(model, NAMES, ctx_init="a photo of a", tokenizer=tokenizer,
                                                class_token_position=position)
    plan, template = learner.plan, learner.template
    words = template.init_ids[template.start:template.start + template.n_ctx]
    ids = plan.full_src.clone()
    ids[ids < 0] = words[-1 - ids[ids < 0]]
    with torch.no_grad():
        got = learner.text_features()
        want = model.encode_text(ids, normalize=False)
    assert_close_rel(got, want, FP32.parity, f"{name} {position}")


@pytest.mark.parametrize("name", FAMILIES)
def test_a_context_table_per_group_is_each_groups_own_encoding(name):
    model, tokenizer = _built(name)
    learner = fastprompt.CoOpLearner.from_model(model, NAMES, n_ctx=3, tokenizer=tokenizer)
    tower, plan = learner.text_tower, learner.plan
    tables = torch.randn(2, 3, tower.width, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        both = tower.encode(plan.repeat(2), tables)
        each = torch.cat([tower.encode(plan, tables[0]), tower.encode(plan, tables[1])])
    assert_close_rel(both, each, FP32.parity, f"{name} grouped context")


# Input-level text prompts (and the frozen text of VPT / RPP's vision branch), deep text prompts
# that replace hidden rows (MaPLe, PromptSRC, RPP with tied q/k/v) and RPP's unshared q/k/v prompts
# (pre / post projection, text and both branches; exactness: tests/test_hf_deep_prompts.py) run;
# settings small so that a step is cheap.
RUNNING = [("coop", dict(n_ctx=4)), ("cocoop", {}), ("kgcoop", {}), ("pre", {}), ("softcpt", {}),
           ("pomp", dict(num_sampled_classes=3)), ("vpt", dict(prompt_depth=2)), ("maple", dict(prompt_depth=1)),
           ("promptsrc", dict(prompt_depth_text=1, prompt_depth_vision=2)), ("rpp", dict(branches="vision", depth=2)),
           ("maple", dict(prompt_depth=2)), ("promptsrc", dict(prompt_depth_text=2, prompt_depth_vision=2)),
           ("rpp", dict(branches="text", depth=2, shared=True)), ("rpp", dict(branches="text", depth=2)),
           ("rpp", dict(depth=1)), ("rpp", dict(depth=2, variant="post", ctx_init="a photo of a"))]


@pytest.mark.parametrize("method,settings", RUNNING,
                         ids=[m + "".join(f"-{k}={v}" for k, v in s.items()) for m, s in RUNNING])
@pytest.mark.parametrize("name", FAMILIES)
def test_every_input_level_learner_takes_a_step_with_finite_gradients(name, method, settings):
    model, tokenizer = _built(name)
    assert outcome(model, tokenizer, method, settings).ok


def test_the_factory_picks_the_tower_of_the_models_text_side(tiny_model):
    model, tokenizer = _built("roberta-ViT-B-32")
    tower = text_tower(model, "auto", tokenizer)
    assert isinstance(tower, HFTextTower) and tower.context_length == tokenizer([""]).shape[1]
    assert (tower.width, tower.layers, tower.embed_dim) == (model.text.config.hidden_size,
                                                            model.text.config.num_hidden_layers, model.text.output_dim)
    assert isinstance(text_tower(tiny_model), TextTower)
    with pytest.raises(ValueError, match="pass the model's own tokenizer"):
        text_tower(model)


def test_the_default_tokenizer_refuses_a_hugging_face_text_tower():
    """CLIP's BPE ids would pick wrong rows of RoBERTa's word embedding without a word."""
    model, _ = _built("roberta-ViT-B-32")
    with pytest.raises(ValueError, match="pass the model's own tokenizer"):
        default_tokenizer(model)


def test_the_zero_shot_head_and_its_cache_key_on_a_hugging_face_tower(tmp_path):
    model, tokenizer = _built("roberta-ViT-B-32")
    templates = ["a photo of a {}.", "itap of a {}."]
    weights = fastprompt.zero_shot_classifier(model, NAMES, templates, tokenizer=tokenizer)
    with torch.no_grad():
        feats = [nn.functional.normalize(model.encode_text(tokenizer([t.format(c) for c in NAMES])), dim=-1)
                 for t in templates]
    want = nn.functional.normalize(sum(feats) / len(feats), dim=-1).t()
    assert_close_rel(weights, want, FP32.parity, "zero-shot head")
    key = text_tower_fingerprint(model)
    with torch.no_grad():
        model.text.proj[0].weight[0, 0] += 1.0  # the projection is part of the tower's identity
    try:
        assert text_tower_fingerprint(model) != key
    finally:
        with torch.no_grad():
            model.text.proj[0].weight[0, 0] -= 1.0


def test_a_transformers_version_that_scales_embeddings_only_for_ids_is_refused(monkeypatch):
    """Older transformers multiplied NLLB's word embeddings by sqrt(d_model) in the encoder's forward,
    for input_ids only: prompted inputs_embeds would miss the scale, so such a version is refused."""
    model, tokenizer = _built("nllb-clip-base")
    encoder = model.text.transformer
    monkeypatch.setattr(encoder, "embed_scale", 8.0, raising=False)
    monkeypatch.setattr(encoder, "embed_tokens", nn.Embedding(encoder.embed_tokens.num_embeddings,
                                                              encoder.embed_tokens.embedding_dim))
    with pytest.raises(ValueError, match="upgrade transformers"):
        HFTextTower(model, context_length=77)


def test_a_context_length_beyond_the_position_table_is_refused():
    model, _ = _built("roberta-ViT-B-32")
    limit = model.text.config.max_position_embeddings - model.text.config.pad_token_id - 1
    HFTextTower(model, context_length=limit)
    with pytest.raises(ValueError, match=f"context_length <= {limit}"):
        HFTextTower(model, context_length=limit + 1)
