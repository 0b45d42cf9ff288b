"""Text-prompt learners on open_clip ResNet image towers (CoOp's and CoCoOp's most used configs are
RN50 / RN101); the methods that prompt the image tower's layers refuse them, saying why."""
import pytest
import torch
import torch.nn.functional as F

import fastprompt
from fastprompt.reference import ReferenceCoCoOp, ReferenceCoOp
from fastprompt.testing import FP32, assert_close_rel, random_images
from fastprompt.towers import FrozenImageTower, VisionTower

from test_learners import _compare_step

NAMES = ["cat", "dog", "sea lion", "jack-o'-lantern"]


@pytest.fixture(scope="module")
def resnet_clip():
    """A small open_clip CLIP with a ``ModifiedResNet`` image tower (BatchNorm, attention pool)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    gen_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        model = CLIP(48, CLIPVisionCfg(layers=(1, 1, 1, 1), width=16, image_size=32, head_width=16),
                     CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=2, layers=2))
        with torch.no_grad():  # non-trivial BatchNorm statistics, so a train-mode BatchNorm would show
            for module in model.visual.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.normal_(0.0, 0.1)
                    module.running_var.uniform_(0.5, 1.5)
    finally:
        torch.random.set_rng_state(gen_state)
    return model.eval()


def test_coop_and_cocoop_match_the_reference_on_a_resnet(resnet_clip):
    images, labels = random_images(3), torch.tensor([0, 3, 2])
    torch.manual_seed(1)
    ref = ReferenceCoOp(resnet_clip, NAMES, n_ctx=4)
    learner = fastprompt.CoOpLearner.from_model(resnet_clip, NAMES, n_ctx=4)
    assert isinstance(learner.vision_tower, FrozenImageTower)
    learner.load_original_state_dict(ref.prompt_learner.state_dict())
    _compare_step(learner, ref, images, labels, [learner.ctx], [ref.prompt_learner.ctx])
    torch.manual_seed(1)
    ref = ReferenceCoCoOp(resnet_clip, NAMES)
    learner = fastprompt.CoCoOpLearner.from_model(resnet_clip, NAMES)
    learner.load_original_state_dict(ref.prompt_learner.state_dict())
    params = [learner.ctx] + list(learner.meta_net.parameters())
    ref_params = [ref.prompt_learner.ctx] + list(ref.prompt_learner.meta_net.parameters())
    _compare_step(learner, ref, images, labels, params, ref_params)


@pytest.mark.parametrize("method,settings", [
    ("kgcoop", {}), ("pre", {}), ("pomp", dict(num_sampled_classes=3)), ("softcpt", {}),
    ("rpp", dict(branches="text", depth=2)),
])
def test_every_text_prompt_learner_trains_on_a_resnet(resnet_clip, method, settings):
    cls = fastprompt.learners.LEARNERS[method]
    learner = cls.from_model(resnet_clip, {"pets": NAMES} if method == "softcpt" else NAMES, **settings)
    images = random_images(2)
    with torch.no_grad():
        expected = F.normalize(resnet_clip.encode_image(images), dim=-1)
    assert_close_rel(learner.encode_image(images), expected, FP32.rounding, "frozen ResNet features")
    loss = learner.loss(images, torch.tensor([1, 2]))
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in learner.trainable_named_parameters():
        if not name.endswith("_q"):  # RPP's query prompts act only where a prompt row's output survives
            assert p.grad is not None, name


@pytest.mark.parametrize("method,settings", [
    ("maple", dict(prompt_depth=1)), ("vpt", dict(prompt_depth=1)),
    ("promptsrc", dict(prompt_depth_text=1, prompt_depth_vision=1)), ("rpp", dict(depth=1)),
])
def test_learners_that_prompt_the_image_tower_need_a_vit(resnet_clip, method, settings):
    with pytest.raises(ValueError, match="needs a ViT image tower; this model's is a ModifiedResNet"):
        fastprompt.learners.LEARNERS[method].from_model(resnet_clip, NAMES, **settings)


def test_train_mode_leaves_the_frozen_batchnorm_alone(resnet_clip):
    """The originals switch only their prompt learners to train mode: CLIP's BatchNorm keeps using
    (and never updates) its running statistics during training."""
    learner = fastprompt.CoOpLearner.from_model(resnet_clip, NAMES, n_ctx=2)
    stats = [m.running_mean.clone() for m in resnet_clip.visual.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    images = random_images(4)
    before = learner.encode_image(images)
    learner.train()
    assert learner.training and not resnet_clip.training and not resnet_clip.visual.training
    learner.loss(images, torch.tensor([0, 1, 2, 3])).backward()
    after = [m.running_mean for m in resnet_clip.visual.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(after, stats))
    assert torch.equal(learner.encode_image(images), before)


def test_a_resnet_tower_checks_its_input(resnet_clip):
    tower = FrozenImageTower(resnet_clip.visual)
    with pytest.raises(ValueError, match=r"\[B, 3, 32, 32\], got 64x64"):
        tower(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="need a ViT image tower"):
        tower(random_images(1), [torch.zeros(2, 16)])
    assert not isinstance(tower, VisionTower) and tower.output_dim == 48
