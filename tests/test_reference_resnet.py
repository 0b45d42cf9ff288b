"""Every configuration a learner accepts has a reference to check it against: the learners that take a
ResNet image tower (text prompts only) against their literal references on a random RN50-like CLIP
(tests/test_resnet.py's ``resnet_clip``). CoOp and CoCoOp are in tests/test_resnet.py."""
import pytest
import torch
import torch.nn.functional as F

import fastprompt
from fastprompt.learners.pomp.objective import POMPObjective
from fastprompt.reference import ReferenceKgCoOp, ReferencePRE
from fastprompt.testing import FP32, assert_close_rel, random_images

from test_resnet import NAMES, resnet_clip  # noqa: F401  (the fixture)
from test_kgcoop import _perturb, compare_step as compare_kgcoop
from test_pomp import _pair as pair_pomp
from test_pre import _compare as compare_pre, _pair as pair_pre
from test_rpp import _compare as compare_rpp, _pair as pair_rpp
from test_softcpt import _compare as compare_softcpt, _pair as pair_softcpt

IMAGES = dict(n=3, seed=1)
LABELS = [0, 3, 2]


def _ids(cfg):
    return ",".join(f"{k}={v}" for k, v in cfg.items()) or "default"


@pytest.mark.parametrize("cfg", [
    dict(branches="text", depth=2),
    dict(branches="text", depth=1, variant="post", residual_row="mean"),
    dict(branches="text", depth=2, shared=True, ctx_init="a photo of a"),
    dict(branches="text", depth=2, kl_weight=0.0),
    dict(branches="text", depth=2, pomp=True, pomp_num_sampled_classes=3, pomp_seed=0),
], ids=_ids)
def test_rpp_text_branch_matches_the_reference_on_a_resnet(resnet_clip, cfg):  # noqa: F811
    """Logits, loss and prompt gradients; the reference encodes images with the model's own
    ``encode_image`` (it used to read ``visual.transformer`` and crash on a ResNet)."""
    learner, reference = pair_rpp(resnet_clip, cfg, names=NAMES)
    compare_rpp(learner, reference, random_images(**IMAGES), torch.tensor(LABELS), seed=cfg.get("pomp_seed", 0))


def test_softcpt_matches_the_reference_on_a_resnet(resnet_clip):  # noqa: F811
    tasks = {"pets": NAMES[:2], "things": NAMES[2:]}
    learner, reference = pair_softcpt(resnet_clip, dict(class_features=True), tasks=tasks)
    compare_softcpt(learner, reference, random_images(**IMAGES), torch.tensor(LABELS))


@pytest.mark.parametrize("cfg,ref_cfg", [
    (dict(), dict()),  # KgCoOp's rn50_ep50 config: "a photo of a", w = 8
    (dict(ctx_init="", n_ctx=2, csc=True, w=2.0), dict(ctx_init=False, n_ctx=2, csc=True, w=2.0)),
], ids=["default", "random-csc-w2"])
def test_kgcoop_matches_the_reference_on_a_resnet(resnet_clip, cfg, ref_cfg):  # noqa: F811
    """Logits, consistency score, loss and ``ctx`` gradient. The context is moved off its
    "a photo of a" init first: there the prompts equal the hand-crafted ones and the score is 0."""
    torch.manual_seed(0)
    reference = ReferenceKgCoOp(resnet_clip, NAMES, **ref_cfg)
    _perturb(reference.prompt_learner.ctx)
    learner = fastprompt.KgCoOpLearner.from_model(resnet_clip, NAMES, **cfg)
    learner.load_original_state_dict(reference.prompt_learner.state_dict())
    assert_close_rel(learner.clip_text_features, reference.prompt_learner.text_features, FP32.parity,
                     "hand-crafted features")
    compare_kgcoop(learner, reference, random_images(**IMAGES), torch.tensor(LABELS))


@pytest.mark.parametrize("cfg", [
    dict(),  # the default = minhanh151/PRE's ctxv1 runs ResidualPrompting_LSTM1_True_False: "a photo of a", residual
    dict(ctx_init="", n_ctx=4),      # LSTM1 over a random 4-token context
    dict(encoder="MLP2", ctx_init="", n_ctx=3, class_token_position="middle"),
], ids=_ids)
def test_pre_matches_the_reference_on_a_resnet(resnet_clip, cfg):  # noqa: F811
    learner, reference = pair_pre(resnet_clip, NAMES, cfg)
    compare_pre(learner, reference, random_images(**IMAGES), torch.tensor(LABELS))


def test_pre_separate_lstm1_encoders_match_the_reference_on_a_resnet(resnet_clip):  # noqa: F811
    """The original's ResidualPrompting_LSTM1_True_True runs: one LSTM1 per context token. The original's
    per-token encoders are in no state_dict (a plain dict), so they are copied one by one."""
    torch.manual_seed(0)
    reference = ReferencePRE(resnet_clip, NAMES, separate=True).eval()
    learner = fastprompt.PRELearner.from_model(resnet_clip, NAMES, separate=True).eval()
    with pytest.warns(UserWarning, match="SEPARATE=True"):
        learner.load_original_state_dict(reference.prompt_learner.state_dict())
    for i in range(reference.prompt_learner.n_ctx):
        learner.encoder_network[i].load_state_dict(reference.prompt_learner.encoder_network[i].state_dict())
    compare_pre(learner, reference, random_images(**IMAGES), torch.tensor(LABELS))


@pytest.mark.parametrize("cfg", [
    dict(num_sampled_classes=3),
    dict(num_sampled_classes=3, log_base="e", ctx_init="a photo of a"),
    dict(num_sampled_classes=4, local_correction=False),  # K-1 = N-1: most rows reject one negative
], ids=_ids)
def test_pomp_matches_the_reference_on_a_resnet(resnet_clip, cfg):  # noqa: F811
    """The sampled-softmax logits on a given draw, the loss on the same seeded draw, the ``ctx``
    gradient, and the test-time logits over all classes. K >= 3: with K = 2 a row whose one negative
    is its own class has log(0) in the original (inf logits), which the learner keeps finite on
    purpose (tests/test_pomp.py::test_a_row_with_every_negative_rejected_has_a_finite_loss)."""
    seed = 7
    learner, reference = pair_pomp(resnet_clip, NAMES, cfg, seed=seed)
    images, labels = random_images(4, seed=1), torch.tensor([0, 3, 3, 2])  # a repeated label
    twin = POMPObjective(learner.config.num_sampled_classes, local_correction=learner.config.local_correction,
                         log_base=learner.config.log_base, seed=seed)  # shows the draw loss() makes
    sample = twin.sample(labels, learner.n_classes)
    with torch.no_grad():
        text = F.normalize(learner.text_features(sample.classes), dim=-1)
        logits = learner.objective.logits(learner.encode_image(images), text, sample, learner.logit_scale)
        assert_close_rel(logits, reference(images, labels, label_oob=sample.negatives), FP32.parity, "[B, K] logits")
    loss = learner.loss(images, labels)
    ref_loss = reference.loss(images, labels, generator=torch.Generator().manual_seed(seed))
    assert_close_rel(loss, ref_loss, FP32.parity, "loss")
    (g,) = torch.autograd.grad(loss, [learner.ctx])
    (r,) = torch.autograd.grad(ref_loss, [reference.prompt_learner.ctx])
    assert_close_rel(g, r, FP32.gradient_parity, "grad ctx")
    assert_close_rel(learner(images), reference(images), FP32.parity, "test logits over all classes")
