"""``fastprompt.zero_shot_classifier``: open_clip's zero-shot head on the packed path, and its cache."""
import pytest
import torch
from open_clip.zero_shot_classifier import build_zero_shot_classifier

import fastprompt
from fastprompt.learners import zero_shot as zero_shot_module
from fastprompt.learners.base import default_tokenizer
from fastprompt.testing import tiny_clip

TEMPLATES = ["a photo of a {}.", "a bad photo of the {}.", "itap of a {}.", "the {} in a video game."]
NAMES = ["tench", "goldfish", "great white shark", "tiger shark, Galeocerdo cuvieri", "hammerhead", "electric ray",
         "stingray", "cock", "hen", "ostrich"]


def test_equals_open_clip_builder(tiny_model):
    tok = default_tokenizer(tiny_model)
    expected = build_zero_shot_classifier(tiny_model, tok, NAMES, TEMPLATES, num_classes_per_batch=3)
    for batch_size in (4096, 3):  # one call per template, and chunks that split the class list
        got = fastprompt.zero_shot_classifier(tiny_model, NAMES, TEMPLATES, batch_size=batch_size, backend="eager")
        assert got.shape == expected.shape == (tiny_model.text_projection.shape[1], len(NAMES))
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    callables = [lambda c: f"a photo of a {c}.", lambda c: f"{c}, a type of fish."]
    expected = build_zero_shot_classifier(tiny_model, tok, NAMES, callables, num_classes_per_batch=None)
    got = fastprompt.zero_shot_classifier(tiny_model, NAMES, callables, backend="eager")
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_long_class_name_raises(tiny_model):
    long_name = " ".join(["word"] * 80)
    with pytest.raises(ValueError, match="context length is 77"):
        fastprompt.zero_shot_classifier(tiny_model, ["cat", long_name], "simple", backend="eager")
    with pytest.raises(ValueError, match="non-empty"):
        fastprompt.zero_shot_classifier(tiny_model, [], "simple")


def test_cache_round_trip_and_invalidation(tiny_model, tmp_path, monkeypatch):
    kw = dict(cache=True, cache_root=str(tmp_path), model_name="tiny", pretrained="none", backend="eager")
    first = fastprompt.zero_shot_classifier(tiny_model, NAMES, TEMPLATES, **kw)
    files = list((tmp_path / "zero_shot").glob("*.safetensors"))
    assert len(files) == 1 and not list((tmp_path / "zero_shot").glob(".tmp-*"))

    built = []
    real = zero_shot_module._build
    monkeypatch.setattr(zero_shot_module, "_build", lambda *a, **k: built.append(1) or real(*a, **k))
    again = fastprompt.zero_shot_classifier(tiny_model, NAMES, TEMPLATES, **kw)
    assert torch.equal(again, first) and not built  # read back, not rebuilt

    # other names, templates, weights tag or weights: a new entry
    fastprompt.zero_shot_classifier(tiny_model, NAMES[:-1], TEMPLATES, **kw)
    fastprompt.zero_shot_classifier(tiny_model, NAMES, TEMPLATES[:2], **kw)
    fastprompt.zero_shot_classifier(tiny_model, NAMES, TEMPLATES, **{**kw, "pretrained": "other"})
    other = tiny_clip(seed=5)
    fastprompt.zero_shot_classifier(other, NAMES, TEMPLATES, **kw)
    assert len(built) == 4 and len(list((tmp_path / "zero_shot").glob("*.safetensors"))) == 5

    files[0].write_bytes(b"not a safetensors file")  # a damaged entry is recomputed and rewritten
    fixed = fastprompt.zero_shot_classifier(tiny_model, NAMES, TEMPLATES, **kw)
    assert torch.equal(fixed, first) and len(built) == 5
    assert torch.equal(fastprompt.zero_shot_classifier(tiny_model, NAMES, TEMPLATES, **kw), first)
    assert len(built) == 5


def test_teacher_class_features_cached_on_disk(tiny_model, tmp_path, monkeypatch):
    from fastprompt.learners.teacher import CLIPTeacher
    from fastprompt.testing import FP32

    monkeypatch.setenv("FASTPROMPT_CACHE", str(tmp_path))
    plain = CLIPTeacher(tiny_model, TEMPLATES, backend="eager")
    cached = CLIPTeacher(tiny_model, TEMPLATES, backend="eager", cache=True)
    plain.set_classnames(NAMES)
    cached.set_classnames(NAMES)
    torch.testing.assert_close(cached.class_features, plain.class_features, atol=FP32.parity, rtol=0)
    assert len(list((tmp_path / "zero_shot").glob("*.safetensors"))) == 1

    built = []
    real = zero_shot_module._build
    monkeypatch.setattr(zero_shot_module, "_build", lambda *a, **k: built.append(1) or real(*a, **k))
    again = CLIPTeacher(tiny_model, TEMPLATES, backend="eager", cache=True)  # a resumed run: read back
    again.set_classnames(NAMES)
    assert not built and torch.equal(again.class_features, cached.class_features)
