"""Every configuration a learner accepts has a reference to check it against: the learners that take a
ResNet image tower (text prompts only) against their literal references on a random RN50-like CLIP
(tests/test_resnet.py's ``resnet_clip``). CoOp and CoCoOp are in tests/test_resnet.py."""
import pytest
import torch

from test_resnet import NAMES, resnet_clip  # noqa: F401  (the fixture)
from test_rpp import _compare as compare_rpp, _pair as pair_rpp
from test_softcpt import _compare as compare_softcpt, _pair as pair_softcpt
from fastprompt.testing import random_images


@pytest.mark.parametrize("cfg", [
    dict(branches="text", depth=2),
    dict(branches="text", depth=1, variant="post", residual_row="mean"),
    dict(branches="text", depth=2, shared=True, ctx_init="a photo of a"),
    dict(branches="text", depth=2, kl_weight=0.0),
    dict(branches="text", depth=2, pomp=True, pomp_num_sampled_classes=3, pomp_seed=0),
], ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_rpp_text_branch_matches_the_reference_on_a_resnet(resnet_clip, cfg):  # noqa: F811
    """Logits, loss and prompt gradients; the reference encodes images with the model's own
    ``encode_image`` (it used to read ``visual.transformer`` and crash on a ResNet)."""
    learner, reference = pair_rpp(resnet_clip, cfg, names=NAMES)
    compare_rpp(learner, reference, random_images(3, seed=1), torch.tensor([0, 3, 2]), seed=cfg.get("pomp_seed", 0))


def test_softcpt_matches_the_reference_on_a_resnet(resnet_clip):  # noqa: F811
    tasks = {"pets": NAMES[:2], "things": NAMES[2:]}
    learner, reference = pair_softcpt(resnet_clip, dict(class_features=True), tasks=tasks)
    compare_softcpt(learner, reference, random_images(3, seed=1), torch.tensor([0, 3, 2]))
