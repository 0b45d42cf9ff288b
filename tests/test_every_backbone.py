"""Every architecture of ``open_clip.list_models()`` x every learner (issue 24's proof).

Each architecture is built once per module, offline, with random weights, scaled down by
:func:`fastprompt.testing.scaled_models.scaled_clip` (the same tower classes, pooling, masks,
norm/act options and timm model family; two text layers, small widths, 64-pixel or two-patch
images). Hugging Face tokenizers (SigLIP, SigLIP 2, CLIPA's BERT, mT5, XLM-V) need ``transformers``
and a download: a stand-in with the same special-token layout over CLIP's BPE takes their place
(``StandInTokenizer``). Hugging Face *text towers* (RoBERTa, XLM-R, mT5, NLLB) are built with a tiny
``transformers`` config of their family when ``transformers`` is installed (the ``test`` extra);
without it they are refused as fastprompt refuses them to a user (``TokenizerNotAvailableError``)
and the table, made with them built, is not compared.

* CoOp initialised from ``ctx_init="a photo of a"`` encodes exactly the model's own
  ``encode_text(tokenizer(["a photo of a {c}.", ...]))`` (``FP32.parity``: two float32
  computations of one function in different orders);
* every learner takes a training step with finite gradients on every trainable tensor, or is
  refused by a named error that says what works (:func:`fastprompt.testing.backbone_table.outcome`);
* the outcomes, as a markdown table (architectures with identical rows grouped), equal
  ``bench/backbones.md`` (regenerate: ``python -m fastprompt.testing.backbone_table > bench/backbones.md``).

Every architecture is run (no representatives): about 75 s of builds and steps on two CPU cores.
"""
import functools
import os

import open_clip
import pytest
import torch

import fastprompt
from fastprompt.learners.prompts import text_start
from fastprompt.models import TokenizerNotAvailableError
from fastprompt.testing import FP32, assert_close_rel
from fastprompt.testing.backbone_table import CLASSNAMES, COLUMNS, markdown_table, row_of, tower_kind
from fastprompt.testing.scaled_models import scaled_clip, transformers_available
from fastprompt.towers.image_input import input_size_of

ARCHITECTURES = open_clip.list_models()
TABLE_FILE = os.path.join(os.path.dirname(__file__), os.pardir, "bench", "backbones.md")


@functools.lru_cache(maxsize=None)
def _row(name: str):
    return row_of(name)


@functools.lru_cache(maxsize=1)
def _built(name: str):
    return scaled_clip(name)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_coop_from_ctx_init_is_the_models_own_zero_shot_feature(name):
    text_cfg = open_clip.get_model_config(name)["text_cfg"]
    if text_cfg.get("hf_model_name") and not transformers_available():
        with pytest.raises(TokenizerNotAvailableError, match="transformers"):
            _built(name)
        return
    model, tokenizer = _built(name)
    learner = fastprompt.CoOpLearner.from_model(model, CLASSNAMES, ctx_init="a photo of a", tokenizer=tokenizer)
    with torch.no_grad():
        got = learner.text_features()
        want = model.encode_text(tokenizer([f"a photo of a {c}." for c in CLASSNAMES]), normalize=False)
    assert_close_rel(got, want, FP32.parity, f"{name} text features")


@pytest.mark.parametrize("column", [column for column, _, _ in COLUMNS])
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_every_learner_steps_or_is_refused_by_name(name, column):
    result = _row(name)[column]
    assert not result.crash, f"{name} x {column} crashed: {result.error}: {result.message}"
    if not result.ok:
        # A refusal names what is refused and what works instead, in one line.
        assert result.error.endswith("Error") and "\n" not in result.message
        assert " use " in result.message or "pip install" in result.message, result.message


def test_the_table_is_bench_backbones_md():
    if not transformers_available():  # the table's Hugging Face rows are those of towers built with transformers
        pytest.skip("bench/backbones.md is made with transformers installed (pip install -e '.[test]')")
    table = markdown_table({name: _row(name) for name in ARCHITECTURES}, describe=tower_kind)
    with open(TABLE_FILE, encoding="utf-8") as f:
        assert f.read() == table, ("bench/backbones.md is not the table of today's outcomes: regenerate it with "
                                   "python -m fastprompt.testing.backbone_table > bench/backbones.md")


# ---- the fixes the table needed --------------------------------------------------------------

@pytest.mark.parametrize("column", ["maple", "rpp", "rpp text"])
def test_deep_text_prompts_start_where_a_tokenizer_without_a_start_token_puts_text(column):
    """mT5's tokenizer (ViT-L-14-worldwide) puts no [SOT]: the context, and the deep prompts that
    replace it, start at row 0. The deep prompts at their first layer equal CoOp's context there."""
    model, tokenizer = scaled_clip("ViT-L-14-worldwide")
    assert text_start(tokenizer) == 0
    method, settings = {c: (m, s) for c, m, s in COLUMNS}[column]
    learner = fastprompt.learners.LEARNERS[method].from_model(model, CLASSNAMES, tokenizer=tokenizer, **settings)
    loss = learner.loss(torch.randn(2, 3, 28, 28), torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss)


def test_deep_text_prompts_on_a_bidirectional_tower_run_a_step():
    """CLIPA's text is bidirectional: deep text prompts go into every class's own full-length
    sequence (parity: tests/test_deep_text_bidirectional.py, tests/test_reference_towers.py)."""
    model, tokenizer = scaled_clip("ViT-L-14-CLIPA")  # open_clip ViT image side
    size = input_size_of(model.visual)
    for method, settings in (("maple", dict(prompt_depth=2)), ("rpp", dict(branches="text", depth=2))):
        learner = fastprompt.learners.LEARNERS[method].from_model(model, CLASSNAMES, tokenizer=tokenizer, **settings)
        loss = learner.loss(torch.randn(2, 3, *size), torch.tensor([0, 1]))
        loss.backward()
        assert torch.isfinite(loss)
