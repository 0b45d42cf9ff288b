"""The guide ``fastprompt/learners/README.md`` stays true: its python blocks run as written.

The blocks (a learner, its literal reference, the parity check on ``tiny_clip``) run in order in
one fresh module, so the guide's example is a working method and its parity assertions hold. The
example's learner registers itself in ``LEARNERS`` (``method = "coop_temp"``); the module fixture
removes it afterwards, so the contract tests that run over ``LEARNERS`` see only the package's own.
The other tests hold the guide's prose to the repository: the example's claims (new classes keep
CLIP's scale, checkpoints carry the temperature rows, the parity check fails on a moved prompt),
every path it names exists, every tower/plan/spec attribute it names is real, and it stays short.
"""
import glob
import re
import sys
import types
from pathlib import Path

import pytest
import torch

from fastprompt.learners import LEARNERS, LearnerConfig, PromptLearner
from fastprompt.testing import FP32, assert_close_rel, max_rel_error, random_images

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "fastprompt" / "learners" / "README.md"
MODULE = "fastprompt_guide_example"
# The issue asks for a guide "in about a hundred lines" of method; the whole guide stays readable.
MAX_LINES = 250


def guide_text() -> str:
    if not GUIDE.exists():
        raise AssertionError(f"{GUIDE.relative_to(ROOT)} is missing: the guide to adding a method lives there")
    return GUIDE.read_text(encoding="utf-8")


def python_blocks(text: str):
    """The guide's ```python blocks, in order (```text blocks are illustrations, not run)."""
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


@pytest.fixture(scope="module")
def example():
    """The namespace after running every python block of the guide (the parity asserts included)."""
    blocks = python_blocks(guide_text())
    assert len(blocks) >= 3, "the guide shows a learner, its reference and a parity check as python blocks"
    module = types.ModuleType(MODULE)  # a real module: dataclasses look their class's module up
    sys.modules[MODULE] = module
    before = set(LEARNERS)
    try:
        for i, block in enumerate(blocks):
            exec(compile(block, f"{GUIDE.name} python block {i + 1}", "exec"), module.__dict__)
        yield module.__dict__
    finally:
        for name in set(LEARNERS) - before:
            del LEARNERS[name]
        del sys.modules[MODULE]


def test_the_guides_blocks_run_and_the_parity_holds(example):
    learner, reference = example["learner"], example["reference"]
    assert type(learner).method == "coop_temp" and isinstance(learner, PromptLearner)
    assert [n for n, _ in learner.trainable_named_parameters()] == ["ctx", "log_temp"]
    # the parity block moved the temperatures away from their start, so they were compared for real
    assert float(reference.log_temp.detach().abs().max()) > 0.1


def test_the_guides_parity_check_fails_on_a_moved_prompt(example):
    """The comparison has teeth: a temperature or a context row moved in the reference is seen."""
    learner, reference = example["learner"], example["reference"]
    images = random_images(4)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        assert_close_rel(learner(images), reference(images), FP32.parity, "logits before")
        for tensor, row in ((reference.log_temp, 1), (reference.prompt_learner.ctx, 2)):
            # random, not a constant shift: the text tower's LayerNorms remove a row's constant shift
            step = 0.1 * torch.randn(tensor[row].shape, generator=gen)
            tensor[row] += step
            # a wrong row moves the logits by 1e-2 and more, a thousand times FP32.parity
            assert max_rel_error(learner(images), reference(images)) > 1000 * FP32.parity, f"row {row} moved"
            tensor[row] -= step


def test_a_new_class_keeps_clips_scale_and_checkpoints_carry_the_rows(example, tmp_path):
    cls, learner = type(example["learner"]), example["learner"]
    trained = learner.classnames
    images = random_images(3, seed=2)
    learner.set_classnames(["dog", "otter", "cat"])
    try:
        assert learner.temp_index.tolist() == [1, -1, 0]
        with torch.no_grad():
            text = learner.text_features()
            cosine = learner.image_features(images) @ (text / text.norm(dim=-1, keepdim=True)).t()
            logits = learner(images)
            temp = learner.log_temp.detach()
        # the new class reads CLIP's scale; the trained ones their own temperature
        assert_close_rel(logits[:, 1], learner.logit_scale * cosine[:, 1], FP32.parity, "new class")
        assert_close_rel(logits[:, 0], (learner.clip.logit_scale + temp[1]).exp() * cosine[:, 0], FP32.parity,
                         "dog")
        W = learner.text_classifier()
        assert_close_rel(learner.logit_scale * learner.image_features(images) @ W.t(), logits, FP32.parity,
                         "text_classifier's formula")
        # saved after set_classnames: the temperature rows still belong to the training classes
        learner.save_pretrained(str(tmp_path))
        again = cls.from_pretrained(str(tmp_path), model=learner.clip)
        assert again.config.temperature_classnames == trained
        assert again.temp_index.tolist() == [1, -1, 0]
        assert_close_rel(again(images), logits, FP32.rounding, "reloaded logits")
    finally:
        learner.set_classnames(trained)


def test_every_path_the_guide_names_exists():
    paths = {p for p in re.findall(r"`((?:fastprompt|tests|bench)/[^`\s]+)`", guide_text()) if "<" not in p}
    assert len(paths) > 20, "the guide names the files a method touches"
    missing = sorted(p for p in paths if not glob.glob(str(ROOT / p)))
    assert not missing, f"the guide names files that do not exist: {missing}"


def test_every_tower_plan_and_spec_name_the_guide_uses_is_real():
    """Backticked calls on the objects a learner works with (``text_tower.encode``, ``plan.select``,
    ``CaseSpec`` fields, learner methods) name attributes that exist."""
    from bench.steps.step_cases import CaseSpec
    from fastprompt.towers import TextPlan, TextTower
    from fastprompt.train.methods import MethodSpec

    text = guide_text()
    owners = {"text_tower": TextTower, "plan": TextPlan, "self": PromptLearner}
    for owner, name in re.findall(r"`(text_tower|plan|self)\.(\w+)", text):
        assert hasattr(owners[owner], name), f"the guide calls {owner}.{name}, which does not exist"
    for name in re.findall(r"encode\(\.\.\., (\w+)=", text):
        assert name in TextTower.forward.__code__.co_varnames, f"TextTower.encode takes no {name}="
    fields = set(CaseSpec.__dataclass_fields__) | set(MethodSpec.__dataclass_fields__)
    speed = text[text.index("## 9. The speed row"):]
    for name in re.findall(r"`([a-z_]+)=", speed) + ["inert", "fixed", "dataset_template", "outside", "depths"]:
        assert name in fields, f"the guide names a spec field {name!r} that does not exist"
    for owner, names in ((LearnerConfig, ("_require_positive", "_require_at_least")),
                         (PromptLearner, ("_rebuild_plan", "_map_original_names", "text_classifier", "set_classnames",
                                          "frozen_image_side", "load_original_state_dict", "from_pretrained"))):
        for name in names:
            assert f"`{name}" in text, f"the guide no longer names {name}: update this list"
            assert hasattr(owner, name), f"the guide names {owner.__name__}.{name}, which does not exist"


def test_the_guide_stays_short():
    lines = guide_text().count("\n")
    assert lines <= MAX_LINES, f"the guide has {lines} lines; keep it under {MAX_LINES}"
