"""The step-memory estimate (fastprompt.pretrain.step_memory): probes of a few dozen classes predict the
bytes a real step saves for its backward, the estimate orders modes and class counts, the choice
between the full-vocabulary step and local contrast follows the available memory (or ``force``),
and the probes leave the learner as it was."""
import logging

import pytest
import torch

import fastprompt
from fastprompt.data.imagenet21k_classes import build_class_table
from fastprompt.testing import random_images, tiny_clip
from fastprompt.pretrain import step_memory
from fastprompt.pretrain.memory_probe import SavedBytes, storage_key
from fastprompt.pretrain.step_probes import PROBE_CLASSES
from fastprompt.pretrain.step_memory import (StepMemoryEstimate, available_memory, choose_objective_mode,
                                          decide_objective_mode, estimate_step_memory, format_bytes)

N_CLASSES = 300  # well above the probes' 2 * PROBE_CLASSES, so the check is an extrapolation
BATCH = 4
# Why 10%: the saved tensors of a step are sums of terms per packed token, per class sequence, per
# padded attention row and per attention score, which the fit recovers from the probes (measured
# here: 0.01% with the C++ backend, 2% with eager, whose per-attention-call masks the fit does not
# model; 0.0001% for a random-weight ViT-B-16 at 1,000 ImageNet-21K classes). 10% is what the
# decision can absorb: choose_objective_mode's default headroom keeps 10% of the available memory
# free, so an estimate up to 10% low still fits.
SAVED_REL_TOL = 0.10

LEARNERS = {
    "pomp": lambda model, names: fastprompt.POMPLearner.from_model(model, names, mode="full", seed=0),
    # both branches (a prompted image tower) and the distillation teacher: every part of RPP's step
    "rpp": lambda model, names: fastprompt.RPPLearner.from_model(model, names, depth=2),
    # the eager backend also keeps each attention call's [n, H, L, P + L] scores
    "pomp-eager": lambda model, names: fastprompt.POMPLearner.from_model(model, names, mode="full", backend="eager"),
}


@pytest.fixture(scope="module")
def imagenet21k_names():
    """N_CLASSES ImageNet-21K (winter-21) class names spread over the list: real name lengths."""
    names = build_class_table(universe="winter21").names
    return names[:: len(names) // N_CLASSES][:N_CLASSES]


@pytest.fixture(scope="module", params=["pomp", "rpp"])
def learner(request, tiny_model, imagenet21k_names):
    return LEARNERS[request.param](tiny_model, imagenet21k_names)


def _saved_by_real_step(learner, device="cpu") -> int:
    """Bytes saved for the backward by the learner's own loss over all its classes."""
    resident = list(learner.parameters()) + list(learner.buffers())
    if getattr(learner, "teacher", None) is not None:
        resident.append(learner.teacher.class_features)
    labels = torch.tensor([0, 7, 150, N_CLASSES - 1], device=device)
    with SavedBytes(exclude={storage_key(t) for t in resident}) as saved:
        learner.loss(random_images(BATCH).to(device), labels)
    return saved.bytes


@pytest.mark.parametrize("method", sorted(LEARNERS))
def test_saved_bytes_extrapolate_to_a_class_count_not_probed(method, tiny_model, imagenet21k_names):
    _check_extrapolation(LEARNERS[method](tiny_model, imagenet21k_names), "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("method", sorted(LEARNERS))
def test_saved_bytes_extrapolate_on_cuda(method, imagenet21k_names):
    learner = LEARNERS[method](tiny_clip(seed=0), imagenet21k_names).to("cuda")
    _check_extrapolation(learner, "cuda")


def _check_extrapolation(learner, device):
    assert 2 * PROBE_CLASSES < N_CLASSES
    estimate = estimate_step_memory(learner, BATCH, mode="full", device=device, precision="fp32")
    assert estimate.n_classes == N_CLASSES
    actual = _saved_by_real_step(learner, device)
    predicted = estimate.text_saved_bytes + estimate.image_saved_bytes
    assert abs(predicted - actual) <= SAVED_REL_TOL * actual, (
        f"estimated {predicted} saved bytes, the real step saved {actual} ({estimate.measured})")
    assert estimate.total_bytes > estimate.weight_bytes + predicted
    assert estimate.text_tokens == int(learner.plan.seqlens.sum())
    # the plan's padded attention layout: at most one [N, max_len] block, at least the real tokens
    assert estimate.text_tokens <= estimate.padded_tokens <= N_CLASSES * int(learner.plan.seqlens.max())


def test_image_side_saves_only_where_the_image_tower_is_prompted(learner):
    estimate = estimate_step_memory(learner, BATCH, mode="full", device="cpu", precision="fp32")
    if isinstance(learner, fastprompt.POMPLearner):
        assert estimate.image_saved_bytes == 0  # frozen image tower, run without autograd
    else:
        assert estimate.image_saved_bytes > 0


def test_more_classes_need_more_memory_and_local_needs_far_less(tiny_model, imagenet21k_names):
    small = LEARNERS["pomp"](tiny_model, imagenet21k_names[: N_CLASSES // 2])
    large = LEARNERS["pomp"](tiny_model, imagenet21k_names)
    full_small = estimate_step_memory(small, BATCH, mode="full", device="cpu")
    full_large = estimate_step_memory(large, BATCH, mode="full", device="cpu")
    assert full_large.text_saved_bytes > full_small.text_saved_bytes
    assert full_large.total_bytes > full_small.total_bytes
    k_small, k_large = (estimate_step_memory(large, BATCH, mode="local", num_sampled_classes=k, device="cpu")
                        for k in (8, 64))
    assert k_small.n_classes == 8 - 1 + BATCH
    assert k_small.text_saved_bytes < k_large.text_saved_bytes < full_large.text_saved_bytes
    # K + B = 12 of 300 classes: the text side shrinks with the class count
    assert k_small.text_saved_bytes < 0.1 * full_large.text_saved_bytes


def _fake_estimate(mode: str, n_classes: int, step_bytes: int) -> StepMemoryEstimate:
    return StepMemoryEstimate(mode=mode, n_classes=n_classes, scored_classes=n_classes, batch_size=BATCH, world=1,
                              text_tokens=0, padded_tokens=0,
                              weight_bytes=1000, prompt_state_bytes=0, text_saved_bytes=step_bytes,
                              image_saved_bytes=0, transient_bytes=0, device="cpu", precision="fp32", measured="test")


def test_choice_follows_available_memory(monkeypatch, learner, caplog):
    monkeypatch.setattr(step_memory, "available_memory", lambda device: 1 << 50)
    mode, reason, estimate = choose_objective_mode(learner, BATCH, "cpu", "fp32")
    assert (mode, estimate.mode, estimate.n_classes) == ("full", "full", N_CLASSES)
    assert "full-vocabulary" in reason

    monkeypatch.setattr(step_memory, "available_memory", lambda device: 4096)
    full = estimate_step_memory(learner, BATCH, mode="full", device="cpu")
    with caplog.at_level(logging.WARNING, logger="fastprompt.train"):
        mode, reason, estimate = choose_objective_mode(learner, BATCH, "cpu", "fp32", num_sampled_classes=16)
    assert (mode, estimate.mode, estimate.n_classes) == ("local", "local", 16 - 1 + BATCH)
    assert format_bytes(full.additional_bytes) in reason and "4.0 KiB available" in reason, reason
    assert any(reason in r.getMessage() for r in caplog.records)


def test_force_is_obeyed_and_checked(monkeypatch, learner):
    monkeypatch.setattr(step_memory, "available_memory", lambda device: 4096)
    mode, reason, estimate = choose_objective_mode(learner, BATCH, "cpu", force="full")
    assert (mode, estimate.mode) == ("full", "full")
    assert "not to fit" in reason
    monkeypatch.setattr(step_memory, "available_memory", lambda device: 1 << 50)
    mode, reason, estimate = choose_objective_mode(learner, BATCH, "cpu", force="local", num_sampled_classes=16)
    assert (mode, estimate.mode) == ("local", "local")
    assert "forced" in reason
    with pytest.raises(ValueError, match=r"force must be one of \(None, 'auto', 'full', 'local'\)"):
        choose_objective_mode(learner, BATCH, "cpu", force="exact")


def test_decision_without_probes():
    full, local = _fake_estimate("full", 300, 10_000), _fake_estimate("local", 20, 1_000)
    assert decide_objective_mode(full, local, available=20_000)[0] == "full"
    mode, reason, warn = decide_objective_mode(full, local, available=10_000)  # 90% of it is too little
    assert (mode, warn) == ("local", True) and "9.8 KiB" in reason and "8.8 KiB" in reason
    mode, reason, warn = decide_objective_mode(full, local, available=100)
    assert mode == "local" and "also estimated not to fit" in reason
    # K-1 negatives plus the batch cover every class: local contrast would not save anything
    same = _fake_estimate("local", 300, 10_000)
    mode, reason, warn = decide_objective_mode(full, same, available=100)
    assert (mode, warn) == ("full", True) and "as well" in reason


def test_probes_leave_the_learner_unchanged(learner):
    params = dict(learner.trainable_named_parameters())
    before = {name: p.detach().clone() for name, p in params.items()}
    first = next(iter(params.values()))
    first.grad = torch.ones_like(first)  # a gradient being accumulated must survive too
    rng = torch.random.get_rng_state()
    try:
        estimate_step_memory(learner, BATCH, mode="local", num_sampled_classes=16, device="cpu")
        for name, p in params.items():
            torch.testing.assert_close(p.detach(), before[name], rtol=0, atol=0, msg=f"{name} changed")
            if p is first:
                assert torch.equal(p.grad, torch.ones_like(p)), "the probe touched an existing gradient"
            else:
                assert p.grad is None, f"the probe left a gradient on {name}"
        assert torch.equal(torch.random.get_rng_state(), rng)
    finally:
        first.grad = None


def test_bad_arguments_are_named(learner):
    with pytest.raises(ValueError, match="mode must be one of"):
        estimate_step_memory(learner, BATCH, mode="exact", device="cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        estimate_step_memory(learner, BATCH, mode="full", device="cpu", precision="amp")
    with pytest.raises(ValueError, match="num_sampled_classes must be an int >= 2"):
        estimate_step_memory(learner, BATCH, mode="local", num_sampled_classes=1, device="cpu")
    with pytest.raises(ValueError, match=r"move the learner first \(learner.to\('cuda'\)\)"):
        estimate_step_memory(learner, BATCH, mode="full", device="cuda")
    with pytest.raises(ValueError, match="headroom must be in"):
        choose_objective_mode(learner, BATCH, "cpu", headroom=1.5)


def test_available_memory_on_cpu():
    free = available_memory("cpu")
    assert isinstance(free, int) and free > 0
