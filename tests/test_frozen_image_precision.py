"""bf16 autocast of the frozen image tower (``frozen_image_precision``): its error against fp32 is
bounded (and nonzero: the path really runs in bf16), it touches only the frozen forward, and a
device without bf16 matrix units falls back to fp32 with a warning (a run refuses it)."""
import pytest
import torch

import fastprompt
from fastprompt.learners import frozen_precision
from fastprompt.testing import BF16, FP32, max_rel_error, random_images, relative_feature_error
from fastprompt.errors import ConfigError
from fastprompt.train.feature_setup import feature_settings


@pytest.fixture
def bf16_everywhere(monkeypatch):
    """bf16 autocast applied whatever this CPU has: the error is a property of the arithmetic, not of
    the hardware (without AVX512-BF16 it is emulated, slower but the same rounding)."""
    monkeypatch.setattr(frozen_precision, "bf16_unsupported_reason", lambda device: None)


def _raw_features(learner, images):
    """Unnormalised tower output in the learner's frozen precision (what the docstring measures)."""
    with torch.no_grad(), frozen_precision.frozen_image_autocast(learner.config.frozen_image_precision, "cpu"):
        return learner.vision_tower(images).float()


def _error_against_fp32(model, size, n):
    names = ["cat", "dog", "bird"]
    fp32 = fastprompt.CoOpLearner.from_model(model, names, n_ctx=2)
    bf16 = fastprompt.CoOpLearner.from_model(model, names, n_ctx=2, frozen_image_precision="bf16")
    images = random_images(n, size)
    return fp32, bf16, images, relative_feature_error(_raw_features(bf16, images), _raw_features(fp32, images))


def test_bf16_frozen_features_error_is_bounded(tiny_model, bf16_everywhere):
    fp32, bf16, images, error = _error_against_fp32(tiny_model, 32, 8)
    # Above 1e-4: the tower really ran in bf16; below BF16.frozen_image: see its reason.
    assert 1e-4 < error <= BF16.frozen_image, (error, BF16.why("frozen_image"))
    features = bf16.encode_image(images)
    assert features.dtype == torch.float32  # cast back before the normalisation
    assert torch.allclose(features.norm(dim=-1), torch.ones(len(images)), atol=FP32.parity)
    # Only the frozen forward changes: the text side (and its gradient) is the fp32 one.
    bf16.ctx.data.copy_(fp32.ctx.data)
    assert torch.equal(bf16.text_features(), fp32.text_features())
    logits = bf16(images)
    assert logits.dtype == torch.float32


@pytest.mark.slow
def test_vit_b16_bf16_frozen_features_error_is_bounded(vit_b16, bf16_everywhere):
    _, _, _, error = _error_against_fp32(vit_b16, 224, 4)
    assert 1e-4 < error <= BF16.frozen_image, (error, BF16.why("frozen_image"))


def test_fp32_is_the_default_and_is_open_clips_forward(tiny_model):
    learner = fastprompt.CoOpLearner.from_model(tiny_model, ["cat", "dog"], n_ctx=2)
    assert learner.config.frozen_image_precision == "fp32"
    images = random_images(3, 32)
    expected = tiny_model.encode_image(images)
    assert max_rel_error(learner.encode_image(images), expected / expected.norm(dim=-1, keepdim=True)) <= FP32.parity


def test_unsupported_device_falls_back_to_fp32_with_a_warning(tiny_model, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(frozen_precision, "_warned", set())
    assert "AVX512-BF16" in frozen_precision.bf16_unsupported_reason("cpu")
    names = ["cat", "dog"]
    fp32 = fastprompt.CoOpLearner.from_model(tiny_model, names, n_ctx=2)
    bf16 = fastprompt.CoOpLearner.from_model(tiny_model, names, n_ctx=2, frozen_image_precision="bf16")
    images = random_images(2, 32)
    with pytest.warns(RuntimeWarning, match="frozen_image_precision='bf16' is not used on cpu: this CPU has neither"):
        features = bf16.encode_image(images)
    assert torch.equal(features, fp32.encode_image(images))


def test_bad_precision_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match=r"frozen_image_precision must be one of \('fp32', 'bf16'\), got 'fp16'"):
        fastprompt.CoOpLearner.from_model(tiny_model, ["cat"], frozen_image_precision="fp16")


def test_a_run_refuses_bf16_where_the_device_cannot(monkeypatch):
    from fastprompt.train.config import resolve_config

    monkeypatch.setattr(frozen_precision, "bf16_unsupported_reason", lambda device: "no bf16 here")
    cfg = resolve_config([], method="coop", overrides=["TRAIN.FROZEN_IMAGE_PRECISION", "bf16"])
    with pytest.raises(ConfigError, match="TRAIN.FROZEN_IMAGE_PRECISION bf16 on cpu: no bf16 here; use fp32"):
        feature_settings(cfg, torch.device("cpu"))
