"""The learner's plain-PyTorch edges: ``prompt_state_dict`` / ``load_prompt_state_dict`` (PEFT's
``get_peft_model_state_dict`` / ``set_peft_model_state_dict``), ``state_dict`` left whole, and what
``from_model`` does to the caller's model (as its docstring says).

``learner.state_dict()`` holds the frozen CLIP (twice with a teacher): hundreds of megabytes for
kilobytes of prompts. Every registered learner is checked on the tiny random CLIP.
"""
import io

import pytest
import torch

import fastprompt
from fastprompt.testing import random_images, tiny_clip

METHODS = sorted(fastprompt.learners.LEARNERS)
SETTINGS = {"maple": dict(prompt_depth=2), "vpt": dict(prompt_depth=2), "pomp": dict(num_sampled_classes=2),
            "promptsrc": dict(prompt_depth_text=2, prompt_depth_vision=2), "rpp": dict(depth=2, kl_weight=0.0),
            "maple_dept": dict(prompt_depth=2),
            # one teacher for all (its prompts, drawn once, are not the student's checkpoint)
            "promptkd": dict(prompt_depth_vision=2, teacher_prompt_depth=2, teacher=fastprompt.PromptSRCLearner.from_model(
                tiny_clip(seed=3), ["cat", "dog"], prompt_depth_text=2, prompt_depth_vision=2, templates=["{}"]))}


def _learner(model, method, seed=0):
    torch.manual_seed(seed)
    names = ["cat", "dog", "sea lion"]
    classes = {"pets": names} if method == "softcpt" else names
    return fastprompt.learners.LEARNERS[method].from_model(model, classes, **SETTINGS.get(method, {}))


def _perturbed(model, method, seed):
    """A learner whose prompts differ from any other's: methods that start from a phrase
    (ctx_init) would otherwise start equal."""
    learner = _learner(model, method, seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in learner.trainable_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return learner


@pytest.fixture(scope="module")
def model():
    return tiny_clip(seed=0)


@pytest.mark.parametrize("method", METHODS)
def test_a_prompt_state_dict_round_trip_gives_identical_logits(model, method, tmp_path):
    source, target = _perturbed(model, method, 1), _perturbed(model, method, 2)
    images = random_images(2)
    with torch.no_grad():
        want, before = source(images), target(images)
    assert not torch.equal(want, before), "the two learners must differ for the round trip to show anything"
    state = source.prompt_state_dict()
    torch.save(state, tmp_path / "prompts.pt")  # plain tensors: torch.save and weights-only load work
    loaded = torch.load(tmp_path / "prompts.pt", weights_only=True)
    assert target.load_prompt_state_dict(loaded) == ([], [])
    with torch.no_grad():
        got = target(images)
    assert torch.equal(got, want)  # the same prompts through the same computation: the same bits


@pytest.mark.parametrize("method", METHODS)
def test_a_prompt_state_dict_holds_the_learned_tensors_and_no_clip(model, method, tmp_path):
    learner = _learner(model, method)
    state = learner.prompt_state_dict()
    clip_keys = {f"clip.{k}" for k in model.state_dict()}
    full = learner.state_dict()
    assert state and not set(state) & clip_keys and not any(k.startswith("clip.") for k in state)
    assert clip_keys <= set(full), "state_dict() stays nn.Module's whole one"
    size = sum(t.numel() for t in state.values())
    assert size * 10 < sum(t.numel() for t in full.values()), "the prompts are a small part of the module"
    # exactly the tensors save_pretrained writes
    from safetensors.torch import load_file

    learner.save_pretrained(str(tmp_path))
    saved = load_file(str(tmp_path / "prompt.safetensors"))
    assert saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in state)
    # state_dict's manner: detached, sharing the parameters' storage
    params = {**dict(learner.named_buffers()), **dict(learner.trainable_named_parameters())}  # PromptKD: BN stats
    assert all(not t.requires_grad and t.data_ptr() == params[k].data_ptr() for k, t in state.items())


@pytest.mark.parametrize("method", METHODS)
def test_a_bad_prompt_state_dict_is_refused_naming_the_tensor(model, method):
    learner = _learner(model, method)
    good = {k: v.clone() for k, v in learner.prompt_state_dict().items()}
    name = sorted(good)[0]
    before = {k: v.clone() for k, v in good.items()}

    def refused(state, message):
        with pytest.raises(ValueError, match=message):
            learner.load_prompt_state_dict(state)
        now = learner.prompt_state_dict()
        assert all(torch.equal(now[k], before[k]) for k in before), "nothing is copied from a refused dict"

    refused({**good, name: torch.zeros(*good[name].shape, 2)}, rf"'{name}' has shape .* but this learner's is")
    nan = good[name].clone()
    nan.view(-1)[0] = float("nan")
    refused({**good, name: nan}, rf"'{name}' holds 1 non-finite value")
    refused({**good, name: good[name].to(torch.int64)}, rf"'{name}' must be a floating-point tensor")
    refused({k: v for k, v in good.items() if k != name}, rf"missing \['{name}'\], unexpected \[\]")
    refused({**good, "clip.logit_scale": model.logit_scale}, r"missing \[\], unexpected \['clip.logit_scale'\]")
    refused([good[name]], "must be a mapping of names to tensors")


def test_strict_false_loads_what_is_there_and_reports_the_rest(model):
    learner = _perturbed(model, "maple", 1)
    other = _perturbed(model, "maple", 2)
    state = other.prompt_state_dict()
    kept, loaded = sorted(state)[0], sorted(state)[1]
    partial = {loaded: state[loaded], "extra": torch.zeros(1)}
    before = learner.prompt_state_dict()[kept].clone()
    result = learner.load_prompt_state_dict(partial, strict=False)
    assert loaded not in result.missing_keys and kept in result.missing_keys
    assert result.unexpected_keys == ["extra"]
    now = learner.prompt_state_dict()
    assert torch.equal(now[loaded], state[loaded]) and torch.equal(now[kept], before)


def test_a_prompt_state_dict_is_kilobytes_next_to_state_dict(model):
    """What the issue is about: the whole module's state_dict against the prompts'."""
    learner = _learner(model, "kgcoop")  # a teacher CLIP beside the student's

    def saved_bytes(state):
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return buffer.tell()

    assert saved_bytes(learner.prompt_state_dict()) * 20 < saved_bytes(learner.state_dict())


@pytest.mark.parametrize("method", METHODS)
def test_from_model_freezes_the_callers_model_in_place_and_in_eval_mode(method):
    """What from_model's docstring says: the model is shared, every parameter frozen, eval mode kept
    through learner.train(); requires_grad_(True) and train() give the model back."""
    model = tiny_clip(seed=0)
    model.requires_grad_(True)
    model.train()
    learner = _learner(model, method)
    assert learner.clip is model
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.training and not any(m.training for m in model.modules())
    learner.train()
    assert not model.training
    model.requires_grad_(True)
    model.train()
    assert all(p.requires_grad for p in model.parameters()) and model.training
