"""The POMP objective and POMPLearner against the literal original forward (fastprompt.reference.pomp)."""
import functools
import math

import pytest
import torch
import torch.nn.functional as F

import fastprompt
from fastprompt.learners.pomp.objective import POMPObjective
from fastprompt.reference import ReferencePOMP
from fastprompt.testing import FP32, FP64, assert_close_rel, random_images

POMP_CONFIGS = [
    dict(),
    dict(log_base="e"),
    dict(local_correction=False),
    dict(ctx_init="a photo of a"),
    dict(n_ctx=16),
    dict(num_sampled_classes=9),  # K-1 = N: every class drawn, the label always rejected -> exact softmax
]


_images = functools.partial(random_images, seed=1)


def _pair(model, names, cfg, seed=7):
    cfg = {"num_sampled_classes": 5, **cfg}
    torch.manual_seed(0)
    reference = ReferencePOMP(model, names, **{k: v for k, v in cfg.items() if k != "seed"})
    learner = fastprompt.POMPLearner.from_model(model, names, seed=seed, **cfg)
    learner.load_original_state_dict(reference.prompt_learner.state_dict())  # drops train_/test_ token buffers
    return learner, reference


@pytest.mark.parametrize("cfg", POMP_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
@pytest.mark.parametrize("model_fixture", ["tiny_model", "tiny_custom_model"])
def test_pomp_matches_the_original_forward(cfg, model_fixture, classnames, request):
    model = request.getfixturevalue(model_fixture)
    learner, reference = _pair(model, classnames, cfg)
    images, labels = _images(4), torch.tensor([0, 3, 3, 7])  # a repeated label: deduplicated on the fast path
    # A twin of the learner's objective (same seed) shows the draw both sides make in loss().
    twin = POMPObjective(learner.config.num_sampled_classes, local_correction=learner.config.local_correction,
                         log_base=learner.config.log_base, seed=7)
    sample = twin.sample(labels, learner.n_classes)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        logits = learner.objective.logits(learner.encode_image(images),
                                          F.normalize(learner.text_features(sample.classes), dim=-1), sample,
                                          learner.logit_scale)
        ref_logits = reference(images, labels, label_oob=sample.negatives)
    assert_close_rel(logits, ref_logits, FP32.parity, "[B, K] logits")
    loss, ref_loss = learner.loss(images, labels), reference.loss(images, labels, generator=gen)
    assert_close_rel(loss, ref_loss, FP32.parity, "loss")
    (g,) = torch.autograd.grad(loss, [learner.ctx])
    (r,) = torch.autograd.grad(ref_loss, [reference.prompt_learner.ctx])
    assert_close_rel(g, r, FP32.gradient_parity, "grad ctx")
    assert_close_rel(learner(images), reference(images), FP32.parity, "test logits over all classes")


def test_negatives_are_shared_distinct_and_seeded():
    a, b, c = POMPObjective(6, seed=1), POMPObjective(6, seed=1), POMPObjective(6, seed=2)
    labels = torch.tensor([0, 1, 2])
    draws_a = [a.sample(labels, 50).negatives for _ in range(3)]
    draws_b = [b.sample(labels, 50).negatives for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(draws_a, draws_b))
    assert not torch.equal(c.sample(labels, 50).negatives, draws_a[0])
    for neg in draws_a:
        assert neg.shape == (5,) and neg.unique().numel() == 5 and 0 <= int(neg.min()) and int(neg.max()) < 50
    torch.manual_seed(3)
    expected = torch.randperm(50)[:5]
    torch.manual_seed(3)
    assert torch.equal(POMPObjective(6).sample(labels, 50).negatives, expected)  # seed=None: the global RNG


@pytest.mark.parametrize("log_base, log", [("10", math.log10), ("e", math.log)])
def test_rejection_mask_and_local_correction_offsets(log_base, log):
    n, k = 40, 5
    objective = POMPObjective(k, log_base=log_base)
    labels = torch.tensor([3, 7, 3])
    sample = objective.sample(labels, n, negatives=torch.tensor([9, 3, 12, 0]))
    assert sample.rejected.tolist() == [[False, True, False, False], [False] * 4, [False, True, False, False]]
    kept = log(n - 1) - log(k - 1)
    one_rejected = log(n - 1) - log(k - 2)
    expected = torch.tensor([[one_rejected, one_rejected - 1e6, one_rejected, one_rejected], [kept] * 4,
                             [one_rejected, one_rejected - 1e6, one_rejected, one_rejected]], dtype=torch.float64)
    assert_close_rel(sample.offset, expected, FP64.exact, "offsets")
    assert sample.classes.tolist() == [0, 3, 7, 9, 12]  # every needed class once
    assert sample.classes[sample.positive_col].tolist() == labels.tolist()
    no_correction = POMPObjective(k, local_correction=False).sample(labels, n, negatives=torch.tensor([9, 3, 12, 0]))
    assert no_correction.offset.tolist()[0] == [0.0, -1e6, 0.0, 0.0]


def test_full_mode_is_the_exact_softmax_over_all_classes(tiny_model, classnames):
    coop = fastprompt.CoOpLearner.from_model(tiny_model, classnames, n_ctx=4)
    pomp = fastprompt.POMPLearner.from_model(tiny_model, classnames, mode="full")
    pomp.load_prompt_state(dict(coop.trainable_named_parameters()))
    images, labels = _images(3), torch.tensor([1, 5, 5])
    assert_close_rel(pomp.loss(images, labels), F.cross_entropy(coop(images), labels), FP32.rounding, "full-mode loss")


def test_objective_works_with_a_plain_coop_learner(tiny_model, classnames):
    coop = fastprompt.CoOpLearner.from_model(tiny_model, classnames, n_ctx=4)
    pomp = fastprompt.POMPLearner.from_model(tiny_model, classnames, num_sampled_classes=4, seed=0)
    pomp.load_prompt_state(dict(coop.trainable_named_parameters()))
    images, labels = _images(2), torch.tensor([2, 6])
    loss = POMPObjective(4, seed=0).loss(coop, images, labels)
    assert_close_rel(loss, pomp.loss(images, labels), FP32.rounding, "loss")


@pytest.mark.parametrize("cfg", [dict(n_ctx=3), dict(n_ctx=2, csc=True)])
def test_coop_text_features_of_a_class_subset(tiny_model, classnames, cfg):
    learner = fastprompt.CoOpLearner.from_model(tiny_model, classnames, **cfg)
    idx = torch.tensor([6, 0, 6, 3])
    with torch.no_grad():
        assert_close_rel(learner.text_features(idx), learner.text_features()[idx], FP32.rounding, "subset features")


def test_errors_name_the_argument(tiny_model, classnames):
    with pytest.raises(ValueError, match="num_sampled_classes"):
        POMPObjective(1)
    with pytest.raises(ValueError, match="mode"):
        POMPObjective(4, mode="hard")
    with pytest.raises(ValueError, match="log_base"):
        POMPObjective(4, log_base="2")
    with pytest.raises(ValueError, match="num_sampled_classes"):
        POMPObjective(10).sample(torch.tensor([0]), 8)
    with pytest.raises(ValueError, match="labels"):
        POMPObjective(4).sample(torch.tensor([8]), 8)
    with pytest.raises(ValueError, match="negatives"):
        POMPObjective(4).sample(torch.tensor([1]), 8, negatives=torch.tensor([2, 3]))
    with pytest.raises(ValueError, match="num_sampled_classes"):
        fastprompt.POMPLearner.from_model(tiny_model, classnames, num_sampled_classes=0)
    learner = fastprompt.POMPLearner.from_model(tiny_model, classnames)  # K = 1000 > 8 classes
    with pytest.raises(ValueError, match="num_sampled_classes"):
        learner.loss(_images(1), torch.tensor([0]))


def test_save_and_load_round_trip(tiny_model, classnames, tmp_path):
    learner = fastprompt.POMPLearner.from_model(tiny_model, classnames, num_sampled_classes=3, log_base="e")
    learner.save_pretrained(str(tmp_path))
    loaded = fastprompt.PromptLearner.from_pretrained(str(tmp_path), model=tiny_model)
    assert isinstance(loaded, fastprompt.POMPLearner) and loaded.objective.log_base == "e"
    assert torch.equal(loaded.ctx, learner.ctx)


def test_a_row_with_every_negative_rejected_has_a_finite_loss(tiny_model, classnames):
    """K = 2: the one negative can be the image's own class (all rejected): log(K-1-r) = log(0)
    would make the loss NaN; the row's offset reaches no kept logit, so the loss is its CE over
    the positive alone, i.e. 0 up to the rejected logit's exp(-1e6)."""
    objective = POMPObjective(2)
    sample = objective.sample(torch.tensor([1, 3]), len(classnames), negatives=torch.tensor([1]))
    assert sample.rejected.tolist() == [[True], [False]] and torch.isfinite(sample.offset).all()
    coop = fastprompt.CoOpLearner.from_model(tiny_model, classnames, n_ctx=2)
    image = coop.encode_image(random_images(2))
    text = coop.text_features(sample.classes)
    logits = objective.logits(image, text / text.norm(dim=-1, keepdim=True), sample, coop.logit_scale)
    per_row = F.cross_entropy(logits, objective.targets(sample), reduction="none")
    assert torch.isfinite(per_row).all() and float(per_row[0].detach()) == 0.0
