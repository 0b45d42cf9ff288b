"""Every image tower open_clip builds serves the text-prompt methods, and tokenizers resolve first.

The methods that prompt only the text (CoOp, CoCoOp, KgCoOp, PRE, SoftCPT, POMP, RPP with
``branches="text"``) never look inside the image tower: they run the model's own
``encode_image``. Here on timm towers (``TimmModel``) of four open_clip architectures, built
offline with random weights and scaled down through timm's own constructor arguments (fewer
blocks, narrower; the same timm class, the same open_clip adapter and head): the features are the
model's, the logits and gradients the literal reference's, the feature cache and the bf16 option
work, and the methods that prompt the image tower's layers refuse by name, saying what works. An
open_clip ViT with CoCa's attentional pooler takes deep prompts; one with open_clip's untested pair
of poolers runs frozen and refuses them by name.

The tokenizer of a named architecture is resolved before its model is built: one that needs a
missing package fails in milliseconds with one line, by every road (``from_open_clip``,
``load_open_clip``, ``random_clip``, the command line), and a tokenizer given by the user is
used as it is.
"""
import copy
import sys
import time
from unittest import mock

import open_clip
import pytest
import timm
import torch
import torch.nn.functional as F
from open_clip.model import get_model_preprocess_cfg
from torch.utils.data import TensorDataset

import fastprompt
from fastprompt import cli
from fastprompt.features.cache import FeatureCache
from fastprompt.learners import LEARNERS, frozen_precision, load_open_clip
from fastprompt.models import TokenizerNotAvailableError, frozen, random_clip
from fastprompt.reference import ReferenceCoCoOp, ReferenceCoOp
from fastprompt.testing import BF16, FP32, assert_close_rel, max_rel_error, random_images, relative_feature_error
from fastprompt.towers import FrozenImageTower, VisionTower, image_tower
from fastprompt.towers.frozen_image import UnpromptableImageTowerError

from test_learners import _compare_step

NAMES = ["cat", "dog", "sea lion", "jack-o'-lantern"]
SIZE = 64  # input side of the scaled-down towers (their preprocess configuration says so)

# timm constructor arguments that shrink each architecture's trunk within its own timm class.
SCALED = {
    "EVA02-B-16": dict(depth=2, embed_dim=64, num_heads=2, img_size=SIZE),  # rotary embeddings, SwiGLU
    "convnext_base": dict(depths=(1, 1, 1, 1), dims=(16, 32, 48, 64)),  # any input size: no img_size
    "ViTamin-S": dict(depth=1, img_size=SIZE),  # its convolutional stem fixes the width (384)
    "MobileCLIP-B": dict(depth=1, img_size=SIZE),  # likewise (768)
}
TEXT_PROMPT = [("coop", dict(n_ctx=4)), ("cocoop", {}), ("kgcoop", {}), ("pre", {}),
               ("pomp", dict(num_sampled_classes=3)), ("softcpt", {}), ("rpp", dict(branches="text", depth=2))]
DEEP_VISION = [("maple", dict(prompt_depth=1)), ("vpt", dict(prompt_depth=1)),
               ("promptsrc", dict(prompt_depth_text=1, prompt_depth_vision=1)),
               ("rpp", dict(branches="both", depth=1)), ("rpp", dict(branches="vision", depth=1))]


def scaled_timm_clip(name: str, seed: int = 0):
    """open_clip's ``name`` with random weights, its timm trunk shrunk by :data:`SCALED` and its text
    tower to two 64-wide layers; frozen, in eval mode."""
    cfg = copy.deepcopy(open_clip.get_model_config(name))
    real_create = timm.create_model

    def smaller(model_name, *args, **kwargs):
        return real_create(model_name, *args, **{**kwargs, **SCALED[name]})

    torch.manual_seed(seed)
    with mock.patch.object(timm, "create_model", smaller):
        model = open_clip.create_model(name, pretrained=None, embed_dim=48,
                                       text_cfg=dict(cfg["text_cfg"], width=64, heads=2, layers=2),
                                       vision_cfg=dict(cfg["vision_cfg"], image_size=SIZE))
    assert type(model.visual).__name__ == "TimmModel"
    assert model.visual.trunk.pretrained_cfg["architecture"] == cfg["vision_cfg"]["timm_model_name"]
    # timm starts some blocks near the identity (ConvNeXt's layer scale 1e-6, EVA's head 1e-3): move
    # every weight, so that a tower path that skipped or misread a block would change the features.
    with torch.no_grad():
        for p in model.visual.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return frozen(model)


@pytest.fixture(scope="module", params=list(SCALED))
def timm_clip(request):
    return scaled_timm_clip(request.param)


def _images(n: int = 3):
    return random_images(n, SIZE)


def _learner(method, model, **settings):
    return LEARNERS[method].from_model(model, {"pets": NAMES} if method == "softcpt" else NAMES, **settings)


# ---- the frozen image side ---------------------------------------------------------------------------

def test_a_timm_tower_runs_as_the_models_own_encode_image(timm_clip):
    learner = fastprompt.CoOpLearner.from_model(timm_clip, NAMES, n_ctx=2)
    tower = learner.vision_tower
    # ConvNeXt runs frozen; the timm ViTs (EVA02, ViTamin, MobileCLIP-B) take deep prompts too, and
    # without them run as the model's own encode_image alike
    convnext = type(timm_clip.visual.trunk).__name__ == "ConvNeXt"
    assert isinstance(tower, FrozenImageTower) == convnext and tower.prompted == (not convnext)
    # The input size is the model's preprocess configuration's, the width that of its features.
    assert tower.image_size == tuple(get_model_preprocess_cfg(timm_clip)["size"]) == (SIZE, SIZE)
    images = _images()
    with torch.no_grad():
        expected = timm_clip.encode_image(images, normalize=True)
    assert tower.output_dim == expected.shape[1]
    # One code path (the model's own modules), so only the normalisation's rounding may differ.
    assert_close_rel(learner.encode_image(images), expected, FP32.rounding, "frozen timm features")
    with pytest.raises(ValueError, match=rf"\[B, 3, {SIZE}, {SIZE}\], got 32x32"):
        learner(random_images(2, 32))


def test_the_input_size_is_read_from_the_preprocess_configuration():
    """ConvNeXt takes any size, so only the model's preprocess configuration says which it expects."""
    model = scaled_timm_clip("convnext_base")
    model.visual.preprocess_cfg = dict(model.visual.preprocess_cfg, size=(72, 72))
    tower = image_tower(model.visual)
    assert tower.image_size == (72, 72)
    with pytest.raises(ValueError, match=rf"\[B, 3, 72, 72\], got {SIZE}x{SIZE}"):
        tower(_images(1))


@pytest.mark.parametrize("learner_cls,reference_cls,settings", [
    (fastprompt.CoOpLearner, ReferenceCoOp, dict(n_ctx=4)), (fastprompt.CoCoOpLearner, ReferenceCoCoOp, {})],
    ids=["coop", "cocoop"])
def test_text_prompt_learners_match_the_reference_on_a_timm_tower(timm_clip, learner_cls, reference_cls, settings):
    # One label for the batch: the random ViTamin's average-pooled features are nearly parallel
    # (cosine 0.97), so with several labels the images' gradient terms cancel and the float32 error
    # relative to the largest entry grows with the cancellation (1e-4 measured on CoCoOp's meta-net,
    # 3e-6 with one label). The logits are compared over every class and image either way.
    images, labels = _images(), torch.tensor([1, 1, 1])
    torch.manual_seed(1)
    reference = reference_cls(timm_clip, NAMES, **settings)
    learner = learner_cls.from_model(timm_clip, NAMES, **settings)
    learner.load_original_state_dict(reference.prompt_learner.state_dict())
    mine, theirs = dict(learner.trainable_named_parameters()), dict(reference.prompt_learner.named_parameters())
    assert sorted(mine) == sorted(theirs)
    _compare_step(learner, reference, images, labels, [mine[n] for n in theirs], list(theirs.values()))


@pytest.mark.parametrize("method,settings", TEXT_PROMPT, ids=[m for m, _ in TEXT_PROMPT])
def test_every_text_prompt_learner_takes_a_step_on_a_timm_tower(timm_clip, method, settings):
    learner = _learner(method, timm_clip, **settings)
    images = _images(2)
    with torch.no_grad():
        expected = F.normalize(timm_clip.encode_image(images), dim=-1)
    assert_close_rel(learner.encode_image(images), expected, FP32.rounding, "frozen timm features")
    loss = learner.loss(images, torch.tensor([1, 2]))
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in learner.trainable_named_parameters():
        if name.endswith("_q"):  # RPP's query prompts act only where a prompt row's output survives
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("method", ["coop", "cocoop"])
def test_cached_features_stand_in_for_the_images_of_a_timm_tower(timm_clip, method):
    learner = _learner(method, timm_clip)
    images, labels = _images(5), torch.tensor([0, 1, 2, 3, 0])
    table = FeatureCache(learner, torch.device("cpu"), batch_size=2).table(TensorDataset(images, labels), "train")
    features = learner.frozen_features(images)
    assert max_rel_error(table.features.reshape(features.shape), features) <= FP32.parity
    params = learner.trainable_parameters()
    loss = learner.loss(images, labels)
    cached = learner.loss(features, labels)
    assert max_rel_error(cached, loss) <= FP32.parity
    for g, c in zip(torch.autograd.grad(loss, params), torch.autograd.grad(cached, params)):
        assert max_rel_error(c, g) <= FP32.gradient_parity


def test_bf16_frozen_features_of_a_timm_tower(timm_clip, monkeypatch):
    # bf16 whatever this CPU has: the error is a property of the arithmetic (emulated bf16 rounds alike).
    monkeypatch.setattr(frozen_precision, "bf16_unsupported_reason", lambda device: None)
    fp32 = fastprompt.CoOpLearner.from_model(timm_clip, NAMES, n_ctx=2)
    bf16 = fastprompt.CoOpLearner.from_model(timm_clip, NAMES, n_ctx=2, frozen_image_precision="bf16")
    images = _images(4)
    features = bf16.encode_image(images)
    assert features.dtype == torch.float32  # cast back before the normalisation
    # Above 1e-4: the tower really ran in bf16; below BF16.frozen_image: see its reason.
    error = relative_feature_error(features, fp32.encode_image(images))
    assert 1e-4 < error <= BF16.frozen_image, (error, BF16.why("frozen_image"))


# timm towers without a token sequence deep prompts can enter, and why (the timm ViTs take them:
# tests/test_timm_deep_prompts.py)
REFUSED_TIMM = {
    "convnext_base": "a ConvNeXt (convolutional stages",
    "swin_base_patch4_window7_224": "a Swin transformer (windowed attention",
    "MobileCLIP-S1": "a FastViT (MobileCLIP-S*",
    "vit_relpos_medium_patch16_cls_224": "a relative-position ViT",
}


@pytest.fixture(scope="module", params=list(REFUSED_TIMM))
def refused_timm_clip(request):
    from fastprompt.testing.scaled_models import scaled_clip

    model, tokenizer = scaled_clip(request.param)
    return request.param, model, tokenizer


@pytest.mark.parametrize("method,settings", DEEP_VISION, ids=[f"{m}-{s.get('branches', '')}" for m, s in DEEP_VISION])
def test_learners_that_prompt_the_image_layers_refuse_a_timm_tower_saying_what_works(refused_timm_clip, method,
                                                                                     settings):
    name, model, tokenizer = refused_timm_clip
    timm_name = model.visual.trunk.pretrained_cfg["architecture"]
    with pytest.raises(UnpromptableImageTowerError) as refused:
        LEARNERS[method].from_model(model, NAMES, tokenizer=tokenizer, **settings)
    message = str(refused.value)
    assert f"this model's is a TimmModel (timm {timm_name}): {REFUSED_TIMM[name]}" in message and "\n" not in message
    assert "CoOp, CoCoOp, KgCoOp, PRE, SoftCPT, POMP, or RPP with branches='text'" in message
    tower = image_tower(model.visual)
    with pytest.raises(UnpromptableImageTowerError, match="deep vision prompts need a ViT image tower"):
        tower(random_images(1, tower.image_size[0]), [torch.zeros(2, 64)])


def test_timm_vit_towers_take_deep_prompts(timm_clip):
    """EVA02, ViTamin and MobileCLIP-B are timm ViTs (the last two behind a convolutional patch
    embedding): the deep-vision learners take them; ConvNeXt is refused above."""
    from fastprompt.towers.timm_vision import TimmVisionTower

    tower = image_tower(timm_clip.visual)
    trunk_kind = type(timm_clip.visual.trunk).__name__
    assert isinstance(tower, TimmVisionTower) == (trunk_kind != "ConvNeXt"), trunk_kind
    if isinstance(tower, TimmVisionTower):
        learner = _learner("vpt", timm_clip, prompt_depth=1)
        assert learner(_images(2)).shape == (2, len(NAMES))


def _attention_pooled_clip(attentional_pool):
    """A small open_clip CLIP whose ViT pools with ``attentional_pool`` (True: CoCa's single pooler)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    return frozen(CLIP(48, CLIPVisionCfg(layers=2, width=96, head_width=32, patch_size=8, image_size=32,
                                         attentional_pool=attentional_pool, attn_pooler_heads=3,
                                         attn_pooler_queries=4),
                       CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=2, layers=2)))


def test_a_vit_with_an_attentional_pooler_takes_deep_prompts_and_open_clips_vit_keeps_the_fast_path(tiny_model):
    """CoCa's pooler reads the image's own rows (tests/test_attn_pool_deep_prompts.py has the parity)."""
    pooled = _attention_pooled_clip(True)
    learner = fastprompt.CoOpLearner.from_model(pooled, NAMES, n_ctx=2)
    assert isinstance(learner.vision_tower, VisionTower) and not learner.vision_tower.pools_first_row
    images = random_images(2)
    with torch.no_grad():
        expected = pooled.encode_image(images, normalize=True)
    # FP32.parity: the functional tower (prompt_attention) against open_clip's attention
    assert_close_rel(learner.encode_image(images), expected, FP32.parity, "attention-pooled ViT features")
    assert fastprompt.VPTLearner.from_model(pooled, NAMES, prompt_depth=1)(images).shape == (2, len(NAMES))
    assert isinstance(image_tower(tiny_model.visual), VisionTower) and image_tower(tiny_model.visual).pools_first_row


def test_a_vit_with_a_pair_of_attentional_poolers_runs_frozen_and_refuses_deep_prompts_by_name():
    """open_clip's untested 'parallel' / 'cascade' poolers (no architecture uses them) keep a query axis
    in their pooled output: deep prompts refuse them, naming them and what they take."""
    pair = _attention_pooled_clip("parallel")
    assert isinstance(image_tower(pair.visual), FrozenImageTower)
    with pytest.raises(UnpromptableImageTowerError, match="a 'parallel' pair of attentional poolers"):
        fastprompt.VPTLearner.from_model(pair, NAMES, prompt_depth=1)


# ---- tokenizers ---------------------------------------------------------------------------------------

HF_TOKENIZER_MODELS = ["roberta-ViT-B-32", "ViT-B-16-SigLIP"]  # Hugging Face / SigLIP tokenizers


@pytest.fixture
def without_transformers(monkeypatch):
    """``import transformers`` fails as it does where the package is missing (installed or not here)."""
    monkeypatch.setitem(sys.modules, "transformers", None)


@pytest.fixture
def builds(monkeypatch):
    """Every open_clip model build, recorded and stopped: a check that comes first never reaches one."""
    calls = []

    def refuse(name, *args, **kwargs):
        calls.append(name)
        raise AssertionError(f"the model {name!r} was built before its tokenizer was resolved")

    monkeypatch.setattr(open_clip, "create_model", refuse)
    return calls


ROADS = {
    "from_open_clip": lambda name: fastprompt.CoOpLearner.from_open_clip(name, None, NAMES, n_ctx=2),
    "load_open_clip": lambda name: load_open_clip(name, None),
    "random_clip": lambda name: random_clip(name),
}


@pytest.mark.parametrize("road", list(ROADS))
@pytest.mark.parametrize("name", HF_TOKENIZER_MODELS)
def test_a_tokenizer_that_needs_a_missing_package_fails_before_the_build(without_transformers, builds, name, road):
    start = time.perf_counter()
    with pytest.raises(TokenizerNotAvailableError) as refused:
        ROADS[road](name)
    elapsed = time.perf_counter() - start
    message = str(refused.value)
    assert "'transformers'" in message and "pip install transformers" in message and "\n" not in message
    assert builds == []
    # A config read and an import: milliseconds. The builds it stands before take 5-17 s; 0.5 s
    # leaves a busy CI machine a wide margin.
    assert elapsed < 0.5, elapsed


def test_the_command_line_reports_a_missing_tokenizer_package_in_one_line_before_the_build(
        without_transformers, builds, dtd_tree, tmp_path, capsys):
    argv = ["train", "--recipe", "coop/vit_b16_ep50", "--data", dtd_tree, "--dataset", "dtd", "--output-dir",
            str(tmp_path / "out"), "--model", "roberta-ViT-B-32", "--pretrained", "none", "--no-progress"]
    status = cli.main(argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert status == 2 and builds == []
    assert len(lines) == 1 and lines[0].startswith("fastprompt train: error: "), lines
    assert "pip install transformers" in lines[0]


@pytest.fixture
def hf_tokenized_tiny(monkeypatch):
    """A registered tiny architecture whose configuration names a Hugging Face tokenizer, as
    roberta-ViT-B-32's does (its text tower itself is open_clip's: a build takes milliseconds)."""
    name = "fastprompt-test-tiny-hf-tokenizer"
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, name, {
        "embed_dim": 48,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 96, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2,
                     "hf_tokenizer_name": "roberta-base"},
    })
    return name


class CountingTokenizer:
    """open_clip's CLIP tokenizer, counting the texts it is given."""

    def __init__(self):
        from open_clip.tokenizer import SimpleTokenizer

        self.inner, self.texts = SimpleTokenizer(), 0

    def __call__(self, texts, context_length=None):
        self.texts += len([texts] if isinstance(texts, str) else texts)
        return self.inner(texts) if context_length is None else self.inner(texts, context_length)

    def encode(self, text):
        return self.inner.encode(text)


def test_from_open_clip_uses_the_tokenizer_it_is_given(without_transformers, hf_tokenized_tiny):
    with pytest.raises(TokenizerNotAvailableError, match="Hugging Face tokenizer 'roberta-base'"):
        fastprompt.CoOpLearner.from_open_clip(hf_tokenized_tiny, None, NAMES, n_ctx=2)
    tokenizer = CountingTokenizer()
    learner = fastprompt.CoOpLearner.from_open_clip(hf_tokenized_tiny, None, NAMES, n_ctx=2, tokenizer=tokenizer)
    assert learner.tokenizer is tokenizer and tokenizer.texts >= len(NAMES)
    assert learner(random_images(2)).shape == (2, len(NAMES))


def test_from_model_uses_the_tokenizer_it_is_given_end_to_end(tiny_model):
    tokenizer = CountingTokenizer()
    torch.manual_seed(0)
    ref = ReferenceCoOp(tiny_model, NAMES, ctx_init="a photo of a", tokenizer=CountingTokenizer())
    learner = fastprompt.CoOpLearner.from_model(tiny_model, NAMES, ctx_init="a photo of a", tokenizer=tokenizer)
    assert learner.tokenizer is tokenizer and tokenizer.texts >= len(NAMES)
    learner.load_original_state_dict(ref.prompt_learner.state_dict())
    _compare_step(learner, ref, random_images(3), torch.tensor([0, 3, 2]), [learner.ctx], [ref.prompt_learner.ctx])


def test_the_default_tokenizer_refuses_a_text_tower_of_another_vocabulary():
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    model = frozen(CLIP(48, CLIPVisionCfg(layers=1, width=64, head_width=32, patch_size=8, image_size=32),
                        CLIPTextCfg(context_length=77, vocab_size=1000, width=64, heads=2, layers=1)))
    with pytest.raises(ValueError, match="vocabulary of 1000 tokens, not the 49408 of CLIP's BPE tokenizer"):
        fastprompt.CoOpLearner.from_model(model, NAMES, n_ctx=2)
