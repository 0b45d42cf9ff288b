"""Gaussian-weighted prompt aggregation (PromptSRC's GPA) as a reusable training utility."""
import math

import numpy as np
import pytest
import torch

import fastprompt
from fastprompt.train import GaussianPromptAggregation, gaussian_epoch_weights


def _original_weights(epochs, mean, std):
    """PromptSRC's own computation (numpy, float64): pdf at 1..E normalised by its sum."""
    gauss = lambda x: (1 / (std * np.sqrt(2 * np.pi))) * np.exp(-0.5 * ((x - mean) / std) ** 2)  # noqa: E731
    w = np.array([gauss(a) for a in range(1, epochs + 1)])
    return w / sum(w)


@pytest.mark.parametrize("epochs,mean,std", [(20, 15, 1), (2, 6, 10), (50, 30, 30), (50, 45, 5), (5, 3.5, 0.7)])
def test_weights_match_the_original(epochs, mean, std):
    w = gaussian_epoch_weights(epochs, mean, std)
    assert len(w) == epochs and math.isclose(sum(w), 1.0, rel_tol=1e-12)
    np.testing.assert_allclose(w, _original_weights(epochs, mean, std), rtol=1e-12, atol=0)


def test_base_to_novel_weights_concentrate_on_epochs_13_to_17():
    w = gaussian_epoch_weights(20, 15, 1)
    assert [round(x, 3) for x in w[12:17]] == [0.054, 0.242, 0.399, 0.242, 0.054]
    assert sum(w[12:17]) > 0.99 and w[0] < 1e-40


def _learner(model, classnames):
    learner = fastprompt.PromptSRCLearner.from_model(model, classnames, prompt_depth_text=2, prompt_depth_vision=2,
                                                     templates=["a photo of a {}."])
    return learner


def test_aggregates_trainable_parameters_only_in_fp32(tiny_model, classnames):
    learner = _learner(tiny_model, classnames)
    frozen_before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    targets_before = learner.zs_text_features.clone()
    from_config = GaussianPromptAggregation.from_learner(learner, epochs=20)
    assert (from_config.mean, from_config.std) == (learner.config.gpa_mean, learner.config.gpa_std) == (15.0, 1.0)
    gpa = GaussianPromptAggregation(learner, epochs=4, mean=2.5, std=1.0)
    names = [n for n, _ in learner.trainable_named_parameters()]
    assert sorted(gpa.sums) == sorted(names)
    assert all(s.dtype == torch.float32 for s in gpa.sums.values())
    snapshots = []
    gen = torch.Generator().manual_seed(0)
    for epoch in range(4):
        with torch.no_grad():  # stands in for an epoch of SGD steps
            for p in learner.trainable_parameters():
                p.add_(torch.randn(p.shape, generator=gen))
        snapshots.append({n: p.detach().double().clone() for n, p in learner.trainable_named_parameters()})
        assert gpa.update() == pytest.approx(gpa.weights[epoch])
    assert gpa.complete
    gpa.apply()
    for name, p in learner.trainable_named_parameters():
        expected = sum(w * snap[name] for w, snap in zip(gaussian_epoch_weights(4, 2.5, 1.0), snapshots))
        torch.testing.assert_close(p.detach().double(), expected, rtol=1e-6, atol=1e-6)
    for k, v in tiny_model.state_dict().items():  # frozen CLIP weights are not touched
        assert torch.equal(v, frozen_before[k]), k
    assert torch.equal(learner.zs_text_features, targets_before)


def test_gpa_of_a_constant_run_is_the_run_itself(tiny_model, classnames):
    """Weights sum to 1: aggregating unchanged prompts gives them back (what the original's whole-state_dict
    aggregation does to frozen weights, up to its fp16 rounding)."""
    learner = _learner(tiny_model, classnames)
    before = {n: p.detach().clone() for n, p in learner.trainable_named_parameters()}
    gpa = GaussianPromptAggregation(learner, epochs=20, mean=15, std=1)
    for _ in range(20):
        gpa.update()
    gpa.apply()
    for n, p in learner.trainable_named_parameters():
        torch.testing.assert_close(p.detach(), before[n], rtol=1e-6, atol=1e-7)


def test_state_dict_resumes(tiny_model, classnames):
    learner = _learner(tiny_model, classnames)
    gpa = GaussianPromptAggregation(learner, epochs=3, mean=2, std=1)
    gpa.update()
    saved = gpa.state_dict()
    resumed = GaussianPromptAggregation(learner, epochs=3, mean=2, std=1)
    resumed.load_state_dict(saved)
    gpa.update()
    resumed.update()
    for name in gpa.sums:
        assert torch.equal(gpa.sums[name], resumed.sums[name])
    with pytest.raises(ValueError, match="does not match"):
        GaussianPromptAggregation(learner, epochs=4, mean=2, std=1).load_state_dict(saved)


def test_misuse_is_a_clear_error(tiny_model, classnames):
    learner = _learner(tiny_model, classnames)
    gpa = GaussianPromptAggregation(learner, epochs=2, mean=1, std=1)
    gpa.update()
    with pytest.raises(RuntimeError, match="only 1 of 2 epochs"):
        gpa.apply()
    gpa.update()
    with pytest.raises(RuntimeError, match="already"):
        gpa.update()
    with pytest.raises(ValueError, match="epochs"):
        gaussian_epoch_weights(0, 1, 1)
    with pytest.raises(ValueError, match="std"):
        gaussian_epoch_weights(5, 1, 0)
    with pytest.raises(ValueError, match="mean"):
        gaussian_epoch_weights(5, float("nan"), 1)
    with pytest.raises(ValueError, match="no mass"):
        gaussian_epoch_weights(5, 1e6, 1)
    coop = fastprompt.CoOpLearner.from_model(tiny_model, classnames, n_ctx=2)
    with pytest.raises(ValueError, match="gpa_mean"):
        GaussianPromptAggregation.from_learner(coop, epochs=5)
    plain = GaussianPromptAggregation(coop, epochs=5, mean=3, std=2)  # any learner works with explicit mean/std
    assert list(plain.sums) == ["ctx"]
    with pytest.raises(ValueError, match="no trainable parameters"):
        GaussianPromptAggregation(torch.nn.Linear(2, 2).requires_grad_(False), epochs=5, mean=3, std=2)
