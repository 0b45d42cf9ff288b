"""Deep prompts inside open_clip ViTs with an attentional pooler (CoCa): exact.

CoCa's image tower is open_clip's ``VisionTransformer`` with ``attn_pool``: its queries attend over
every row of the last layer, ``ln_post`` runs on their outputs and ``pool_type='tok'`` takes query 0
(the contrastive embedding ``encode_image`` returns). Prompt rows are appended, replaced before
each prompted layer and their outputs discarded, so the pooler reads the image's own rows only
(:mod:`fastprompt.towers.vision`). On ``scaled_clip("coca_ViT-B-32")`` (two vision blocks, eight
pooler queries) :class:`~fastprompt.towers.vision.VisionTower` must give

* with no prompts: the model's own ``encode_image``;
* with deep prompts that replace and that propagate: the literal reference
  (:func:`fastprompt.reference.vision.reference_encode_image_deep`: prompts concatenated to the
  sequence, the tower's own blocks, the pooler over the image rows);
* through MaPLe, PromptSRC, VPT and RPP (vision branch alone and both branches, pre and post
  projection): the logits, loss and every prompt gradient of the learner's own literal reference.

The class-token shortcut of the last layer (compute row 0 only) would change the answer here: the
parity sees it. What still holds: the last layer computes the image rows only.
"""
from unittest import mock

import pytest
import torch

from fastprompt.reference.vision import reference_encode_image_deep
from fastprompt.testing import FP32, assert_changed, assert_close_rel, assert_gradient_flows
from fastprompt.towers.image_tower import image_tower
from fastprompt.towers.vision import VisionTower

from test_reference_towers import _model, _pair_on, _rpp, compare, maple, promptsrc, rpp_both, vpt
from test_reference_towers import _images as model_images
from test_reference_towers import LABELS

COCA = "coca_ViT-B-32"


@pytest.fixture(scope="module")
def coca():
    model, _ = _model(COCA)
    assert model.visual.attn_pool is not None and model.visual.pool_type == "tok"
    return model


def _prompts(tower, n_prompted: int, m: int = 3):
    return [torch.randn(m, tower.width, generator=torch.Generator().manual_seed(j)) for j in range(n_prompted)]


def test_the_features_without_prompts_are_the_models_encode_image(coca):
    tower = image_tower(coca.visual)
    assert isinstance(tower, VisionTower) and tower.prompted and not tower.pools_first_row
    images = model_images(coca)
    with torch.no_grad():
        # FP32.parity: prompt_attention against open_clip's attention (the same function, sums in another order)
        assert_close_rel(tower(images), coca.encode_image(images, normalize=False), FP32.parity, "features")


@pytest.mark.parametrize("n_prompted", [1, 2])  # 1: prompts propagate through the last layer; 2: replaced there
def test_deep_prompts_match_the_literal_reference(coca, n_prompted):
    tower = image_tower(coca.visual)
    prompts, images = _prompts(tower, n_prompted), model_images(coca)
    with torch.no_grad():
        features = tower(images, prompts)
        assert_close_rel(features, reference_encode_image_deep(coca.visual, images, prompts), FP32.parity, "features")
        assert_changed(features, tower(images), "features with prompts")


def test_the_parity_sees_the_pooler_read_every_image_row(coca):
    """A tower that finished only the class token at the last layer (right for a ``tok`` pool without
    a pooler) would give features far from the reference: the pooler reads every image row."""
    tower = image_tower(coca.visual)
    prompts, images = _prompts(tower, 1), model_images(coca)
    with torch.no_grad():
        expected = reference_encode_image_deep(coca.visual, images, prompts)
        with mock.patch.object(VisionTower, "pools_first_row", True):
            class_token_only = tower(images, prompts)
    assert_changed(class_token_only, expected, "features of the class token alone")


@pytest.mark.parametrize("n_prompted", [1, 2])
def test_the_last_layer_computes_the_image_rows_only(coca, n_prompted):
    """No prompt row is pooled, so the last layer leaves the prompt rows out: the pool gets ``T`` rows."""
    tower = image_tower(coca.visual)
    images = model_images(coca)
    n_image_tokens = coca.visual.positional_embedding.shape[0]
    seen = []
    real_pool = VisionTower.pool

    def pool(self, x, n):
        seen.append((x.shape[1], n))
        return real_pool(self, x, n)

    with torch.no_grad(), mock.patch.object(VisionTower, "pool", pool):
        tower(images, _prompts(tower, n_prompted))
    assert seen == [(n_image_tokens, n_image_tokens)]


def rpp_vision(model, tokenizer):
    return _rpp(model, tokenizer, branches="vision", depth=2)


def rpp_vision_post(model, tokenizer):
    return _rpp(model, tokenizer, branches="vision", depth=2, variant="post")


LEARNERS = [maple, promptsrc, vpt, rpp_vision, rpp_vision_post, rpp_both]
VISION_PROMPTS = ("vision", "proj.", "compound_prompt_projections")  # MaPLe's image prompts: its couplings' outputs


@pytest.mark.parametrize("build", LEARNERS, ids=[b.__name__ for b in LEARNERS])
def test_deep_vision_learners_match_their_references_on_coca(build):
    pair, images, tol = _pair_on(COCA, build)
    assert isinstance(pair.learner.vision_tower, VisionTower)
    labels = torch.tensor(LABELS)
    compare(pair, images, labels, tol)
    # the image prompts are on the loss's path (MaPLe's through its couplings; RPP's query rows act only
    # where a prompt row's output survives, which the two-layer tower's last prompted layer is not)
    names, mine, _ = pair.params()
    vision = [p for n, p in zip(names, mine) if n.startswith(VISION_PROMPTS) and not n.endswith("_q")]
    assert vision, names
    grads = torch.autograd.grad(pair.learner.loss(images, labels), vision)
    assert_gradient_flows(torch.cat([g.flatten() for g in grads]), f"{build.__name__}: image prompts")
